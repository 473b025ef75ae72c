"""Names, labels and annotations of the objects the operator makes: one place, so that the
builders, the handlers and the tests agree on them."""

from __future__ import annotations

import hashlib
import re

from mailwarden.listener import config as lc
from mailwarden.operator import models

MANAGED_BY = "mailwarden-operator"
APP_NAME = "mailwarden-listener"

# Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
# `app.kubernetes.io/instance` is deliberately absent: Argo CD tracks the objects of an
# Application by that label, so a child carrying it would be claimed (and pruned) by whichever
# Application happens to share the value. `mailwarden.io/mailservice` says who owns a child.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MAILSERVICE = f"{models.GROUP}/mailservice"
LABEL_SERVICE_KIND = f"{models.GROUP}/service"
# On listener pods: the Deployment (listener) they belong to.
LABEL_LISTENER = f"{models.GROUP}/listener"

# On a listener Service: the address it holds (empty: any).
ANNOTATION_ADDRESS = f"{models.GROUP}/address"
# On the ConfigMap: a hash of the listener configuration, for people and diffs; and on the
# running listener pods, to make the kubelet refresh their ConfigMap volume at once. It is
# never put into the pod template: a configuration change must reach pods without a restart.
ANNOTATION_CONFIG_HASH = f"{models.GROUP}/config-hash"

CONFIG_DIR = "/etc/mailwarden/config"
CONFIG_FILE = "listener.yaml"
# Where a listener pod mounts its TLS Secret (cert-manager layout: tls.crt, tls.key).
TLS_DIR = "/etc/mailwarden/tls"
# The listener's own default, which pods, probes, NetworkPolicies and PodMonitors follow.
METRICS_PORT = lc.METRICS_PORT
CONTAINER = "listener"

_MAX = 63


def _fit(name: str) -> str:
    """A DNS-1035 label of at most 63 characters: too long a name is cut and given a hash of
    the whole, so that it stays unique and deterministic."""
    name = re.sub(r"[^a-z0-9-]", "-", name.lower())
    if len(name) <= _MAX and name[-1].isalnum():
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: _MAX - 11].rstrip('-')}-{digest}"


def base(msvc_name: str) -> str:
    """The name of the Deployment, ConfigMap and NetworkPolicy of a MailService."""
    return _fit(f"mailwarden-{msvc_name}")


def service(msvc_name: str, address: str | None) -> str:
    """The Service holding one listen address (None: any address)."""
    if address is None:
        return base(msvc_name)
    return _fit(f"mailwarden-{msvc_name}-{address.replace('.', '-').replace(':', '-')}")


def selector(msvc_name: str) -> dict[str, str]:
    """Pod selector of a MailService's listener pods; it never changes (a Deployment's
    selector is immutable)."""
    return {LABEL_NAME: APP_NAME, LABEL_MAILSERVICE: msvc_name}


def labels(msvc: models.MailService) -> dict[str, str]:
    return {
        **selector(msvc.metadata.name),
        LABEL_COMPONENT: "listener",
        LABEL_PART_OF: "mailwarden",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_SERVICE_KIND: msvc.spec.service.lower(),
    }


def port_name(port: int) -> str:
    # IANA_SVC_NAME: at most 15 characters, so not the service's name (submission-65535).
    return f"tcp-{port}"
