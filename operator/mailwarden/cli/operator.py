"""`mailwarden operator`: the kopf operator against the current kube context (or the pod's
service account), standalone, with a liveness endpoint and its own metrics port."""

from __future__ import annotations

import argparse
import asyncio
import logging

import kopf

from mailwarden.operator import metrics


def command(args: argparse.Namespace) -> int:
    from mailwarden.operator import handlers  # noqa: F401  (registers the handlers)

    metrics.serve(args.metrics_port)
    logging.getLogger("kopf").setLevel(logging.INFO)
    namespaces = args.namespace or []
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness,
        )
    )
    return 0
