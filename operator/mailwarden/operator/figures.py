"""Live figures of a MailService (status.connections), pure: which listener pods serve it,
what their `GET /status` answers say about it, summed over the pods, and the condition that
names the pods that did not answer. The polling itself (I/O) is in poll.py.

The listener's answer (its figures.py, contract C1):
`{"observedAt": ..., "services": {"<namespace>/<name>": {"active": n, "refusals":
{"denied": n, ...}, "bannedAddresses": n}}}`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mailwarden.operator import conditions, naming

# status.connections fields summed from the pods' refusals (contract C4), in column order.
REFUSALS = ("denied", "overCap", "overAddressCap", "rateLimited", "banned", "backendDown")
FIELDS = ("active", "refused", *REFUSALS, "bannedAddresses")

FIGURES_AVAILABLE = "FiguresAvailable"
# Reasons of the FiguresAvailable condition.
PODS_ANSWERED = "PodsAnswered"
PODS_UNREACHABLE = "PodsUnreachable"
NO_PODS = "NoPods"
# At most this many pods are named in the condition's message; the rest are counted.
NAMED = 5

Key = tuple[str, str]


class BadAnswer(ValueError):
    """A pod's /status answer that is not the listener's status document."""


@dataclasses.dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ip: str
    labels: Mapping[str, str]


def listeners_of(namespace: str, name: str) -> tuple[str, ...]:
    """A MailService's own listener Deployment only: what serves it when nothing more is
    known. The operator asks `reconcile.World.listener_deployments` (contract C5, through
    listeners.deployments), which knows the shared listeners of its fixed addresses."""
    return (naming.base(name),)


def serves(pod: Pod, name: str, listeners: Sequence[str]) -> bool:
    """Whether a listener pod serves the MailService `name` of its namespace: labelled with
    one of its listener Deployments, or (pods of a MailService's own Deployment made before
    pods carried that label) with the MailService's name."""
    listener = pod.labels.get(naming.LABEL_LISTENER)
    if listener is not None:
        return listener in listeners
    return pod.labels.get(naming.LABEL_MAILSERVICE) == name


def pod_of(body: Mapping[str, Any]) -> Pod | None:
    """A pod worth asking: it has an address and runs (a terminating pod still drains
    sessions and still counts)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    ip = status.get("podIP")
    if not ip or status.get("phase") != "Running":
        return None
    return Pod(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        ip=str(ip),
        labels=dict(meta.get("labels") or {}),
    )


def parse(answer: Any) -> dict[str, dict[str, int]]:
    """A pod's answer -> {service name: {field: count}} with every field of FIELDS but
    `refused`. Raises BadAnswer for anything else (a pod is not trusted to be well formed)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("services"), dict):
        raise BadAnswer("no services in the answer")
    out: dict[str, dict[str, int]] = {}
    for name, entry in answer["services"].items():
        if not isinstance(entry, dict):
            raise BadAnswer(f"{name}: not an object")
        refusals = entry.get("refusals") or {}
        if not isinstance(refusals, dict):
            raise BadAnswer(f"{name}: refusals is not an object")
        figures = {
            "active": entry.get("active", 0),
            "bannedAddresses": entry.get("bannedAddresses", 0),
            **{k: refusals.get(k, 0) for k in REFUSALS},
        }
        for field, value in figures.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BadAnswer(f"{name}: {field} is not a count")
        out[str(name)] = figures
    return out


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What polling the pods of one MailService found."""

    pods: int  # pods asked
    figures: Mapping[str, int]  # summed over the pods that answered
    unreachable: Mapping[str, str]  # pod name -> why it gave no figures


def total(service: str, answers: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, int]:
    """The figures of `service` summed over pods' parsed answers (a pod that does not know
    the service, e.g. one still loading its configuration, adds nothing)."""
    sums = dict.fromkeys(FIELDS, 0)
    for answer in answers:
        entry = answer.get(service)
        if entry is None:
            continue
        for field, value in entry.items():
            sums[field] += value
    sums["refused"] = sum(sums[k] for k in REFUSALS)
    return sums


def connections(outcome: Outcome, observed_at: str) -> dict[str, Any]:
    """status.connections (contract C4)."""
    return {**{f: outcome.figures.get(f, 0) for f in FIELDS}, "observedAt": observed_at}


def same_figures(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether two status.connections say the same; observedAt alone is no change."""
    if old is None:
        return False
    return all(old.get(f) == new.get(f) for f in FIELDS)


def condition(outcome: Outcome) -> tuple[conditions.Status, str, str]:
    """(status, reason, message) of the FiguresAvailable condition. The message names the
    pods that did not answer and why, so `kubectl describe` says which to look at."""
    if outcome.pods == 0:
        return "True", NO_PODS, "no listener pod is running: nothing to count"
    if not outcome.unreachable:
        return "True", PODS_ANSWERED, f"{outcome.pods} of {outcome.pods} listener pods answered"
    missing = sorted(outcome.unreachable.items())
    named = ", ".join(f"{pod} ({why})" for pod, why in missing[:NAMED])
    more = f" and {len(missing) - NAMED} more" if len(missing) > NAMED else ""
    return (
        "False",
        PODS_UNREACHABLE,
        f"{len(missing)} of {outcome.pods} listener pods did not answer: {named}{more}; "
        "the figures count only the pods that answered",
    )
