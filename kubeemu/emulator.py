"""A Kubernetes API emulator for the operator tests: kmock 0.8 plus what a kopf operator
relies on and plain kmock lacks.

kmock brings HTTP, discovery, routing, storage, fetch and streaming. This subclass adds:
- metadata stamping: uid, resourceVersion (one counter, as etcd's revision), generation
  (bumped when anything but metadata and status changes), creationTimestamp, generateName;
- PATCH as the API server does it: JSON patch with `test` (422 when a test fails, which kopf
  expects), merge and strategic-merge patches (both as RFC 7386 merge: lists are replaced, a
  real server merges some lists by key), a status subresource that only changes status while
  the main resource ignores status, no event and no new resourceVersion for a no-op;
- PUT (replace) with optimistic concurrency (409 on a stale resourceVersion);
- DELETE honouring finalizers (deletionTimestamp first, gone when the last one is removed);
- watch that follows the event bus *before* taking its snapshot and honours
  `?resourceVersion=` by replaying a bounded event log, so no change between a list and its
  watch is lost;
- equality-based label selectors (`k=v`, `k!=v`, `k`, `!k`) on list and watch;
- paginated lists (`limit` and `continue`), and the field selector `metadata.name=`;
- resource quantities of pods and Deployments stored in canonical form, as the API server
  does (`1024Mi` -> `1Gi`; kubeemu/quantities.py);
- requests dropped from kmock's history once served (its router scans the whole history on
  every request, which made a GET 90x slower after 1,000 requests);
- a stand-in for the Deployment controller (status follows spec at once, or on demand);
- optionally, real listener pods for listener Deployments (kubeemu/pods.py);
- a count of every request served, by verb and resource (`served`), for tests that assert
  what the operator did not do;
- injected server errors (`faults`), to see retries.

- server-side printing (`kubectl get` tables) of the project's custom resources, from their
  CRDs' printer columns (kubeemu/tables.py);
- admission for the project's custom resources: the CRDs from deploy/crds default and
  validate every write, CEL rules included (kubeemu/crdcheck.py, with its limits);
- Services as a cluster with MetalLB treats them (kubeemu/loadbalancer.py): cluster
  IPs and node ports allocated at admission, load-balancer addresses assigned (or left
  pending) by MetalLB's sharing rules after every Service write.

What it does not do, and the tests that would need it say so: garbage collection of
dependents, schema validation of built-in kinds, admission webhooks and policies (Pod
Security), server-side apply, set-based selectors and field selectors, pods, and any real
controller but these stand-ins.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import itertools
import json
import pathlib
import secrets
import threading
import uuid
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import dicts as kmock_dicts
from kmock._internal import enums, rendering
from kmock._internal import parsing as kmock_parsing

from kubeemu import crdcheck, loadbalancer, quantities, tables

ROOT = pathlib.Path(__file__).resolve().parents[1]
STATUS_SUBRESOURCE = {
    ("mailwarden.io", "mailservices"),
    ("mailwarden.io", "ipaddressgroups"),
    ("apps", "deployments"),
    ("", "services"),
}
LOG_LIMIT = 20_000


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=status, reason=reason, message=message, details={"emulated": True}
    )


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.strip()) != v.strip().lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _name_matches(request: rendering.Request, meta: dict[str, Any]) -> bool:
    """The one field selector emulated: `metadata.name=NAME`, which RBAC requires of a list or
    watch limited by resourceNames
    (https://kubernetes.io/docs/reference/access-authn-authz/rbac/#referring-to-resources)."""
    for term in filter(None, request.params.get("fieldSelector", "").split(",")):
        field, _, value = term.partition("=")
        if field == "metadata.name" and meta.get("name") != value.lstrip("="):
            return False
    return True


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    deployment_controller: bool = True
    # (method, plural) -> how many of the next such requests fail with 500.
    faults: dict[tuple[str, str], int] = attrs.field(factory=dict)
    # plural -> CustomResourceDefinition: writes are defaulted and validated (schema and CEL)
    # as an API server's admission would.
    crds: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    # What was asked of the API, as RBAC sees it: (User-Agent, verb, group, resource with
    # /subresource, namespace or None), and the owners children were written with
    # blockOwnerDeletion for: (User-Agent, apiVersion, kind). Sets, so bounded by what the
    # operator can do, not by how long it runs. The RBAC test reads them.
    audit: set[tuple[str, str, str, str, str | None]] = attrs.field(factory=set)
    # Services as a cluster treats them (kubeemu/loadbalancer.py): the API server's
    # cluster-IP and node-port allocators, and MetalLB assigning load-balancer addresses.
    service_allocators: loadbalancer.ApiServerAllocators = attrs.field(
        factory=loadbalancer.ApiServerAllocators
    )
    metallb: loadbalancer.MetalLB = attrs.field(factory=loadbalancer.MetalLB)
    blocking_owners: set[tuple[str, str, str]] = attrs.field(factory=set)
    # Admission stand-ins (kubeemu/admission.py): called with (plural, namespace,
    # object, old object or None) on every create and update; they raise
    # kmock.KubernetesError to deny.
    policies: list[Any] = attrs.field(factory=list)
    # How many list pages were served (a paginated list of N items takes N/limit), how many
    # objects lists and watches sent by (client, resource) — the client being the User-Agent's
    # product — and the label selector and page size of each list and watch by
    # (client, verb, resource).
    list_pages: int = 0
    items_served: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)
    queries: set[tuple[str, str, str, str, str]] = attrs.field(factory=set)
    # (client, verb, resource, fieldSelector) of lists and watches, and the bearer tokens
    # requests carried.
    field_queries: set[tuple[str, str, str, str]] = attrs.field(factory=set)
    tokens: set[str] = attrs.field(factory=set)
    # (verb, resource[/subresource]) -> requests served, from anyone.
    served: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)
    # The pod stand-in (kubeemu/pods.py), when the test wants real listener pods.
    pods: Any = None
    _rv: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    # resource -> namespace -> keys of its objects (as an ordered set): a list reads one
    # resource in one namespace, not every object of every kind.
    _by_resource: dict[Any, dict[Any, dict[Any, None]]] = attrs.field(factory=dict, init=False)
    _log: collections.deque[tuple[int, Any, dict[str, Any]]] = attrs.field(
        factory=lambda: collections.deque(maxlen=LOG_LIMIT), init=False
    )

    # -- plumbing ---------------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.resource.plural is not None:
            self._record(request)  # resources only: discovery is open to everyone
        try:
            if request.resource is not None:
                fault = (str(request.method.value), str(request.resource.plural))
                if self.faults.get(fault, 0) > 0:
                    self.faults[fault] -= 1
                    return await self._render_error(_error(500, "InternalError", "injected"))
            if request.resource is not None and request.subresource not in (None, "status"):
                raise _error(404, "NotFound", f"subresource {request.subresource} not emulated")
            if request.resource is not None and (
                request.action in (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)
                or (request.method == enums.method.PUT and request.name)
            ):
                try:
                    async with self._lock:
                        obj, status = await self._mutate(request)
                except kmock.KubernetesError as exc:
                    return await self._render_error(exc)
                return aiohttp.web.json_response(obj, status=status)
            table = await self._as_table(request)
            if table is not None:
                return table
            # kmock's own _handle would mutate again; go straight to its router.
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        finally:
            # Served requests are forgotten: kmock's router scans them all on every request.
            self._requests[:] = [r for r in self._requests if r is not request]

    async def _as_table(self, request: rendering.Request) -> aiohttp.web.StreamResponse | None:
        """`kubectl get` of a custom resource: its printer columns (kubeemu/tables.py)."""
        res = request.resource
        if (
            res is None
            or request.method != enums.method.GET
            or request.params.get("watch") in ("true", "1")
            or not tables.wants_table(request.headers.get("Accept", ""))
            or str(res.plural) not in self.crds
        ):
            return None
        async with self._lock:
            if request.name is not None:
                obj = self._live(self._key(request))
                if obj is None:
                    return await self._render_error(
                        _error(404, "NotFound", f"{res.plural} {request.name!r} not found")
                    )
                objects = [obj]
            else:
                objects = self._matching(request)
            rv = str(self._last_rv)
        return aiohttp.web.json_response(tables.table(self.crds[str(res.plural)], objects, rv))

    def _record(self, request: rendering.Request) -> None:
        agent = request.headers.get("User-Agent", "")
        method = request.method
        if method == enums.method.GET:
            if request.action == enums.action.WATCH or request.params.get("watch") in ("true", "1"):
                verb = "watch"
            else:
                verb = "get" if request.name else "list"
        elif method == enums.method.POST:
            verb = "create"
        elif method == enums.method.PUT:
            verb = "update"
        elif method == enums.method.PATCH:
            verb = "patch"
        elif method == enums.method.DELETE:
            verb = "delete" if request.name else "deletecollection"
        else:
            verb = str(method.value).lower()
        res = request.resource
        resource = str(res.plural) + (f"/{request.subresource}" if request.subresource else "")
        self.audit.add((agent, verb, str(res.group or ""), resource, request.namespace))
        self.served[(verb, resource)] += 1
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            self.tokens.add(auth.removeprefix("Bearer "))
        if verb in ("list", "watch"):
            params = request.params
            self.field_queries.add(
                (agent.split("/")[0], verb, resource, str(params.get("fieldSelector", "")))
            )
            self.queries.add(
                (
                    agent.split("/")[0],
                    verb,
                    resource,
                    str(params.get("labelSelector", "")),
                    str(params.get("limit", "")),
                )
            )
        data = request.data if isinstance(request.data, dict) else {}
        for ref in (data.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("blockOwnerDeletion"):
                self.blocking_owners.add((agent, str(ref.get("apiVersion")), str(ref.get("kind"))))

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    async def _publish(self, resource: Any, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self._log.append((int(obj["metadata"]["resourceVersion"]), resource, event))
        await self._buses[resource].put(event)

    def _key(self, request: rendering.Request, name: str | None = None) -> Any:
        return (request.resource, request.namespace, name or request.name)

    def _live(self, key: Any) -> dict[str, Any] | None:
        if key not in self._objects or self._objects[key].deleted:
            return None
        return copy.deepcopy(self._objects[key].raw)

    def _store(self, key: Any, obj: dict[str, Any]) -> None:
        if key not in self._objects:
            self._objects[key] = obj
            self._by_resource.setdefault(key[0], {}).setdefault(key[1], {})[key] = None
        else:
            self._objects[key].history.append(obj)

    def _keys_of(self, resource: Any, namespace: str | None) -> list[Any]:
        """The keys of one resource's objects (in one namespace, or all), from an index of
        what _store added (rebuilt if objects came in some other way, such as a test setting
        kmock's objects directly)."""
        indexed = sum(len(k) for by_ns in self._by_resource.values() for k in by_ns.values())
        if indexed != len(self._objects):
            self._by_resource = {}
            for key in self._objects:
                self._by_resource.setdefault(key[0], {}).setdefault(key[1], {})[key] = None
        by_ns = self._by_resource.get(resource, {})
        if namespace is not None:
            return list(by_ns.get(namespace, ()))
        return [key for keys in by_ns.values() for key in keys]

    # -- writes -----------------------------------------------------------------------------

    async def _mutate(self, request: rendering.Request) -> tuple[dict[str, Any], int]:
        res = request.resource
        has_status = (res.group or "", res.plural) in STATUS_SUBRESOURCE
        if request.action == enums.action.CREATE:
            return await self._create(request, has_status), 201
        old = self._live(self._key(request))
        if old is None:
            raise _error(404, "NotFound", f"{res.plural} {request.name!r} not found")
        if request.action == enums.action.DELETE:
            return await self._delete(request, old), 200
        if request.method == enums.method.PUT:
            new = copy.deepcopy(request.data)
            sent_rv = new.get("metadata", {}).get("resourceVersion")
            if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise _error(409, "Conflict", "the object has been modified")
        else:
            new = self._patched(request, old)
        return await self._update(request, old, new, has_status), 200

    async def _create(self, request: rendering.Request, has_status: bool) -> dict[str, Any]:
        obj = copy.deepcopy(request.data or {})
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise _error(422, "Invalid", "metadata.name: Required value")
        if request.namespace is not None:
            meta["namespace"] = request.namespace
        key = self._key(request, meta["name"])
        if self._live(key) is not None:
            raise _error(409, "AlreadyExists", f"{meta['name']!r} already exists")
        meta.update(
            uid=str(uuid.uuid4()),
            generation=1,
            creationTimestamp=_now(),
            resourceVersion=self._next_rv(),
        )
        meta.pop("deletionTimestamp", None)
        if has_status:
            obj.pop("status", None)
        obj = self._admit(request, obj, None)
        if _is_services(request):
            obj = self.service_allocators.admit(obj, None)
        self._store(key, obj)
        await self._publish(request.resource, "ADDED", obj)
        await self._play_controllers(request, key)
        return obj

    def _patched(self, request: rendering.Request, old: dict[str, Any]) -> dict[str, Any]:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype == "application/json-patch+json":
            try:
                return jsonpatch.apply_patch(old, request.data, in_place=False)  # type: ignore[no-any-return]
            except jsonpatch.JsonPatchTestFailed as exc:
                raise _error(422, "Invalid", f"the test in the JSON patch failed: {exc}") from None
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise _error(422, "Invalid", str(exc)) from None
        if ctype == "application/apply-patch+yaml":
            raise _error(415, "UnsupportedMediaType", "server-side apply is not emulated")
        data = request.data
        if not isinstance(data, dict):
            raise _error(400, "BadRequest", "a merge patch must be a JSON object")
        sent_rv = data.get("metadata", {}).get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", "the object has been modified")
        return dict(kmock_dicts.merge_patch_dict(old, data))

    async def _update(
        self,
        request: rendering.Request,
        old: dict[str, Any],
        new: dict[str, Any],
        has_status: bool,
    ) -> dict[str, Any]:
        new = json.loads(json.dumps(new))  # plain dicts and lists all the way down
        if request.subresource == "status":
            new = {**old, "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif has_status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = old["status"]
        new = self._admit(request, new, old)
        if _is_services(request) and request.subresource is None:
            new = self.service_allocators.admit(new, old)
        meta = new.setdefault("metadata", {})
        for field in (
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "deletionTimestamp",
            "generation",
            "resourceVersion",
        ):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        strip = ("metadata", "status")
        if {k: v for k, v in new.items() if k not in strip} != {
            k: v for k, v in old.items() if k not in strip
        }:
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if new == old:
            return old  # a no-op: no new resourceVersion, no event
        meta["resourceVersion"] = self._next_rv()
        key = self._key(request)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._objects[key].delete()
            meta["resourceVersion"] = self._next_rv()
            await self._publish(request.resource, "DELETED", new)
            return new
        self._store(key, new)
        await self._publish(request.resource, "MODIFIED", new)
        if request.subresource is None:
            await self._play_controllers(request, key)
            was = (old.get("spec") or {}).get("type") == "LoadBalancer"
            if _is_services(request) and was and not self._is_load_balancer(key):
                await self.assign_load_balancers()  # its address goes back to the pool
        return new

    async def _delete(self, request: rendering.Request, old: dict[str, Any]) -> dict[str, Any]:
        key = self._key(request)
        meta = old["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = self._next_rv()
                self._store(key, old)
                await self._publish(request.resource, "MODIFIED", old)
            return old
        self._objects[key].delete()
        meta["resourceVersion"] = self._next_rv()
        await self._publish(request.resource, "DELETED", old)
        if self.pods is not None:
            await self.pods.deleted(str(request.resource.plural), key[1], key[2])
        if _is_services(request) and (old.get("spec") or {}).get("type") == "LoadBalancer":
            await self.assign_load_balancers()
        return old

    def _admit(
        self, request: rendering.Request, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        for policy in self.policies:
            policy(str(request.resource.plural), request.namespace, obj, old)
        try:
            quantities.canonicalise(str(request.resource.plural), obj)
        except quantities.QuantityError as exc:
            raise _error(422, "Invalid", str(exc)) from None
        crd = self.crds.get(str(request.resource.plural))
        if crd is None:
            return obj
        stored, errors = crdcheck.validate(crd, obj, old)
        if errors:
            raise _error(422, "Invalid", "; ".join(errors))
        return stored  # type: ignore[no-any-return]

    # -- the Deployment controller stand-in -------------------------------------------------

    async def _play_controllers(self, request: rendering.Request, key: Any) -> None:
        res = request.resource
        if (res.group, res.plural) == ("apps", "deployments") and self.deployment_controller:
            await self._roll_out(key)
        if _is_services(request) and self._is_load_balancer(key):
            await self.assign_load_balancers()
        if self.pods is not None:
            await self.pods.changed(str(res.plural), key)

    async def _put_object(self, key: Any, obj: dict[str, Any], kind: str) -> None:
        """Store an object a controller stand-in made or changed (the lock held)."""
        meta = obj.setdefault("metadata", {})
        if kind == "ADDED":
            meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=_now())
        meta["resourceVersion"] = self._next_rv()
        self._store(key, obj)
        await self._publish(key[0], kind, obj)

    async def _remove_object(self, key: Any) -> None:
        obj = self._live(key)
        if obj is None:
            return
        self._objects[key].delete()
        obj["metadata"]["resourceVersion"] = self._next_rv()
        await self._publish(key[0], "DELETED", obj)

    # -- MetalLB's controller (kubeemu/loadbalancer.py) -------------------------------

    def _load_balancers(self) -> list[tuple[Any, dict[str, Any]]]:
        """Every live LoadBalancer Service (key, stored body: not to be changed), in creation
        order."""
        # From the index by resource, not a scan of every object of every kind: the operator
        # benchmark keeps 30,000 unrelated objects, and this runs after every Service write.
        out = []
        for key in self._keys_of(kmock.resource("v1/services"), None):
            obj = self._objects[key]
            if not obj.deleted and (obj.raw.get("spec") or {}).get("type") == "LoadBalancer":
                out.append((key, obj.raw))
        return out

    def services(self) -> list[dict[str, Any]]:
        """Every live LoadBalancer Service, copied, in creation order."""
        return [copy.deepcopy(raw) for _, raw in self._load_balancers()]

    async def assign_load_balancers(self) -> None:
        """Give every LoadBalancer Service the addresses MetalLB would, or none (pending).
        Called with the emulator's lock held, after a write of a LoadBalancer Service."""
        balancers = self._load_balancers()
        assigned = self.metallb.assign([raw for _, raw in balancers])
        for key, stored in balancers:
            name = f"{key[1]}/{key[2]}"
            ips = assigned.get(name, [])
            status = {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in ips]}}
            if not ips:
                status = {"loadBalancer": {}}
            if stored.get("status") == status:
                continue  # compared before copying: most are unchanged
            raw = copy.deepcopy(stored)
            raw["status"] = status
            raw["metadata"]["resourceVersion"] = self._next_rv()
            self._store(key, raw)
            await self._publish(key[0], "MODIFIED", raw)

    def _is_load_balancer(self, key: Any) -> bool:
        live = self._live(key)
        return live is not None and (live.get("spec") or {}).get("type") == "LoadBalancer"

    async def reassign_load_balancers(self) -> None:
        """Run MetalLB again (after a test changed its pools or turned it on)."""
        async with self._lock:
            await self.assign_load_balancers()

    async def _roll_out(self, key: Any) -> None:
        obj = self._live(key)
        if obj is None:
            return
        n = int(obj.get("spec", {}).get("replicas", 1))
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": n,
            "availableReplicas": n,
        }
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._store(key, obj)
        await self._publish(key[0], "MODIFIED", obj)

    async def finish_rollouts(self) -> None:
        """Complete every Deployment's rollout now (when `deployment_controller` is off)."""
        async with self._lock:
            for key in list(self._objects):
                if (key[0].group, key[0].plural) == ("apps", "deployments"):
                    await self._roll_out(key)

    # -- reads ------------------------------------------------------------------------------

    def _matching(self, request: rendering.Request) -> list[dict[str, Any]]:
        selector = request.params.get("labelSelector", "")
        out = []
        for key in self._keys_of(request.resource, request.namespace):
            res, ns, _ = key
            obj = self._objects[key]
            if res != request.resource or obj.deleted:
                continue
            if request.namespace is not None and ns != request.namespace:
                continue
            raw = obj.raw
            if selector and not _selector_matches(selector, raw["metadata"].get("labels") or {}):
                continue
            if not _name_matches(request, raw["metadata"]):
                continue
            out.append(copy.deepcopy(raw))
        return out

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        """Discovery of a group version. kmock gives a subresource (`mailservices/status`) the
        short names and categories of its resource, so kubectl warns that `msvc` is ambiguous
        and `kubectl get mailwarden` asks for `mailservices/status` and fails; the API server
        lists a subresource with neither (the APIResourceList of `kubectl get --raw
        /apis/apps/v1`: `deployments/status` has no shortNames, no categories)."""
        payload: Any = await super()._serve_version(request)
        for entry in payload.get("resources", []):
            if "/" in entry["name"]:
                entry["shortNames"] = []
                entry["categories"] = []
                entry["singularName"] = ""
                entry["verbs"] = ["get", "patch", "update"]
        return payload  # type: ignore[no-any-return]

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        # kmock finds a named object by scanning every object of every kind; a GET then costs
        # as much as a list, which made the emulator the bottleneck at a thousand objects.
        if request.resource is None or request.name is None:
            return await super()._serve_fetch(request)
        async with self._lock:
            key = self._key(request)
            if key not in self._objects or self._objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            return self._objects[key].raw

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        # Pages as the API server serves them (`limit`, then `continue` until it is empty:
        # https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks).
        # The token here is the offset and the list's resourceVersion; a real one is opaque.
        limit = int(request.params.get("limit") or 0)
        token = request.params.get("continue") or ""
        async with self._lock:
            items = self._matching(request)
            rv = str(self._last_rv)
        meta: dict[str, Any] = {"resourceVersion": rv}
        if token:
            offset_text, _, rv = token.partition(":")
            meta["resourceVersion"] = rv
            items = items[int(offset_text) :]
            offset = int(offset_text)
        else:
            offset = 0
        if limit and len(items) > limit:
            items = items[:limit]
            meta["continue"] = f"{offset + limit}:{meta['resourceVersion']}"
        self.list_pages += 1
        agent = request.headers.get("User-Agent", "")
        self.items_served[(agent.split("/")[0], str(request.resource.plural))] += len(items)
        return {"apiVersion": "v1", "kind": "List", "metadata": meta, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> Any:
        yield b""
        since = request.params.get("resourceVersion", "")
        selector = request.params.get("labelSelector", "")
        bus = self._buses[request.resource]
        async with self._lock:
            # Follow the bus first, then take the snapshot: nothing falls between the two.
            mark = await bus.mark()
            if since and since not in ("0", "..."):
                backlog = [
                    e for rv, res, e in self._log if res == request.resource and rv > int(since)
                ]
            else:
                backlog = [{"type": "ADDED", "object": o} for o in self._matching(request)]
            sent = max(
                [int(e["object"]["metadata"]["resourceVersion"]) for e in backlog],
                default=int(since) if since.isdigit() else self._last_rv,
            )
        served = (request.headers.get("User-Agent", "").split("/")[0], str(request.resource.plural))
        try:
            for event in backlog:
                if self._wanted(request, selector, event):
                    self.items_served[served] += 1
                    yield event
            async for event in bus.stream(since=mark):
                if int(event["object"]["metadata"]["resourceVersion"]) <= sent:
                    continue
                if self._wanted(request, selector, event):
                    self.items_served[served] += 1
                    yield event
        finally:
            await bus.unmark(mark)

    @staticmethod
    def _wanted(request: rendering.Request, selector: str, event: dict[str, Any]) -> bool:
        meta = event["object"].get("metadata", {})
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        if not _name_matches(request, meta):
            return False
        return not selector or _selector_matches(selector, meta.get("labels") or {})

    # -- test helpers -----------------------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        return self._live(key)

    async def seed(self, resource: str, objs: list[dict[str, Any]]) -> None:
        """Store many objects at once (stamped as a create would), without events or
        controllers: a cluster that already holds them when a test starts."""
        res = kmock.resource(resource)
        async with self._lock:
            for obj in objs:
                obj = copy.deepcopy(obj)
                meta = obj.setdefault("metadata", {})
                meta.update(
                    uid=str(uuid.uuid4()),
                    generation=1,
                    creationTimestamp=_now(),
                    resourceVersion=self._next_rv(),
                )
                self._store((res, meta.get("namespace"), meta["name"]), obj)


RESOURCES: dict[str, kmock.ResourceInfo] = {
    "mailwarden.io/v1alpha1/mailservices": kmock.ResourceInfo(
        kind="MailService",
        singular="mailservice",
        namespaced=True,
        shortnames={"msvc"},
        categories={"mailwarden"},
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "mailwarden.io/v1alpha1/ipaddressgroups": kmock.ResourceInfo(
        kind="IPAddressGroup",
        singular="ipaddressgroup",
        namespaced=True,
        shortnames={"ipg"},
        categories={"mailwarden"},
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "apps/v1/deployments": kmock.ResourceInfo(
        kind="Deployment",
        singular="deployment",
        namespaced=True,
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "v1/configmaps": kmock.ResourceInfo(
        kind="ConfigMap",
        singular="configmap",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "v1/services": kmock.ResourceInfo(
        kind="Service",
        singular="service",
        namespaced=True,
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "v1/pods": kmock.ResourceInfo(
        kind="Pod",
        singular="pod",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "v1/events": kmock.ResourceInfo(
        kind="Event",
        singular="event",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "v1/namespaces": kmock.ResourceInfo(
        kind="Namespace",
        singular="namespace",
        namespaced=False,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "v1/serviceaccounts": kmock.ResourceInfo(
        kind="ServiceAccount",
        singular="serviceaccount",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "rbac.authorization.k8s.io/v1/roles": kmock.ResourceInfo(
        kind="Role",
        singular="role",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "rbac.authorization.k8s.io/v1/rolebindings": kmock.ResourceInfo(
        kind="RoleBinding",
        singular="rolebinding",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "networking.k8s.io/v1/networkpolicies": kmock.ResourceInfo(
        kind="NetworkPolicy",
        singular="networkpolicy",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "policy/v1/poddisruptionbudgets": kmock.ResourceInfo(
        kind="PodDisruptionBudget",
        singular="poddisruptionbudget",
        namespaced=True,
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    # kopf lists and watches CRDs to notice resources appearing (none are stored here).
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition",
        singular="customresourcedefinition",
        namespaced=False,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
}


def _parse_path(path: str) -> kmock_parsing.ParsedPath:
    """kmock 0.8 reads /api/v1/namespaces[/NAME] as the prefix of a namespaced path and fails;
    the API server serves the Namespace objects there (kopf lists them when it watches only
    some namespaces)."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if len(parts) in (3, 4) and parts[0] == "api" and parts[2] == "namespaces":
        name = parts[3] if len(parts) == 4 else None
        return kmock_parsing.ParsedPath("", parts[1], "namespaces", None, name, None)
    return _kmock_parse_path(path)


_kmock_parse_path = kmock_parsing.parse_path
kmock_parsing.parse_path = _parse_path


def _is_services(request: rendering.Request) -> bool:
    res = request.resource
    return res is not None and res.plural == "services" and not res.group


def load_crds() -> dict[str, dict[str, Any]]:
    """The project's CRDs by plural (none yet in a checkout without deploy/crds)."""
    out = {}
    for path in sorted((ROOT / "deploy" / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                out[doc["spec"]["names"]["plural"]] = doc
    return out


class EmulatorThread:
    """The emulator served over real HTTP on 127.0.0.1 from its own thread and event loop, so
    that blocking test code and the operator's own loop can both talk to it."""

    def __init__(
        self,
        *,
        deployment_controller: bool = True,
        emulator_class: type[Emulator] = Emulator,
        pods: bool = False,
    ) -> None:
        """pods: run a real listener process for each pod of a listener Deployment."""
        self._pods = pods
        self.emulator: Emulator | None = None
        self._emulator_class = emulator_class
        self.url = ""
        self._deployment_controller = deployment_controller
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)

    def start(self) -> EmulatorThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Kubernetes emulator did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, coro_fn: Any, *args: Any) -> Any:
        """Run a coroutine function on the emulator's loop and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), self._loop).result(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = self._emulator_class(
            deployment_controller=self._deployment_controller, crds=load_crds()
        )
        for key, info in RESOURCES.items():
            emulator.resources[key] = info
        if self._pods:
            from kubeemu import pods

            emulator.pods = pods.PodStandIn(emulator)
        async with emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                if emulator.pods is not None:
                    emulator.pods.stop()
