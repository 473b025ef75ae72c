"""Every kopf handler of the operator, in one place. Each is a few lines that delegate to
`reconcile`; what triggers what:

- a MailService created, changed (spec, labels, annotations such as start/stop/restart) or
  found at start-up -> reconcile it (API errors retried with backoff, retries.py; an invalid
  spec waits for the spec to change);
- a MailService created, changed or gone -> reconcile the others that claim one of its
  addresses or report a listen conflict (takeover);
- an IPAddressGroup changed -> its status, and every MailService using it directly or through
  nesting (ConfigMap and NetworkPolicy; the pods reload, nothing restarts);
- a child (Deployment, ConfigMap, Service, NetworkPolicy, PodDisruptionBudget) changed or
  deleted -> reconcile the MailServices owning it (a shared listener's children name every
  MailService on the address): edits by hand are put back, rollouts and load-balancer
  addresses update the status;
- every MAILWARDEN_RESYNC_SECONDS -> everything once more (level-based, so a no-op when all
  is well), which also retries fan-out that failed;
- every MAILWARDEN_BACKEND_PROBE_SECONDS -> a TCP probe of every running MailService's
  backend; one whose answer changed (unreachable, or back) is reconciled. A task of the
  operator rather than a kopf timer: kopf puts a finalizer on every object with a timer, and
  MailServices should stay deletable without the operator.
- at most every MAILWARDEN_FIGURES_SECONDS -> the live figures of every listener pod
  (GET /status), summed into each MailService's status.connections when they changed
  (poll.py); a task too, for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from mailwarden.operator import (
    conditions,
    groups,
    kopfstate,
    kube,
    models,
    naming,
    poll,
    reconcile,
    retries,
)
from mailwarden.operator import pods as pods_mod
from mailwarden.operator import settings as settings_mod

logger = logging.getLogger(__name__)

MSVC = (models.GROUP, models.VERSION, "mailservices")
IPG = (models.GROUP, models.VERSION, "ipaddressgroups")
CHILD_LABELS: dict[str, Any] = {
    naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
    naming.LABEL_LISTENER: kopf.PRESENT,
}
# Server-side: what the API server filters every list and watch of the child kinds by.
MANAGED_SELECTOR = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
CHILD_RESOURCES = (
    ("apps", "v1", "deployments"),
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("", "v1", "pods"),
)
LIST_CHUNK = 500
KOPF_PREFIX = f"kopf.{models.GROUP}"


# -- start-up and shutdown ------------------------------------------------------------------


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    mailservices: kopf.Index[Any, Any],
    ipaddressgroups: kopf.Index[Any, Any],
    listener_pods: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    # No change handlers here: kopf's per-event essence and progress bookkeeping are no-ops.
    settings.persistence.diffbase_storage = kopfstate.NoDiffBase()
    settings.persistence.progress_storage = kopfstate.NoProgress()
    settings.posting.level = logging.WARNING  # our own events say what happened
    settings.watching.server_timeout = 300
    # Children and listener pods are filtered by the API server, not after kopf has listed
    # and watched every object of the kind in the cluster (handler `labels=` filters are
    # client-side). Initial lists come in pages.
    for resource in CHILD_RESOURCES:
        settings.watching.label_selectors[resource] = MANAGED_SELECTOR
    settings.watching.chunk_size = LIST_CHUNK
    # kopf keeps one worker per object (a task, a queue and the last raw event) until the
    # object has had no event for this long (kopf's default: 5 s). After a burst of creations
    # thousands of them waited at once; 1 s cut the operator's RSS by 6 MiB at 300
    # MailServices (114 -> 108, bench.operator_scale) at no measurable CPU cost: a later event
    # only starts a new worker.
    settings.queueing.idle_timeout = 1.0
    settings.networking.request_timeout = 60
    if "ctx" not in memo:
        # `mailwarden operator` has read (and checked) the settings before kopf started.
        config = memo.get("settings") or settings_mod.Settings.from_env()
        memo.ctx = reconcile.Context(api=kube.Api.from_environment(), settings=config)
    # kopf gives every object it watches a shallow copy of this memo (5,000 copies at 1,000
    # MailServices): two keys, the rest of the handlers' state in one object.
    memo.pop("settings", None)
    indices = (mailservices, ipaddressgroups, listener_pods)
    memo.state = State(
        tasks=[
            asyncio.create_task(_resync(memo.ctx, *indices)),
            asyncio.create_task(_probe_backends(memo.ctx, *indices)),
            asyncio.create_task(_poll_figures(memo.ctx, *indices)),
        ]
    )


@dataclasses.dataclass
class State:
    """What the handlers keep between events, besides reconcile.Context."""

    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    # (kind, namespace, name) -> what _spec_changed compares.
    generations: dict[tuple[str, str | None, str | None], Any] = dataclasses.field(
        default_factory=dict
    )
    # MailService -> the fixed addresses it claimed when last seen (for contenders).
    claimed: dict[reconcile.Key, frozenset[Any]] = dataclasses.field(default_factory=dict)
    retries: retries.Retries = dataclasses.field(default_factory=retries.Retries)
    # Listener pod -> the reasons it was waiting for (CrashLoopBackOff, ...).
    pod_waiting: dict[tuple[str, str], frozenset[str]] = dataclasses.field(default_factory=dict)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    state: State | None = memo.get("state")
    if state is not None:
        for task in state.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await state.retries.close()
    ctx = memo.get("ctx")
    if ctx is not None:
        await ctx.api.aclose()  # its connections belong to this event loop


# -- indices: what reconciliation reads instead of asking the API ---------------------------


# Indexing functions are coroutines: kopf runs plain functions in a worker thread, one hop
# there and back per event, which was a tenth of the operator's CPU (bench.operator_scale).
@kopf.index(*MSVC)
async def mailservices(
    namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[Any, Any]:
    return _indexed("MailService", (namespace, name), body, memo)


@kopf.index(*IPG)
async def ipaddressgroups(
    namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[Any, Any]:
    return _indexed("IPAddressGroup", (namespace, name), body, memo)


def _indexed(kind: str, key: reconcile.Key, body: kopf.Body, memo: kopf.Memo) -> dict[Any, Any]:
    """The index entry of a MailService or group: a stable copy of its body. The status this
    operator wrote needs no copy of its own once the index shows it."""
    snapshot = _snapshot(body)
    if "ctx" in memo:
        memo.ctx.settle(kind, key, snapshot.get("status") or {})
    return {key: snapshot}


@kopf.index("", "v1", "pods", labels=CHILD_LABELS)
async def listener_pods(
    namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    key = pods_mod.pod_key(namespace, labels)
    return {key: pods_mod.summary(body)} if key is not None else None


# -- MailService ----------------------------------------------------------------------------


@kopf.on.event(*MSVC)
async def mailservice(
    body: kopf.Body,
    type: str | None,
    memo: kopf.Memo,
    mailservices: kopf.Index[Any, Any],
    ipaddressgroups: kopf.Index[Any, Any],
    listener_pods: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """Every event of a MailService. It is reconciled when it is new to this operator (the
    start-up listing, a creation) or its spec, labels or annotations changed; status writes,
    the operator's own included, change none of these. The other MailServices that may gain
    or lose an address with it are reconciled too (takeover). Change detection is the
    operator's own rather than kopf's change handlers, which record every handled change in an
    annotation: a write and an echo event per change, and a copy of the body per event."""
    key = (str(body.metadata.namespace), str(body.metadata.name))
    ctx: reconcile.Context = memo.ctx
    if type == "DELETED":
        ctx.forget("MailService", key)
        reconcile.forget_parsed(key)
        memo.state.retries.cancel(key)
    if not _spec_changed(memo, "msvc", body, type):
        return
    # What it claimed when last seen: nothing before (or never seen) and nothing now, and no
    # other MailService can be affected.
    claimed: dict[reconcile.Key, frozenset[Any]] = memo.state.claimed
    before = claimed.pop(key, frozenset())
    if type != "DELETED":
        now = reconcile.claims_of(body)
        if now:
            claimed[key] = now
    world = reconcile.world_of(mailservices, ipaddressgroups, listener_pods)
    # The others first: one that takes over an address this one left rebuilds the listener
    # it now leads (and says so in its own Events).
    await _fan_out(ctx, world, world.contenders(body, before))
    if type != "DELETED":
        await _reconcile(ctx, memo.state.retries, key, world)


async def _reconcile(
    ctx: reconcile.Context,
    pending: retries.Retries,
    key: reconcile.Key,
    world: reconcile.World,
    attempt: int = 0,
) -> None:
    """Reconcile one MailService; on failure, again after a backoff (unless something newer
    reconciles it first). An invalid spec waits for an edit: its status says why."""
    pending.cancel(key)
    body = world.services.get(key)
    if body is None:
        return
    try:
        await reconcile.mailservice(ctx, body, world)
    except reconcile.InvalidSpec:
        return
    except Exception as exc:  # an API error, or a bug: logged, and retried like kopf would
        delay = retries.backoff(attempt)
        if isinstance(exc, kube.ApiError):
            logger.warning("%s/%s: %s; retrying in %.0f s", *key, exc, delay)
        else:
            logger.exception("%s/%s: reconciliation failed; retrying in %.0f s", *key, delay)
        pending.later(key, delay, lambda: _reconcile(ctx, pending, key, world, attempt + 1))


# -- IPAddressGroup -------------------------------------------------------------------------


@kopf.on.event(*IPG)
async def ip_address_group(
    body: kopf.Body,
    type: str | None,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    mailservices: kopf.Index[Any, Any],
    ipaddressgroups: kopf.Index[Any, Any],
    listener_pods: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    if type == "DELETED":
        memo.ctx.forget("IPAddressGroup", (namespace, name))
        reconcile.forget_group((namespace, name))
    world = reconcile.world_of(mailservices, ipaddressgroups, listener_pods)
    # The group itself and every group nesting it resolve differently now.
    specs = world.group_specs(namespace)
    for key, group in world.groups.items():
        if key[0] == namespace and name in groups.resolve(key[1], specs).uses:
            await _quietly(reconcile.ip_address_group(memo.ctx, group, world))
    if _spec_changed(memo, "ipg", body, type):
        await _fan_out(memo.ctx, world, world.users_of(namespace, name))


# -- children -------------------------------------------------------------------------------


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
@kopf.on.event("", "v1", "configmaps", labels=CHILD_LABELS)
@kopf.on.event("", "v1", "services", labels=CHILD_LABELS)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
async def child_changed(
    body: kopf.Body,
    event: kopf.RawEvent,
    type: str | None,
    namespace: str,
    labels: Mapping[str, str],
    resource: kopf.Resource,
    memo: kopf.Memo,
    mailservices: kopf.Index[Any, Any],
    ipaddressgroups: kopf.Index[Any, Any],
    listener_pods: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    if type != "DELETED":
        # What reconciliations compare against instead of reading each child again.
        # The raw object of the event (a dict of its own, never changed by kopf), not a copy
        # of the body view: this runs for every event of every child.
        memo.ctx.remember({**event["object"], "kind": body.get("kind") or resource.kind})
    if type is None:
        return  # the initial listing: the MailServices' own resume handlers cover it
    # A shared listener's children name every MailService on the address as an owner.
    names = {
        str(ref.get("name"))
        for ref in body.metadata.get("ownerReferences") or []
        if ref.get("kind") == "MailService"
    }
    if naming.LABEL_MAILSERVICE in labels:
        names.add(labels[naming.LABEL_MAILSERVICE])
    if type == "DELETED":
        memo.ctx.forget_child({**event["object"], "kind": body.get("kind") or resource.kind})
    elif all(memo.ctx.already_seen(body, (namespace, name)) for name in names):
        return  # the echo of a version the owners' finished reconciliations worked from
    world = reconcile.world_of(mailservices, ipaddressgroups, listener_pods)
    for name in sorted(names):
        owner = world.services.get((namespace, name))
        if owner is None:
            continue
        if type == "DELETED" and not await _still_there(memo.ctx, owner):
            # The garbage collector at work after the owner went (its deletion may not have
            # reached the index yet): nothing to put back.
            continue
        await _quietly(reconcile.mailservice(memo.ctx, owner, world, unless_seen=body))


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
async def pod_changed(
    body: kopf.Body,
    type: str | None,
    namespace: str,
    labels: Mapping[str, str],
    memo: kopf.Memo,
    mailservices: kopf.Index[Any, Any],
    ipaddressgroups: kopf.Index[Any, Any],
    listener_pods: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """A listener pod started or stopped waiting on something (CrashLoopBackOff,
    ImagePullBackOff): its MailService's status says so. Other pod changes are not news."""
    key = (namespace, str(body.metadata.name))
    waiting: dict[tuple[str, str], frozenset[str]] = memo.state.pod_waiting
    now = frozenset() if type == "DELETED" else pods_mod.waiting_reasons(body)
    before = waiting.pop(key, frozenset())
    if now:
        waiting[key] = now
    if now == before or type is None:
        return  # nothing new; the initial listing is covered by the resume handlers
    world = reconcile.world_of(mailservices, ipaddressgroups, listener_pods)
    listener = labels[naming.LABEL_LISTENER]
    defaults = memo.ctx.settings.listener_defaults
    for owner in world.served_by(namespace, listener, defaults):
        await _quietly(reconcile.mailservice(memo.ctx, owner, world))


