"""The operator's own Prometheus metrics, served on their own port by `mailwarden operator`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import prometheus_client

RECONCILES = prometheus_client.Counter(
    "mailwarden_operator_reconciles_total",
    "Reconciliations by kind of object and result.",
    ["kind", "result"],
)
DURATION = prometheus_client.Histogram(
    "mailwarden_operator_reconcile_duration_seconds",
    "How long a reconciliation took.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WRITES = prometheus_client.Counter(
    "mailwarden_operator_child_writes_total",
    "Children created, updated or deleted.",
    ["kind", "action"],
)

# Results: success, invalid (permanent, needs a spec change), error (retried).
SUCCESS = "success"
INVALID = "invalid"
ERROR = "error"


@contextlib.contextmanager
def reconcile(kind: str) -> Iterator[list[str]]:
    """Times a reconciliation and counts its result; the body may set result[0]."""
    result = [SUCCESS]
    start = time.monotonic()
    try:
        yield result
    except Exception:
        if result[0] == SUCCESS:
            result[0] = ERROR
        raise
    finally:
        DURATION.labels(kind).observe(time.monotonic() - start)
        RECONCILES.labels(kind, result[0]).inc()


def serve(port: int, address: str = "0.0.0.0") -> None:
    prometheus_client.start_http_server(port, addr=address)


# Live figures (poll.py): each pod asked, by result (answered, unreachable), and the status
# writes they caused (only when a figure or the FiguresAvailable condition changed).
FIGURE_POLLS = prometheus_client.Counter(
    "mailwarden_operator_figure_polls_total",
    "Listener pods asked for their live figures (GET /status), by result.",
    ["result"],
)
FIGURE_WRITES = prometheus_client.Counter(
    "mailwarden_operator_figure_writes_total",
    "MailService status writes caused by changed live figures.",
)
