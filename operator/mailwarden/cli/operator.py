"""`mailwarden operator`: the kopf operator against the current kube context (or the pod's
service account), standalone, with a liveness endpoint and its own metrics port."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

import kopf

from mailwarden.operator import metrics, settings


def command(args: argparse.Namespace) -> int:
    from mailwarden.operator import handlers  # noqa: F401  (registers the handlers)

    # Before anything connects: a bad setting stops the operator with a message naming it,
    # instead of children built from half a configuration.
    try:
        config = settings.Settings.from_env()
    except settings.SettingsError as exc:
        print(f"mailwarden operator: {exc}", file=sys.stderr)
        return 2
    metrics.serve(args.metrics_port)
    logging.getLogger("kopf").setLevel(logging.INFO)
    if not getattr(args, "verbose", False):
        # kopf logs every handler run of every object ("Handler ... succeeded") at INFO: at a
        # thousand MailServices that was most of the log and a tenth of the operator's CPU.
        # Failures are warnings and still logged; the operator logs what it did itself.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    namespaces = args.namespace or []
    # Everything imported so far (kopf, the Kubernetes client's models, pydantic schemas: most
    # of the objects the operator will ever have) lives as long as the process: out of the
    # cyclic collector's sight, so its full collections walk only what the operator makes.
    gc.collect()
    gc.freeze()
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(settings=config),
        )
    )
    return 0
