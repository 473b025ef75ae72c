# syntax=docker/dockerfile:1.7
#
# The mailwarden images, from one Dockerfile and one source tree:
#   --target listener  mailwarden-listener: `mailwarden-listener --config FILE`, what the
#                      operator runs in the pods of every MailService. Only the listener
#                      (listener/, its own distribution): no operator code, no Kubernetes client.
#   --target operator  mailwarden (the default target): `mailwarden operator`, the chart's
#                      Deployment. Everything the listener image has, plus kopf and the client.
# Why two images from one file: docs/development.md, "Images".
#
# Reproducible builds (inputs: the pinned base image, the lock files, the source):
#   export SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)"
#   docker buildx build --build-arg SOURCE_DATE_EPOCH --target listener \
#     --output type=docker,rewrite-timestamp=true -t mailwarden-listener:0.1.0 .
#   docker buildx build --build-arg SOURCE_DATE_EPOCH --target operator \
#     --output type=docker,rewrite-timestamp=true -t mailwarden:0.1.0 .
#
# The base image is pinned by the digest of its multi-arch index (python:3.11-slim-bookworm:
# Debian 12 and Python 3.11, as on the machines the test suite runs on). Refresh it on
# purpose, never by accident: `docker buildx imagetools inspect python:3.11-slim-bookworm`
# prints the current index digest; put it here, rebuild, run the tests.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# --- build: a virtualenv with the listener's pinned dependencies and the listener ---------
FROM ${PYTHON_IMAGE} AS build-listener
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# The venv gets no pip of its own: the base image's pip installs into it from outside, so the
# application's environment carries no installer.
RUN python -m venv --without-pip /opt/mailwarden
WORKDIR /src
# Dependencies before the source, so their layer survives source edits. Wheels only: no
# compiler is ever needed, in any stage.
COPY deploy/image/listener.lock deploy/image/listener.lock
RUN pip --python /opt/mailwarden/bin/python install --only-binary=:all: --no-deps \
      -r deploy/image/listener.lock
COPY listener listener
RUN pip --python /opt/mailwarden/bin/python install --no-deps ./listener \
 && /opt/mailwarden/bin/python -m compileall -q /opt/mailwarden/lib \
 && /opt/mailwarden/bin/mailwarden-listener --help >/dev/null

# --- build: the same, plus what only the operator needs (kopf, the Kubernetes client) ------
FROM build-listener AS build-operator
COPY deploy/image/operator.lock deploy/image/operator.lock
RUN pip --python /opt/mailwarden/bin/python install --only-binary=:all: --no-deps \
      -r deploy/image/operator.lock
COPY pyproject.toml README.md ./
COPY operator operator
RUN pip --python /opt/mailwarden/bin/python install --no-deps . \
 && /opt/mailwarden/bin/python -m compileall -q /opt/mailwarden/lib \
 && /opt/mailwarden/bin/python -c "import kopf, mailwarden.operator.handlers" \
 && /opt/mailwarden/bin/mailwarden --help >/dev/null

# --- runtime: listener --------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS listener
LABEL org.opencontainers.image.title="mailwarden-listener" \
      org.opencontainers.image.description="mailwarden listener: access rules, connection caps and protocol-correct refusals in front of a mail server" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build-listener /opt/mailwarden /opt/mailwarden
ENV PATH=/opt/mailwarden/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# 65532: the conventional "nonroot" uid; numeric so that runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp
# 9090: metrics, /healthz, /readyz. The mail ports are whatever the configuration says.
EXPOSE 9090
ENTRYPOINT ["mailwarden-listener"]
CMD ["--config", "/etc/mailwarden/config/listener.yaml"]

# --- runtime: operator (the default target) ------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="mailwarden" \
      org.opencontainers.image.description="mailwarden operator: MailService and IPAddressGroup resources turned into listeners" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build-operator /opt/mailwarden /opt/mailwarden
ENV PATH=/opt/mailwarden/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
WORKDIR /tmp
# 8080: liveness (/healthz); 9091: metrics.
EXPOSE 8080 9091
ENTRYPOINT ["mailwarden"]
CMD ["operator"]
