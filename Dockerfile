# syntax=docker/dockerfile:1.7
#
# The mailwarden image: one image, two entry points.
#   operator:  mailwarden operator [--namespace NS ...]         (the chart's Deployment)
#   listener:  mailwarden listener --config /etc/mailwarden/config/listener.yaml
#              (the pods the operator creates for every MailService)
# Why one image and not two: README.md, "Images".
#
# Reproducible build (no network access beyond the pinned base image and PyPI):
#   docker buildx build --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" \
#     --output type=docker,rewrite-timestamp=true -t mailwarden:0.1.0 .
#
# The base image is pinned by the digest of its multi-arch index (python:3.11-slim-bookworm,
# Debian 12 like the machines the test suite runs on). Refresh it on purpose, never by
# accident: `docker buildx imagetools inspect python:3.11-slim-bookworm` prints the current
# index digest; put it here and rebuild.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# --- build: a virtualenv with the pinned dependencies and mailwarden, nothing else ---------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# The venv gets no pip of its own: the base image's pip installs into it from outside, so the
# final image carries no installer in the application's environment.
RUN python -m venv --without-pip /opt/mailwarden
WORKDIR /src
# Dependencies first (their layer survives source edits); wheels only, so no compiler is
# ever needed, in this stage or the next.
COPY deploy/image/requirements.lock deploy/image/requirements.lock
RUN pip --python /opt/mailwarden/bin/python install --only-binary=:all: --no-deps \
      -r deploy/image/requirements.lock
COPY pyproject.toml README.md ./
COPY listener listener
COPY operator operator
RUN pip --python /opt/mailwarden/bin/python install --no-deps . \
 && /opt/mailwarden/bin/python -m compileall -q /opt/mailwarden/lib \
 && /opt/mailwarden/bin/mailwarden --help >/dev/null

# --- runtime: the base image plus the virtualenv, as an unprivileged user -------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mailwarden" \
      org.opencontainers.image.description="mailwarden operator and listener: access rules, connection caps and protocol-correct refusals for mail services on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /opt/mailwarden /opt/mailwarden
ENV PATH=/opt/mailwarden/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# 65532: the conventional "nonroot" uid; numeric so that runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp
# 8080: operator liveness; 9091: operator metrics; 9090: listener metrics and health.
EXPOSE 8080 9090 9091
ENTRYPOINT ["mailwarden"]
CMD ["operator"]
