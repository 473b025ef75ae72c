"""Kubernetes Events about MailServices and IPAddressGroups: what the operator did (Normal)
and what a user should look at (Warning). Best effort: a lost event never fails a reconcile."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, Literal

from mailwarden.operator import conditions, kube

logger = logging.getLogger(__name__)

COMPONENT = "mailwarden-operator"
Type = Literal["Normal", "Warning"]


def event(involved: Mapping[str, Any], type: Type, reason: str, message: str) -> dict[str, Any]:
    meta = involved["metadata"]
    stamp = conditions.now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            # kubectl's naming: the object's name and a unique suffix.
            "name": f"{meta['name']}.{time.time_ns():x}",
            "namespace": meta.get("namespace"),
        },
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": f"mailwarden.io/{COMPONENT}",
        "reportingInstance": os.environ.get("POD_NAME", socket.gethostname())[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post(
    api: kube.Api, involved: Mapping[str, Any], type: Type, reason: str, message: str
) -> None:
    body = event(involved, type, reason, message)
    level = logging.WARNING if type == "Warning" else logging.INFO
    logger.log(
        level,
        "%s/%s: %s: %s",
        body["metadata"]["namespace"],
        involved["metadata"]["name"],
        reason,
        message,
    )
    try:
        await api.create(kube.collection("v1", "Event", body["metadata"]["namespace"]), body)
    except kube.ApiError as exc:
        logger.warning("could not post event %s: %s", reason, exc)
