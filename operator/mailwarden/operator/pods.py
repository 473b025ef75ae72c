"""Listener pods as the operator sees them: only what the status needs (why containers wait),
kept small because the operator holds one summary per listener pod in memory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailwarden.operator import naming

Key = tuple[str, str]
SUMMARY_LABELS = (naming.LABEL_NAME, naming.LABEL_MAILSERVICE, naming.LABEL_LISTENER)


def serving_key(namespace: str, listener: str) -> Key:
    """The index key of the pods of one listener (listeners.deployments names the listeners
    serving a MailService)."""
    return (namespace, listener)


def pod_key(namespace: str, labels: Mapping[str, str]) -> Key | None:
    """The index key of a listener pod, from its labels (None: not a listener pod)."""
    listener = labels.get(naming.LABEL_LISTENER)
    return (namespace, listener) if listener else None


def summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """A pod reduced to its name and its containers' waiting states."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    containers = [
        {
            "name": c.get("name"),
            "state": {"waiting": dict((c.get("state") or {}).get("waiting") or {})},
        }
        for c in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]
        if (c.get("state") or {}).get("waiting")
    ]
    labels = meta.get("labels") or {}
    out: dict[str, Any] = {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            # Which listener it belongs to (the live figures sum pods by these).
            "labels": {k: labels[k] for k in SUMMARY_LABELS if k in labels},
        },
        "status": {
            "containerStatuses": containers,
            # Where the live figures are read (poll.py), and whether to read them.
            "phase": status.get("phase"),
            "podIP": status.get("podIP"),
        },
    }
    if meta.get("deletionTimestamp"):
        out["metadata"]["deletionTimestamp"] = meta["deletionTimestamp"]
    return out


def waiting_reasons(body: Mapping[str, Any]) -> frozenset[str]:
    """Why the pod's containers wait (the part whose change needs a reconciliation)."""
    status = body.get("status") or {}
    return frozenset(
        str(((c.get("state") or {}).get("waiting") or {}).get("reason"))
        for c in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]
        if (c.get("state") or {}).get("waiting")
    )
