"""What a listener's pods may read of the Kubernetes API: their own ConfigMap, nothing else.

Each listener Deployment runs under a ServiceAccount of its own (named like the Deployment)
bound to a Role that may get, list and watch exactly one ConfigMap (`resourceNames`; RBAC
then requires list and watch to select it by `metadata.name`). The pods get a short-lived
projected token for it, not the automounted one, and follow their ConfigMap through the API
(the listener's kubesource), so a configuration change reaches them in about a second without
the operator patching pods (which needed cluster-wide `pods: patch`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Manifest = dict[str, Any]

# Where the pods find their token and the cluster's CA (the listener's kubesource.API_DIR).
API_DIR = "/var/run/secrets/mailwarden/api"
ENV_CONFIGMAP = "MAILWARDEN_CONFIGMAP"
TOKEN_SECONDS = 3600  # the kubelet renews the projected token well before it expires
VOLUME = "kube-api"


def objects(name: str, namespace: str, meta: Mapping[str, Any]) -> list[Manifest]:
    """ServiceAccount, Role and RoleBinding for the listener `name` (its ConfigMap has the
    same name); `meta` is the listener's metadata (labels, owners) for all three."""

    def metadata() -> Manifest:
        # Metadata nests two levels at most (labels, annotations; ownerReferences of flat
        # dicts): copied that deep, not by copy.deepcopy, on every reconciliation.
        out: Manifest = {
            k: [dict(v) for v in value]
            if isinstance(value, list)
            else dict(value)
            if isinstance(value, Mapping)
            else value
            for k, value in meta.items()
        }
        return {**out, "name": name, "namespace": namespace}

    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(),
            # The pods mount a projected token instead (pod_spec).
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [name],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def pod_spec(name: str, namespace: str) -> tuple[Manifest, Manifest, Manifest, Manifest]:
    """(pod spec fields, the volume, its mount, the container's env entry) that let a
    listener pod read its ConfigMap through the API."""
    volume: Manifest = {
        "name": VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "path": "token",
                        "expirationSeconds": TOKEN_SECONDS,
                    }
                },
                {
                    # Published in every namespace by the root CA publisher (kube-controller-
                    # manager): the CA that signed the API server's certificate.
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
            ]
        },
    }
    mount: Manifest = {"name": VOLUME, "mountPath": API_DIR, "readOnly": True}
    env: Manifest = {"name": ENV_CONFIGMAP, "value": f"{namespace}/{name}"}
    return {"serviceAccountName": name}, volume, mount, env