# -- helpers --------------------------------------------------------------------------------


def _snapshot(body: kopf.Body) -> dict[str, Any]:
    # Bodies are live views that kopf updates; the world must hold stable copies (without
    # managedFields, which nothing reads: one copy per MailService and group is kept).
    snapshot: dict[str, Any] = _deep_copy(reconcile.without_managed_fields(body))
    return snapshot


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_deep_copy(v) for v in value]
    return value


async def _still_there(ctx: reconcile.Context, body: Mapping[str, Any]) -> bool:
    try:
        live = await ctx.api.get(kube.path_of({**body, "apiVersion": models.API_VERSION}))
    except kube.ApiError:
        return True  # let the reconciliation find out
    return (
        live is not None
        and live["metadata"].get("uid") == body["metadata"].get("uid")
        and not live["metadata"].get("deletionTimestamp")
    )


def _spec_changed(memo: kopf.Memo, kind: str, body: kopf.Body, type: str | None) -> bool:
    """Whether the object is new to this operator, or its spec (generation), labels or
    annotations changed since its last event (and deletions); status writes would echo."""
    key = (kind, body.metadata.namespace, body.metadata.name)
    seen: dict[tuple[str, str | None, str | None], Any] = memo.state.generations
    if type == "DELETED":
        seen.pop(key, None)
        return True
    # kopf's own bookkeeping (annotations under its prefix, left by earlier versions of the
    # operator) is not a change.
    annotations = {
        k: v for k, v in body.metadata.annotations.items() if not k.startswith(KOPF_PREFIX + "/")
    }
    generation = (body.metadata.get("generation"), dict(body.metadata.labels), annotations)
    if seen.get(key) == generation:
        return False
    seen[key] = generation
    return True


