"""The process's open-file limit. Every client costs a descriptor (a relayed one two), and the
default soft limit (often 1024) is far below what the kernel allows the process (the hard
limit): raise the soft limit to the hard one at start, as HAProxy and nginx's
`worker_rlimit_nofile` do, and say both in the metrics."""

from __future__ import annotations

import logging
import math
import os
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

# setrlimit refuses RLIM_INFINITY for RLIMIT_NOFILE; Linux's default fs.nr_open is 2^20.
CEILING = 1 << 20


@dataclass(frozen=True)
class Limits:
    # math.inf where unlimited (as Prometheus writes +Inf).
    soft: float
    hard: float


def raise_soft_limit() -> Limits:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the limits then in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return Limits(_finite(soft), _finite(hard))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    else:
        log.info("open-file limit raised from %d to %d", soft, target)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return Limits(_finite(soft), _finite(hard))


def _finite(n: int) -> float:
    return math.inf if n == resource.RLIM_INFINITY else float(n)


def open_files() -> float:
    """Descriptors open now (Linux: the entries of /proc/self/fd, less the one listing it);
    NaN where that cannot be read."""
    try:
        return float(len(os.listdir("/proc/self/fd")) - 1)
    except OSError:
        return math.nan
