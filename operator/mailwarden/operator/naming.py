"""Names, labels and annotations of the objects the operator makes: one place, so that the
builders, the handlers and the tests agree on them."""

from __future__ import annotations

import hashlib
import re

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
# On every child of a listener and on its pods: the name of the listener's Deployment (the
# contract other parts of the operator select pods by; see listeners.deployments).
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
METRICS_PORT = models.METRICS_PORT
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
    """The name of the children of a MailService's own listener (the one serving its ports
    without a fixed address): Deployment, ConfigMap, Service, NetworkPolicy. Always
    `mailwarden-` followed by a letter or digit (a MailService's name starts with one)."""
    return _fit(f"mailwarden-{msvc_name}")


def address_listener(address: str) -> str:
    """The name of the children of the listener shared by every MailService of a namespace on
    one fixed address. The double dash keeps these names apart from every `base` name: a
    MailService's name cannot start with a dash, so `smtp-192-0-2-25` (no address) and `smtp`
    on 192.0.2.25 can never meet in one child name."""
    return _fit(f"mailwarden--{address.replace('.', '-').replace(':', '-')}")


def selector(listener: str, msvc_name: str | None = None) -> dict[str, str]:
    """Pod selector of a listener's pods; it never changes (a Deployment's selector is
    immutable). A MailService's own listener keeps the selector it had before listeners were
    shared (by MailService name), so that existing Deployments stay valid; a shared listener
    selects by its own name."""
    if msvc_name is not None:
        return {LABEL_NAME: APP_NAME, LABEL_MAILSERVICE: msvc_name}
    return {LABEL_NAME: APP_NAME, LABEL_LISTENER: listener}


def labels(listener: str, msvc_name: str | None = None) -> dict[str, str]:
    """The labels of every child of a listener and of its pods."""
    return {
        **selector(listener, msvc_name),
        LABEL_LISTENER: listener,
        LABEL_COMPONENT: "listener",
        LABEL_PART_OF: "mailwarden",
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def port_name(port: int) -> str:
    # IANA_SVC_NAME: at most 15 characters, so not the service's name (submission-65535).
    return f"tcp-{port}"