async def _fan_out(
    ctx: reconcile.Context, world: reconcile.World, bodies: Iterable[Mapping[str, Any]]
) -> None:
    await asyncio.gather(*(_quietly(reconcile.mailservice(ctx, b, world)) for b in bodies))


async def _quietly(coro: Any) -> None:
    """Reconciliations triggered by another object: a failure is logged, and the periodic
    resync (or the object's next event) tries again."""
    try:
        await coro
    except reconcile.InvalidSpec:
        pass
    except kube.ApiError as exc:
        logger.warning("reconciliation failed, will retry on the next resync: %s", exc)


PROBE_CONCURRENCY = 16


async def _probe_backends(
    ctx: reconcile.Context,
    mailservices: kopf.Index[Any, Any],
    ipaddressgroups: kopf.Index[Any, Any],
    listener_pods: kopf.Index[Any, Any],
) -> None:
    """Bounded: at most PROBE_CONCURRENCY probes at once, each within the probe timeout, and
    one round at a time."""
    period = ctx.settings.backend_probe_seconds
    if period <= 0:
        return
    limit = asyncio.Semaphore(PROBE_CONCURRENCY)

    async def one(key: reconcile.Key, world: reconcile.World) -> None:
        async with limit:
            await _quietly(reconcile.probe_backend(ctx, key, world))

    while True:
        await asyncio.sleep(period)
        world = reconcile.world_of(mailservices, ipaddressgroups, listener_pods)
        await asyncio.gather(*(one(key, world) for key in list(world.services)))


