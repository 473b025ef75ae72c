"""Reconciliation of one MailService or IPAddressGroup: read the world (from the operator's
indices), build the children (pure), apply them (idempotent), write the status when it
changed. Called by the kopf handlers, whatever triggered them."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import aiohttp
import msgspec
import pydantic

from mailwarden.operator import (
    apply,
    bans,
    children,
    conditions,
    conflicts,
    events,
    figures,
    groups,
    kube,
    listeners,
    manifests,
    metrics,
    models,
    naming,
    poll,
    probe,
)
from mailwarden.operator import pods as pods_mod
from mailwarden.operator import settings as settings_mod
from mailwarden.operator import status as status_mod

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name


class InvalidSpec(Exception):
    """The spec cannot be acted on; only a change to it helps (no retries)."""


@dataclasses.dataclass(frozen=True)
class World:
    """What the operator knows: every MailService and IPAddressGroup body, by (namespace,
    name), as its indices hold them."""

    services: Mapping[Key, Mapping[str, Any]]
    groups: Mapping[Key, Mapping[str, Any]]
    # Listener pods, as summaries (pods.summary), by (namespace, what serves_key gives).
    pods: Mapping[Key, Sequence[Mapping[str, Any]]] = dataclasses.field(default_factory=dict)

    def pods_of(self, namespace: str, listener_names: Iterable[str]) -> list[Mapping[str, Any]]:
        """The pods of these listeners (a MailService's, listeners.deployments)."""
        return [
            pod
            for name in listener_names
            for pod in self.pods.get(pods_mod.serving_key(namespace, name), ())
        ]

    def group_specs(self, namespace: str) -> dict[str, models.IPAddressGroupSpec]:
        out = {}
        for (ns, name), body in self.groups.items():
            if ns != namespace:
                continue
            spec = parse_group_spec(body)
            if spec is not None:  # an invalid group is reported on the group; users see it missing
                out[name] = spec
        return out

    def claimants(
        self, defaults: settings_mod.ListenerDefaults | None = None
    ) -> list[conflicts.Claimant]:
        """Every MailService's fixed-address claims, with the cluster-wide defaults applied
        (a service left to a ClusterIP default claims nothing)."""
        defaults = defaults or _NO_DEFAULTS
        out = []
        for body in self.services.values():
            if body.get("metadata", {}).get("deletionTimestamp"):
                continue
            claimant = claimant_of(body, defaults)
            if claimant is not None:
                out.append(claimant)
        return out

    def members(
        self,
        namespace: str,
        defaults: settings_mod.ListenerDefaults | None = None,
        claimants: list[conflicts.Claimant] | None = None,
        addresses: set[str] | None = None,
    ) -> list[listeners.Member]:
        """Every valid MailService of `namespace` that is not being deleted, as listeners
        see it: defaults applied, with the claims it lost to older MailServices (of any
        namespace: an address is one address cluster-wide). addresses: only those naming
        one of these fixed addresses (the ones that can share a listener with them)."""
        defaults = defaults or _NO_DEFAULTS
        if claimants is None:
            claimants = self.claimants(defaults)
        out = []
        for (ns, _), body in self.services.items():
            if ns != namespace or (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            parsed = parse_mailservice(body)
            if parsed is None:
                continue
            if addresses is not None and not addresses & {
                a for a, _ in parsed.spec.endpoints() if a is not None
            }:
                continue  # cheap, before the defaults: most MailServices share nothing
            found = defaulted(body, defaults)
            if found is None:
                continue
            msvc, me = found
            lost = conflicts.lost(me, claimants) if me.claims else {}
            out.append(listeners.Member(msvc, created(body), lost))
        return out

    def listener_deployments(
        self,
        key: Key,
        defaults: settings_mod.ListenerDefaults | None = None,
        claimants: list[conflicts.Claimant] | None = None,
    ) -> tuple[str, ...]:
        """The listener Deployments serving the MailService `key` (contract C5): its pods are
        those labelled mailwarden.io/listener=<name> in its namespace. Its own listener when
        its spec cannot be read."""
        body = self.services.get(key)
        msvc = parse_mailservice(body) if body is not None else None
        if msvc is None:
            return (naming.base(key[1]),)
        msvc = children.with_defaults(msvc, defaults or settings_mod.ListenerDefaults())
        me = conflicts.claimant(msvc, created(body or {}))
        if not me.claims:
            return listeners.deployments(msvc)
        if claimants is None:
            claimants = self.claimants(defaults)
        return listeners.deployments(msvc, conflicts.lost(me, claimants))

    def served_by(
        self, namespace: str, listener: str, defaults: settings_mod.ListenerDefaults
    ) -> list[Mapping[str, Any]]:
        """The MailServices of `namespace` that the listener `listener` serves."""
        return [
            body
            for key, body in self.services.items()
            if key[0] == namespace and listener in self.listener_deployments(key, defaults)
        ]

    def users_of(self, namespace: str, group: str) -> list[Mapping[str, Any]]:
        """MailServices of `namespace` whose access depends on `group`, directly or nested."""
        specs = self.group_specs(namespace)
        out = []
        for (ns, _), body in self.services.items():
            if ns != namespace:
                continue
            access = (body.get("spec") or {}).get("access") or {}
            # allowFrom and autoBan.exemptFrom both render a group into the configuration.
            named = (access.get("allowFrom"), (access.get("autoBan") or {}).get("exemptFrom"))
            if any(root and group in groups.resolve(root, specs).uses for root in named):
                out.append(body)
        return out

    def contenders(
        self, body: Mapping[str, Any], before: frozenset[conflicts.Claim] | None = None
    ) -> list[Mapping[str, Any]]:
        """Other MailServices that may gain or lose an address when `body` changes or goes:
        those claiming one of its addresses, and those already reporting a conflict. Read
        without the cluster-wide defaults: a ClusterIP default only removes claims, so this
        errs towards reconciling one MailService too many. before: its claims before this
        change, when known; a MailService that claims no fixed address, and claimed none
        before, can neither take an address from another nor free one (most MailServices:
        then no other is even looked at)."""
        mine = claims_of(body)
        if before is not None and not before and not mine:
            return []
        addresses = {a for a, _ in mine}
        key = _key(body)
        out = []
        for other_key, other in self.services.items():
            if other_key == key:
                continue
            ready = conditions.get((other.get("status") or {}).get("conditions") or [], "Ready")
            reason = ready.get("reason") if ready else None
            if reason == conditions.Reason.LISTEN_CONFLICT:
                out.append(other)
                continue
            if not mine:
                continue  # nothing of ours to share: parsing the other would not change it
            msvc = parse_mailservice(other)
            theirs = conflicts.claims(msvc.spec) if msvc is not None else frozenset()
            # A claim in common (a conflict), or an address shared in the same namespace (a
            # listener in common, whose replicas, ports and config may change).
            if mine & theirs or (other_key[0] == key[0] and addresses & {a for a, _ in theirs}):
                out.append(other)
        return out


def claims_of(body: Mapping[str, Any]) -> frozenset[conflicts.Claim]:
    """The fixed addresses and ports `body` claims, without the cluster-wide defaults."""
    me = parse_mailservice(body)
    return conflicts.claims(me.spec) if me is not None else frozenset()


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace")), str(meta.get("name")))


def created(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("creationTimestamp") or "")


# (namespace, name) -> (what the parse depends on, parsed): conflicts need every MailService
# parsed, for every reconciliation. The parse reads the spec, labels and annotations: the same
# uid, generation (bumped by every spec change), labels and annotations parse the same, while
# the resourceVersion also moves with every status write (each MailService's second
# reconciliation, after its rollout, parsed it again).
_parsed: dict[Key, tuple[Any, models.MailService | None]] = {}


def _parse_version(body: Mapping[str, Any]) -> Any:
    """What a MailService's parse depends on besides its name, or None (then not cached)."""
    meta = body.get("metadata") or {}
    uid, generation = meta.get("uid"), meta.get("generation")
    if not uid or generation is None:
        return None
    labels = tuple(sorted((meta.get("labels") or {}).items()))
    annotations = tuple(sorted((meta.get("annotations") or {}).items()))
    return (uid, generation, labels, annotations, meta.get("creationTimestamp"))


def parse_mailservice(body: Mapping[str, Any]) -> models.MailService | None:
    key = _key(body)
    version = _parse_version(body)
    cached = _parsed.get(key)
    if version is not None and cached is not None and cached[0] == version:
        return cached[1]
    try:
        msvc: models.MailService | None = models.MailService.model_validate(_msvc_document(body))
    except pydantic.ValidationError:
        msvc = None
    if version is not None:
        _parsed[key] = (version, msvc)
    return msvc


# (namespace, name) -> ((uid, generation), parsed spec): every reconciliation reads its
# namespace's groups, and a group's spec changes only with its generation.
_groups_parsed: dict[Key, tuple[tuple[str, str], models.IPAddressGroupSpec | None]] = {}


def parse_group_spec(body: Mapping[str, Any]) -> models.IPAddressGroupSpec | None:
    meta = body.get("metadata") or {}
    version = (str(meta.get("uid") or ""), str(meta.get("generation") or ""))
    key = _key(body)
    cached = _groups_parsed.get(key)
    if cached is not None and cached[0] == version and all(version):
        return cached[1]
    try:
        spec: models.IPAddressGroupSpec | None = models.IPAddressGroupSpec.model_validate(
            body.get("spec") or {}
        )
    except pydantic.ValidationError:
        spec = None
    if all(version):
        _groups_parsed[key] = (version, spec)
    return spec


def forget_group(key: Key) -> None:
    _groups_parsed.pop(key, None)


def forget_parsed(key: Key) -> None:
    _parsed.pop(key, None)
    _defaulted.pop(key, None)


_NO_DEFAULTS = settings_mod.ListenerDefaults()

# (namespace, name) -> (as _parsed, the defaults, its claims with them applied, or None for
# an invalid spec): every reconciliation of a MailService with a fixed address looks at every
# MailService's claims (an address is one address cluster-wide), which made applying defaults
# to all of them most of the operator's CPU at a thousand MailServices (profiled with
# py-spy). Only the claims are kept: the MailService with its defaults is a second model per
# MailService (2 MiB at a thousand), and only the few sharing an address need it.
_defaulted: dict[Key, tuple[Any, settings_mod.ListenerDefaults, conflicts.Claimant | None]] = {}


def claimant_of(
    body: Mapping[str, Any], defaults: settings_mod.ListenerDefaults
) -> conflicts.Claimant | None:
    """The claims of `body` with the cluster-wide defaults applied (None: an invalid spec)."""
    key = _key(body)
    version = _parse_version(body)
    hit = _defaulted.get(key)
    if version is not None and hit is not None and hit[0] == version and hit[1] is defaults:
        return hit[2]
    found = defaulted(body, defaults)
    claimant = found[1] if found is not None else None
    if version is not None:
        _defaulted[key] = (version, defaults, claimant)
    return claimant


def defaulted(
    body: Mapping[str, Any], defaults: settings_mod.ListenerDefaults
) -> tuple[models.MailService, conflicts.Claimant] | None:
    """The MailService of `body` with the cluster-wide defaults applied, and its claims
    (None: an invalid spec)."""
    msvc = parse_mailservice(body)
    if msvc is None:
        return None
    msvc = children.with_defaults(msvc, defaults)
    return msvc, conflicts.claimant(msvc, created(body))


def _msvc_document(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(body.get("metadata") or {})
    return {
        "apiVersion": body.get("apiVersion", models.API_VERSION),
        "kind": body.get("kind", "MailService"),
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace") or "default",
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {}),
        },
        "spec": body.get("spec") or {},
    }


class Locks:
    """One lock per object: its own handler and fan-out from a group may both want it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, ...], asyncio.Lock] = collections.defaultdict(asyncio.Lock)

    def __call__(self, key: tuple[str, ...]) -> asyncio.Lock:
        return self._locks[key]


@dataclasses.dataclass
class Context:
    api: kube.Api
    settings: settings_mod.Settings = dataclasses.field(default_factory=settings_mod.Settings)
    locks: Locks = dataclasses.field(default_factory=Locks)
    # At most this many MailService reconciliations at once (taken after the object's lock,
    # before any listener lock): a thousand created together would otherwise each hold their
    # built children and pending requests at the same time, which set the operator's peak
    # memory, and compete for the same API connections (kube.Api.CONNECTIONS) anyway.
    running: asyncio.Semaphore = dataclasses.field(
        default_factory=lambda: asyncio.Semaphore(RECONCILE_CONCURRENCY)
    )
    # The status this operator last wrote, by object, until its indices show it. It is the
    # only writer of status, and the bodies in its indices can lag behind its own writes by
    # an event; once they caught up the entry goes (settled): not a second copy of every
    # status.
    written: dict[tuple[str, ...], Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # The last backend probe of each running MailService.
    probes: dict[Key, probe.Result] = dataclasses.field(default_factory=dict)
    # When each MailService last got a ban Event (at most one per bans.EVENT_SECONDS).
    ban_events: bans.Throttle = dataclasses.field(default_factory=bans.Throttle)

    async def write_status(
        self, kind: str, path: str, key: Key, old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        if new != old:
            await self.api.patch(f"{path}/status", {"status": new})
        self.written[(kind, *key)] = new

    def old_status(self, kind: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        known = body.get("status") or {}
        cached = self.written.get((kind, *_key(body)))
        if cached is None:
            return known
        if cached == known:
            del self.written[(kind, *_key(body))]
            return known
        return cached

    def settle(self, kind: str, key: Key, status: Mapping[str, Any]) -> None:
        """The index now holds `status`: what this operator wrote, once they agree, needs
        no copy of its own."""
        cached = self.written.get((kind, *key))
        if cached is not None and cached == status:
            del self.written[(kind, *key)]

    def forget(self, kind: str, key: Key) -> None:
        self.written.pop((kind, *key), None)
        if kind == "MailService":
            self.probes.pop(key, None)
            self.ban_events.forget(key)

    async def backend_error(
        self, key: Key, built: children.Children, *, fresh: bool = False
    ) -> str | None:
        """Why the backend of a running MailService cannot be reached, or None. A probe
        younger than the probe period is reused unless `fresh`; a stopped service (no
        replicas) is not probed."""
        period = self.settings.backend_probe_seconds
        if period <= 0 or not built.running:
            self.probes.pop(key, None)
            return None
        backend = built.rendered.service.backend
        target = probe.Target(backend.host, backend.port, backend.proxy_protocol)
        last = self.probes.get(key)
        if fresh or last is None or not last.fresh(target, period):
            last = await probe.check(target, self.settings.backend_probe_timeout)
            self.probes[key] = last
        return last.error

    # (kind, namespace, name) -> MailService -> the resourceVersion of a child as a
    # reconciliation of that MailService last saw or wrote it (dropped again if that
    # reconciliation fails). A watch event carrying that very version is the echo of the
    # operator's own work and needs no reconciliation of that MailService; any other version
    # (an edit by hand, a rollout, a deletion) still gets one. Per MailService: a shared
    # listener's rollout seen by one member is news to the others.
    seen_children: dict[tuple[str, str, str], dict[Key, str]] = dataclasses.field(
        default_factory=dict
    )

    def already_seen(self, child: Mapping[str, Any], owner: Key) -> bool:
        meta = child.get("metadata") or {}
        version = meta.get("resourceVersion")
        key = (str(child.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
        return version is not None and self.seen_children.get(key, {}).get(owner) == version

    def saw_child(self, key: tuple[str, str, str], owner: Key, version: str) -> None:
        self.seen_children.setdefault(key, {})[owner] = version

    def unsee_child(self, key: tuple[str, str, str], owner: Key, version: str) -> None:
        owners = self.seen_children.get(key)
        if owners is not None and owners.get(owner) == version:
            del owners[owner]
            if not owners:
                del self.seen_children[key]

    def forget_child(self, child: Mapping[str, Any]) -> None:
        meta = child.get("metadata") or {}
        key = (str(child.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
        self.seen_children.pop(key, None)
        self.live.pop(key, None)

    # (kind, namespace, name) -> the live child as its watch (or the operator's own write)
    # last showed it, as compact JSON: reconciliations compare against it instead of GETting
    # every child every time. Only the watched kinds (WATCHED); the periodic resync reads
    # afresh, which also covers the unwatched ServiceAccounts, Roles and RoleBindings.
    live: dict[tuple[str, str, str], bytes] = dataclasses.field(default_factory=dict)
    # The MailServices reconciled since start-up with the cache trusted for their listeners.
    warmed: set[Key] = dataclasses.field(default_factory=set)
    # Unwatched children (ServiceAccount, Role, RoleBinding) by (kind, namespace, name): a
    # digest of the manifest this operator last applied.
    applied: dict[tuple[str, str, str], str] = dataclasses.field(default_factory=dict)

    def remember(self, obj: Mapping[str, Any]) -> None:
        kind = str(obj.get("kind"))
        if kind not in WATCHED:
            return
        meta = obj.get("metadata") or {}
        key = (kind, str(meta.get("namespace")), str(meta.get("name")))
        old = self.live.get(key)
        version = str(meta.get("resourceVersion") or "")
        if old is not None and version.isdigit():
            # An event older than what a write of ours already returned changes nothing.
            known = _decode(old).get("metadata", {}).get("resourceVersion", "")
            if str(known).isdigit() and int(known) > int(version):
                return
        self.live[key] = msgspec.json.encode(without_managed_fields(obj))

    def recall(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        data = self.live.get((kind, namespace, name))
        if data is None:
            return None
        return _decode(data)


_decode = msgspec.json.Decoder(dict[str, Any]).decode


def without_managed_fields(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """obj without metadata.managedFields: the API server's record of who set which field
    (often as large as the rest of the object), which the operator never reads. Dropped from
    every copy it keeps, so memory follows what it compares, not the server's bookkeeping."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


# How a reconciliation reads the children it applies. "cached": the watch's copy of each
# watched child, no GET (a child never seen is created at once); "create-first": GET the
# children seen, create the others at once (a new spec, or the first pass since start-up);
# "fresh": GET every child (the periodic resync).
Mode = Literal["cached", "create-first", "fresh"]

RECONCILE_CONCURRENCY = 16

# The child kinds the operator watches (handlers.child_changed): their cache entries follow
# every change, so an entry that is missing means the object is missing.
WATCHED = frozenset({"Deployment", "ConfigMap", "Service", "NetworkPolicy", "PodDisruptionBudget"})


async def mailservice(
    ctx: Context,
    body: Mapping[str, Any],
    world: World,
    *,
    unless_seen: Mapping[str, Any] | None = None,
    fresh: bool = False,
) -> None:
    """unless_seen: the child whose event asked for this; if a reconciliation that ran while
    this one waited for the lock already saw that version of it, there is nothing to do.
    fresh: read every child from the API rather than from the watch's cache (the resync)."""
    key = _key(body)
    async with ctx.locks(key):
        if unless_seen is not None and ctx.already_seen(unless_seen, key):
            return
        # The index may hold a newer body than the one a handler was called with, or none
        # when the MailService went away while this waited for its turn.
        if key not in world.services:
            return
        async with ctx.running:
            current = world.services.get(key)  # newer still, after waiting for a turn
            if current is None:
                return
            with metrics.reconcile("MailService") as result:
                try:
                    affected = await _mailservice(ctx, current, world, fresh)
                except InvalidSpec:
                    result[0] = metrics.INVALID
                    raise
    # The other members of listeners this changed: their status (replicas, ports, state)
    # follows from what changed, and the operator's own writes do not wake them. After the
    # lock: two members may each be waking the other.
    for other in sorted(affected):
        if other in world.services:
            try:
                await mailservice(ctx, world.services[other], world)
            except (InvalidSpec, kube.ApiError) as exc:
                logger.warning("reconciling %s/%s after a shared change failed: %s", *other, exc)


async def _mailservice(
    ctx: Context, body: Mapping[str, Any], world: World, fresh: bool = False
) -> set[Key]:
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return set()  # going away: the garbage collector takes the children
    generation = int(meta.get("generation") or 0)
    old_status = ctx.old_status("MailService", body)
    new_generation = old_status.get("observedGeneration") != generation
    path = kube.path_of({**body, "apiVersion": models.API_VERSION, "kind": "MailService"})
    stamp = conditions.now()
    try:
        parsed = parse_mailservice(body)
        # Invalid: parsed again for the validation's own words.
        msvc = parsed or models.MailService.model_validate(_msvc_document(body))
    except pydantic.ValidationError as exc:
        message = "invalid spec: " + manifests.explain(exc)
        new = status_mod.invalid(generation, message, old_status, timestamp=stamp)
        await ctx.write_status("MailService", path, _key(body), old_status, new)
        if new_generation:
            await events.post(ctx.api, body, "Warning", conditions.Reason.INVALID_SPEC, message)
        raise InvalidSpec(message) from None

    namespace = msvc.metadata.namespace
    defaults = ctx.settings.listener_defaults
    msvc = children.with_defaults(msvc, defaults)
    me = conflicts.claimant(msvc, created(body))
    # Only fixed addresses can be lost or shared; without one, no other MailService matters
    # (and none is read: most MailServices share nothing).
    claimants = world.claimants(defaults) if me.claims else []
    lost = conflicts.lost(me, claimants) if me.claims else {}
    member = listeners.Member(msvc, created(body), lost)
    # The listeners it was in, as its status recorded them (a listener it left must be
    # rebuilt without it, or removed when no one else is in it).
    previous = set(old_status.get("listeners") or [])
    own = listeners.name_of(member.name, None)
    if previous - {own} - set(listeners.deployments(msvc, lost)):
        # It left a shared listener: everyone of the namespace may matter to rebuild it.
        if not claimants:
            claimants = world.claimants(defaults)
        others = world.members(namespace, defaults, claimants)
    elif me.claims:
        addresses = {a for a, _ in me.claims}
        others = world.members(namespace, defaults, claimants, addresses=addresses)
    else:
        others = []
    others = [m for m in others if m.name != member.name]
    plan = listeners.plan([*others, member])
    seen: dict[tuple[str, str, str], str] = {}
    try:
        # The cache is trusted once this MailService was reconciled from the API since
        # start-up and its spec did not change since (an address may have moved).
        cached = not fresh and not new_generation and _key(body) in ctx.warmed
        mode: Mode = "fresh" if fresh else "cached" if cached else "create-first"
        affected = await _apply_children(
            ctx, body, member, plan, world, old_status, new_generation, seen, previous, mode
        )
        ctx.warmed.add(_key(body))
    except BaseException:
        # The next event of these children must reconcile again: this one did not finish.
        for child_key, version in seen.items():
            ctx.unsee_child(child_key, _key(body), version)
        raise
    return affected


class Foreign(Exception):
    """A child's name is taken by an object that another owner controls."""


async def _legacy_children(
    ctx: Context, namespace: str, msvc_name: str, uid: str | None
) -> tuple[set[str], list[dict[str, Any]]]:
    """What a MailService owned before listeners were shared, read once (its status records
    its listeners from then on): its Services named per MailService and address, to be
    removed, and its own Deployment's name when it had one. Listed by its label, filtered by
    the API server."""
    selector = (
        f"{naming.LABEL_MAILSERVICE}={msvc_name},{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
    )
    found: set[str] = set()
    legacy: list[dict[str, Any]] = []
    for svc in await ctx.api.list(kube.collection("v1", "Service", namespace), selector):
        meta = svc.get("metadata") or {}
        refs = meta.get("ownerReferences") or []
        labels = meta.get("labels") or {}
        if labels.get(naming.LABEL_MANAGED_BY) != naming.MANAGED_BY:
            continue  # a selector is a request: only the operator's own objects count
        if labels.get(naming.LABEL_MAILSERVICE) != msvc_name:
            continue
        if uid is None or not any(r.get("uid") == uid for r in refs):
            continue
        if labels.get(naming.LABEL_LISTENER) is None:
            legacy.append({**svc, "apiVersion": "v1", "kind": "Service"})
            found.add(naming.base(msvc_name))
    return found, legacy


def _ours(live: Mapping[str, Any], desired: Mapping[str, Any]) -> str | None:
    """Why the operator must not change `live`, or None. An object without the operator's
    label, or whose controller is an object other than the owners it is built for, belongs
    to someone else."""
    meta = live.get("metadata") or {}
    what = f"{live.get('kind', desired['kind'])} {meta.get('name')}"
    if (meta.get("labels") or {}).get(naming.LABEL_MANAGED_BY) != naming.MANAGED_BY:
        return f"{what} exists and is not managed by mailwarden"
    wanted = {r["uid"] for r in (desired.get("metadata") or {}).get("ownerReferences") or []}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") not in wanted and wanted:
            return f"{what} is controlled by {ref.get('kind')} {ref.get('name')} ({ref.get('uid')})"
    return None


async def _apply_children(
    ctx: Context,
    body: Mapping[str, Any],
    member: listeners.Member,
    plan: Mapping[str, listeners.Listener],
    world: World,
    old_status: Mapping[str, Any],
    new_generation: bool,
    seen: dict[tuple[str, str, str], str],
    previous: set[str],
    mode: Mode = "fresh",
) -> set[Key]:
    meta = body.get("metadata") or {}
    msvc = member.msvc
    namespace = msvc.metadata.namespace
    path = kube.path_of({**body, "apiVersion": models.API_VERSION, "kind": "MailService"})
    stamp = conditions.now()
    groups_ = world.group_specs(namespace)

    # A MailService with no status at all has never had children, so none can be missing
    # because the garbage collector took them after its deletion: no GET of it before the
    # first creates (one request per new MailService). Should it have been deleted meanwhile,
    # the children name a uid that no longer exists, and the garbage collector removes them.
    alive: list[bool] = [] if old_status else [True]

    async def owner_alive() -> bool:
        if alive:
            return alive[0]  # asked once per reconciliation, not once per missing child
        live = await ctx.api.get(path)
        alive.append(
            live is not None
            and live["metadata"].get("uid") == meta.get("uid")
            and not live["metadata"].get("deletionTimestamp")
        )
        return alive[0]

    mine = listeners.of_member(plan, member.name)
    legacy: list[dict[str, Any]] = []
    # A MailService with no status at all is new: nothing of an older naming can be its own.
    if old_status and "listeners" not in old_status:
        found, legacy = await _legacy_children(ctx, namespace, member.name, msvc.metadata.uid)
        previous = previous | found
    touched = sorted({lst.name for lst in mine} | previous)
    built = {lst.name: children.build_listener(lst, groups_, ctx.settings) for lst in mine}
    for name in touched:
        if name in plan and name not in built:
            built[name] = children.build_listener(plan[name], groups_, ctx.settings)
    affected: set[Key] = set()
    live_deployments: dict[str, Mapping[str, Any]] = {}
    live_services: dict[str, Mapping[str, Any]] = {}
    foreign: list[str] = []
    # The first child the API server refused for good, and the first error worth retrying:
    # the other children are still applied and the status is written either way.
    errors = _Errors()
    async with contextlib.AsyncExitStack() as stack:
        for name in touched:  # sorted: two reconciliations never wait for each other in a ring
            await stack.enter_async_context(ctx.locks(("listener", namespace, name)))
        for name in touched:
            lst = built.get(name)
            try:
                if lst is None:
                    changed = await _remove_listener(ctx, body, namespace, name)
                else:
                    changed = await _apply_listener(
                        ctx,
                        body,
                        lst,
                        owner_alive,
                        seen,
                        live_deployments,
                        live_services,
                        errors,
                        mode,
                    )
            except apply.OwnerGone:
                logger.info("%s/%s is gone; not recreating its children", *_key(body))
                return set()
            except Foreign as exc:
                foreign.append(str(exc))
                continue
            if changed and name in plan:
                affected |= {
                    (namespace, m.name) for m in plan[name].members if m.name != member.name
                }
        for svc in legacy:
            if svc["metadata"]["name"] in plan:
                continue  # the name is a listener's now: applied above
            if await ctx.api.delete(kube.path_of(svc)):
                metrics.WRITES.labels("Service", "deleted").inc()
                name = svc["metadata"]["name"]
                await events.post(ctx.api, body, "Normal", "Deleted", f"deleted Service {name}")

    built_me = children.for_member(member, [built[lst.name] for lst in mine], groups_, ctx.settings)
    backend_error = await ctx.backend_error(_key(body), built_me)
    facts = status_mod.facts(
        msvc,
        built_me,
        member.lost,
        live_deployments,
        live_services,
        backend_error=backend_error,
        foreign=tuple(foreign),
        apply_failure=errors.failure,
        pods=world.pods_of(namespace, (lst.name for lst in mine)),
    )
    new = status_mod.mailservice(msvc, built_me, facts, old_status, timestamp=stamp)
    await ctx.write_status("MailService", path, _key(body), old_status, new)
    await _announce(ctx, body, built_me, old_status, new, new_generation)
    if errors.retry is not None:
        raise errors.retry  # 409, 429, 5xx, no answer: the caller retries with backoff
    if errors.failure is not None and errors.failure.quota:
        # Retried with backoff until quota frees up; other refusals wait for an edit (of the
        # MailService, the policy or the RBAC) or the periodic resync: no hot loop.
        raise kube.ApiError(errors.failure.code, "Forbidden", errors.failure.message)
    return affected


@dataclasses.dataclass
class _Errors:
    failure: status_mod.ApplyFailure | None = None
    retry: kube.ApiError | None = None


async def _apply_listener(
    ctx: Context,
    body: Mapping[str, Any],
    lst: children.ListenerChildren,
    owner_alive: apply.Guard,
    seen: dict[tuple[str, str, str], str],
    live_deployments: dict[str, Mapping[str, Any]],
    live_services: dict[str, Mapping[str, Any]],
    errors: _Errors,
    mode: Mode = "fresh",
) -> bool:
    """Make one listener's children match; True when any changed. A child the API server
    refuses is recorded in `errors` and the others are still applied. One Event for what
    was written, not one per child. mode: see Mode."""
    namespace = lst.listener.namespace
    changed = False
    had_budget = False
    written: dict[str, list[str]] = {}
    for child in lst.all:
        kind, name = child["kind"], child["metadata"]["name"]
        known = ctx.recall(kind, namespace, name) if kind in WATCHED else None
        digest = ""
        if kind not in WATCHED:
            # Not watched (ServiceAccount, Role, RoleBinding): unchanged since this operator
            # last applied it is taken on trust until the periodic resync reads it afresh.
            digest = hashlib.sha256(msgspec.json.encode(child, order="sorted")).hexdigest()
            if mode == "cached" and ctx.applied.get((kind, namespace, name)) == digest:
                continue
        try:
            action, live = await apply.ensure(
                ctx.api,
                child,
                owner_alive,
                guard=_ours,
                known=known if mode == "cached" else None,
                # Watched and never seen, or never applied by this operator: created at once
                # (read only if it turns out to exist).
                absent=mode != "fresh"
                and (
                    known is None if kind in WATCHED else (kind, namespace, name) not in ctx.applied
                ),
            )
        except apply.NotOurs as exc:
            raise Foreign(str(exc)) from None
        except kube.ApiError as exc:
            name = child["metadata"]["name"]
            if exc.retriable:
                errors.retry = errors.retry or exc
            elif errors.failure is None:
                errors.failure = status_mod.ApplyFailure(
                    child["kind"], name, exc.status, exc.message
                )
            logger.warning("%s/%s: %s %s: %s", *_key(body), child["kind"], name, exc)
            continue
        version = (live.get("metadata") or {}).get("resourceVersion")
        if version is not None:
            # At once, not at the end: the echo of a write usually arrives before the end.
            key = (child["kind"], namespace, child["metadata"]["name"])
            seen[key] = str(version)
            ctx.saw_child(key, _key(body), str(version))
        if action != "unchanged" or known is None:
            ctx.remember({**live, "kind": kind})
        if digest:
            ctx.applied[(kind, namespace, name)] = digest
        if child["kind"] == "Deployment":
            live_deployments[lst.name] = live
        if child["kind"] == "Service":
            live_services[lst.name] = live
        if action != "unchanged":
            changed = True
            metrics.WRITES.labels(child["kind"], action).inc()
            written.setdefault(action, []).append(kind)
            if child["kind"] == "Deployment":
                # Scaled (or changed): a budget of when it had more replicas may be left.
                had_budget = True
    for done, kinds in written.items():
        await events.post(
            ctx.api, body, "Normal", done.capitalize(), f"{done} {', '.join(kinds)} {lst.name}"
        )
    # A budget left from when the listener had more replicas (the watch knows of it).
    left = mode == "fresh" or ctx.recall("PodDisruptionBudget", namespace, lst.name) is not None
    if lst.disruption_budget is None and had_budget and left:
        gone = await _delete_ours(ctx, namespace, "policy/v1", "PodDisruptionBudget", lst.name)
        if gone:
            await events.post(
                ctx.api, body, "Normal", "Deleted", f"deleted PodDisruptionBudget {lst.name}"
            )
    return changed


LISTENER_KINDS = (
    ("apps/v1", "Deployment"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("policy/v1", "PodDisruptionBudget"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
)


async def _delete_ours(
    ctx: Context, namespace: str, api_version: str, kind: str, name: str
) -> bool:
    obj = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"namespace": namespace, "name": name},
    }
    live = await ctx.api.get(kube.path_of(obj))
    labels = ((live or {}).get("metadata") or {}).get("labels") or {}
    if live is None or labels.get(naming.LABEL_MANAGED_BY) != naming.MANAGED_BY:
        return False
    if await ctx.api.delete(kube.path_of(obj)):
        metrics.WRITES.labels(kind, "deleted").inc()
        return True
    return False


async def _remove_listener(
    ctx: Context, body: Mapping[str, Any], namespace: str, name: str
) -> bool:
    """A listener no MailService maps to any more (its last member moved away): its
    children go."""
    changed = False
    for api_version, kind in LISTENER_KINDS:
        ctx.applied.pop((kind, namespace, name), None)
        if await _delete_ours(ctx, namespace, api_version, kind, name):
            changed = True
            await events.post(ctx.api, body, "Normal", "Deleted", f"deleted {kind} {name}")
    return changed


# Ready=False reasons worth a Warning event: all but the normal way to readiness and a stop.
WARN_REASONS = frozenset(conditions.READY_FALSE) - {
    conditions.Reason.STARTING,
    conditions.Reason.STOPPED,
    conditions.Reason.ADDRESS_PENDING,
}


async def _announce(
    ctx: Context,
    body: Mapping[str, Any],
    built: children.Children,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    new_generation: bool,
) -> None:
    """Events for what changed: the state, a new reason for not being ready, warnings about
    the spec (once per generation)."""
    if old.get("state") != new["state"] and old.get("state") is not None:
        await events.post(
            ctx.api, body, "Normal", new["state"], f"state {old.get('state')} -> {new['state']}"
        )
    old_ready = conditions.get(old.get("conditions") or [], "Ready") or {}
    ready = conditions.get(new["conditions"], "Ready") or {}
    # One Warning per transition into a failure (not per reconciliation): a new Ready reason.
    if ready.get("reason") in WARN_REASONS and old_ready.get("reason") != ready.get("reason"):
        await events.post(ctx.api, body, "Warning", str(ready["reason"]), str(ready["message"]))
    unreachable = conditions.Reason.BACKEND_UNREACHABLE
    if old_ready.get("reason") == unreachable and ready.get("reason") != unreachable:
        await events.post(
            ctx.api, body, "Normal", conditions.Reason.BACKEND_REACHABLE, "the backend answers"
        )
    if new_generation:
        for warning in built.warnings:
            await events.post(ctx.api, body, "Warning", warning.reason, warning.message)


async def ip_address_group(ctx: Context, body: Mapping[str, Any], world: World) -> None:
    key = _key(body)
    async with ctx.locks(("ipg", *key)):
        if key not in world.groups:
            return
        body = world.groups[key]
        with metrics.reconcile("IPAddressGroup") as result:
            meta = body.get("metadata") or {}
            generation = int(meta.get("generation") or 0)
            old = ctx.old_status("IPAddressGroup", body)
            path = kube.path_of(
                {**body, "apiVersion": models.API_VERSION, "kind": "IPAddressGroup"}
            )
            stamp = conditions.now()
            try:
                models.IPAddressGroupSpec.model_validate(body.get("spec") or {})
            except pydantic.ValidationError as exc:
                result[0] = metrics.INVALID
                message = "invalid spec: " + manifests.explain(exc)
                new = status_mod.invalid(generation, message, old, timestamp=stamp)
                new["cidrs"] = []
            else:
                new = status_mod.ip_address_group(
                    key[1], world.group_specs(key[0]), generation, old, timestamp=stamp
                )
            await ctx.write_status("IPAddressGroup", path, key, old, new)


async def probe_backend(ctx: Context, key: Key, world: World) -> bool:
    """Probe one MailService's backend afresh (the periodic probe); True when the answer
    differs from the last one, and the MailService was reconciled to say so."""
    if key not in world.services:
        return False
    body = world.services[key]
    msvc = parse_mailservice(body)
    if msvc is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return False
    msvc = children.with_defaults(msvc, ctx.settings.listener_defaults)
    built = children.build(msvc, world.group_specs(key[0]), settings=ctx.settings)
    before = ctx.probes.get(key)
    error = await ctx.backend_error(key, built, fresh=True)
    after = ctx.probes.get(key)
    if after is None:
        return False  # not probed: stopped
    if before is None and error is None:
        return False  # first probe, and all is well: nothing to say
    if before is not None and (before.target, before.error) == (after.target, error):
        return False
    await mailservice(ctx, body, world)
    return True


async def read_figures(
    ctx: Context, world: World, http: aiohttp.ClientSession
) -> dict[Key, figures.Outcome]:
    """One polling round: every MailService's figures from the listener pods the world
    knows, each MailService read from the pods of the listeners serving it (contract C5)."""
    settings = ctx.settings
    return await poll.round_(
        [pod for pods in world.pods.values() for pod in pods],
        list(world.services),
        port=settings.metrics_port,
        seconds=settings.figures_timeout,
        concurrency=settings.figures_concurrency,
        http=http,
        listeners_of=functools.partial(
            world.listener_deployments,
            defaults=settings.listener_defaults,
            # Once per round: every MailService's claims, for all of them.
            claimants=world.claimants(settings.listener_defaults),
        ),
    )


async def write_figures(
    ctx: Context, key: Key, world: World, outcome: figures.Outcome, observed_at: str
) -> bool:
    """Put a MailService's live figures in its status (status.connections and the
    FiguresAvailable condition), only when a figure or the condition changed: a quiet
    cluster stays write-free. True when it wrote."""
    async with ctx.locks(key):
        if key not in world.services:
            return False
        body = world.services[key]
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return False
        old = ctx.old_status("MailService", body)
        if outcome.pods == 0 and old.get("connections") is None:
            return False  # no pods yet and nothing said before: nothing to say
        new_connections = figures.connections(outcome, observed_at)
        status, reason, message = figures.condition(outcome)
        old_conditions = list(old.get("conditions") or [])
        previous = conditions.get(old_conditions, figures.FIGURES_AVAILABLE)
        generation = int(meta.get("generation") or 0)
        if previous is not None:
            # Not a reason to write: the figures do not depend on the spec's generation.
            generation = int(previous.get("observedGeneration") or generation)
        new_conditions = conditions.set_condition(
            old_conditions,
            figures.FIGURES_AVAILABLE,
            status,
            reason,
            message,
            generation,
        )
        old_connections = old.get("connections")
        banned = bans.message(old_connections, new_connections)
        if banned is not None and ctx.ban_events.allow(key):
            await events.post(ctx.api, body, "Warning", bans.REASON, banned)
        if figures.same_figures(old_connections, new_connections):
            if new_conditions == old_conditions:
                return False
            assert old_connections is not None
            new_connections = dict(old_connections)  # observedAt stays with the figures
        path = kube.path_of({**body, "apiVersion": models.API_VERSION, "kind": "MailService"})
        patch = {"connections": new_connections, "conditions": new_conditions}
        await ctx.api.patch(f"{path}/status", {"status": patch})
        ctx.written[("MailService", *key)] = {**old, **patch}
        metrics.FIGURE_WRITES.inc()
        return True


def world_of(
    services: Mapping[Key, Any],
    groups_: Mapping[Key, Any],
    pods: Mapping[Key, Any] | None = None,
) -> World:
    """A World reading kopf's indices (key -> store of bodies) live: a reconciliation that
    waited for its lock sees what is known when it runs, not when it was asked for."""
    return World(
        services=_IndexView(services),
        groups=_IndexView(groups_),
        pods=_ListView(pods) if pods is not None else {},
    )


class _ListView(Mapping[Key, Sequence[Mapping[str, Any]]]):
    """Every value of an index key (kopf keeps one per object), as a list."""

    def __init__(self, index: Mapping[Key, Any]) -> None:
        self._index = index

    def __getitem__(self, key: Key) -> Sequence[Mapping[str, Any]]:
        return list(self._index[key])

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._index))

    def __len__(self) -> int:
        return len(self._index)


class _IndexView(Mapping[Key, Mapping[str, Any]]):
    def __init__(self, index: Mapping[Key, Any]) -> None:
        self._index = index

    def __getitem__(self, key: Key) -> Mapping[str, Any]:
        for item in self._index[key]:
            return item  # type: ignore[no-any-return]
        raise KeyError(key)

    def __iter__(self) -> Iterator[Key]:
        return iter([k for k in list(self._index) if k in self])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __contains__(self, key: object) -> bool:
        try:
            return any(True for _ in self._index[key])  # type: ignore[index]
        except KeyError:
            return False

    # One pass over the index (Mapping's defaults would look every key up twice more): every
    # reconciliation walks all MailServices for their claims, and each event for contenders.
    def items(self) -> Iterator[tuple[Key, Mapping[str, Any]]]:  # type: ignore[override]
        for key in list(self._index):
            try:
                store = self._index[key]
            except KeyError:
                continue
            for item in store:
                yield key, item
                break

    def values(self) -> Iterator[Mapping[str, Any]]:  # type: ignore[override]
        for _, item in self.items():
            yield item
