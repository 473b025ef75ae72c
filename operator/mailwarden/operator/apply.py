"""Idempotent appliers: make a child match its manifest, touching the API only when it does
not. "Matches" means every field the manifest sets has that value; fields the API server or
other controllers add (defaults, nodePorts, clusterIP, status) are left alone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

from mailwarden.operator import kube, naming, quantities

Action = Literal["created", "updated", "unchanged"]
Guard = Callable[[], Awaitable[bool]]


class OwnerGone(Exception):
    """The object the children are for went away while they were being applied."""


class NotOurs(Exception):
    """An object of the child's name exists and belongs to someone else: not touched."""


# live, desired -> why the live object must not be changed, or None.
Check = Callable[[Mapping[str, Any], Mapping[str, Any]], str | None]


# Keys under which the API server keeps resource quantities: it stores them in canonical form
# (`1024Mi` -> `1Gi`, `0.5` -> `500m`, `1000m` -> `1`), so they are compared by value, or
# every reconciliation would patch them back.
QUANTITY_KEYS = frozenset({"resources", "sizeLimit"})


def contains(live: Any, desired: Any, *, quantities: bool = False) -> bool:
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and contains(live[k], v, quantities=quantities or k in QUANTITY_KEYS)
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(
                contains(a, b, quantities=quantities) for a, b in zip(live, desired, strict=True)
            )
        )
    if live == desired:
        return True
    return quantities and same_quantity(live, desired)


def same_quantity(a: Any, b: Any) -> bool:
    """Whether two resource quantities are equal in value (False if either is none)."""
    try:
        return quantities.parse(a)[0] == quantities.parse(b)[0]
    except (ValueError, TypeError, ArithmeticError):
        return False


async def ensure(
    api: kube.Api,
    desired: Mapping[str, Any],
    owner_alive: Guard | None = None,
    guard: Check | None = None,
    *,
    known: Mapping[str, Any] | None = None,
    absent: bool = False,
) -> tuple[Action, dict[str, Any]]:
    """owner_alive is asked before creating: a child found missing may be the garbage
    collector's work after its owner was deleted, which the caller may not know yet. guard
    is asked before changing an object that exists; NotOurs when it objects.

    known: the live object as the caller already knows it (from its watch): no GET. absent:
    the caller's watch has not seen the object, so it is created at once (a GET only if the
    API server says it exists after all)."""
    path = kube.path_of(desired)
    live: dict[str, Any] | None
    if known is not None:
        live = dict(known)
    elif absent:
        created = await _create(api, desired, owner_alive, path, tolerate_exists=True)
        if created is not None:
            return "created", created
        live = await api.get(path)
    else:
        live = await api.get(path)
    if live is None:
        created = await _create(api, desired, owner_alive, path, tolerate_exists=False)
        assert created is not None
        return "created", created
    if guard is not None and (why := guard(live, desired)):
        raise NotOurs(why)
    if contains(live, desired):
        return "unchanged", live
    # A merge patch of the whole manifest: lists are replaced, so hand-added containers,
    # ports or rules go away too; keys we never set stay.
    return "updated", await api.patch(path, dict(desired))


async def _create(
    api: kube.Api,
    desired: Mapping[str, Any],
    owner_alive: Guard | None,
    path: str,
    *,
    tolerate_exists: bool,
) -> dict[str, Any] | None:
    if owner_alive is not None and not await owner_alive():
        raise OwnerGone(path)
    meta = desired["metadata"]
    coll = kube.collection(desired["apiVersion"], desired["kind"], meta.get("namespace"))
    try:
        return await api.create(coll, desired)
    except kube.ApiError as exc:
        if tolerate_exists and exc.status == 409:
            return None  # it exists after all: the caller reads it
        raise


def owned_by(obj: Mapping[str, Any], msvc_name: str, uid: str | None) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    if labels.get(naming.LABEL_MAILSERVICE) != msvc_name:
        return False
    if labels.get(naming.LABEL_MANAGED_BY) != naming.MANAGED_BY:
        return False
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return uid is None or any(r.get("uid") == uid for r in refs)


async def prune(
    api: kube.Api,
    api_version: str,
    kind: str,
    namespace: str,
    msvc_name: str,
    uid: str | None,
    keep: Iterable[str],
) -> list[str]:
    """Delete this MailService's children of one kind that are no longer wanted."""
    selector = (
        f"{naming.LABEL_MAILSERVICE}={msvc_name},{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
    )
    keep = set(keep)
    deleted = []
    for obj in await api.list(kube.collection(api_version, kind, namespace), selector):
        # Filtered here too: a selector is a request, and only our own children may go.
        if obj["metadata"]["name"] in keep or not owned_by(obj, msvc_name, uid):
            continue
        obj = {**obj, "apiVersion": api_version, "kind": kind}
        if await api.delete(kube.path_of(obj)):
            deleted.append(obj["metadata"]["name"])
    return deleted