async def _poll_figures(
    ctx: reconcile.Context,
    mailservices: kopf.Index[Any, Any],
    ipaddressgroups: kopf.Index[Any, Any],
    listener_pods: kopf.Index[Any, Any],
) -> None:
    """A round starts at most every figures_seconds (a slow round delays the next; rounds
    never overlap). Nothing a pod says or fails to say ends the task."""
    settings = ctx.settings
    period = settings.figures_seconds
    if period <= 0:
        return
    loop = asyncio.get_running_loop()
    async with poll.session(settings.figures_concurrency) as http:
        while True:
            started = loop.time()
            try:
                world = reconcile.world_of(mailservices, ipaddressgroups, listener_pods)
                outcomes = await reconcile.read_figures(ctx, world, http)
                stamp = conditions.now()
                for key, outcome in outcomes.items():
                    await _quietly(reconcile.write_figures(ctx, key, world, outcome, stamp))
            except Exception:  # a bug must not end the figures for good: log, next round
                logger.exception("reading the live figures failed; trying again next round")
            await asyncio.sleep(max(0.0, period - (loop.time() - started)))


async def _resync(
    ctx: reconcile.Context,
    mailservices: kopf.Index[Any, Any],
    ipaddressgroups: kopf.Index[Any, Any],
    listener_pods: kopf.Index[Any, Any],
) -> None:
    while True:
        await asyncio.sleep(ctx.settings.resync_seconds)
        world = reconcile.world_of(mailservices, ipaddressgroups, listener_pods)
        for group in world.groups.values():
            await _quietly(reconcile.ip_address_group(ctx, group, world))
        # Read from the API, not the watch's cache: a periodic check that nothing was missed.
        for msvc in world.services.values():
            await _quietly(reconcile.mailservice(ctx, msvc, world, fresh=True))
