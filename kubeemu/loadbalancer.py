"""What a real cluster does with Service objects, modelled for the API emulator (kube.py):

- the API server's allocators: a cluster IP and, for NodePort and LoadBalancer Services, node
  ports (and a health-check node port with externalTrafficPolicy Local) at creation, kept on
  updates for the same port and protocol (kubernetes pkg/registry/core/service/storage,
  `patchAllocatedValues`; https://kubernetes.io/docs/reference/networking/virtual-ips/);
- MetalLB's controller, which gives LoadBalancer Services their addresses in
  `status.loadBalancer.ingress` or leaves them pending, following its published rules
  (https://metallb.io/usage/#ip-address-sharing, "Requesting specific IPs") as its source
  implements them (github.com/metallb/metallb at 7938d3f8):
  * Services with a spec.loadBalancerClass other than MetalLB's own are another
    implementation's (internal/k8s/controllers/service_controller.go,
    filterByLoadBalancerClass: with no --lb-class, only Services without a class);
  * a requested address comes from the `metallb.io/loadBalancerIPs` annotation (or the
    deprecated `metallb.universe.tf/` one) or from spec.loadBalancerIP, and a Service with
    both is refused (controller/service.go, getDesiredLbIPs); it must lie in a pool and match
    the Service's IP family;
  * an address already in use may be shared only when both Services carry the same non-empty
    `metallb.io/allow-shared-ip` key, have the same backend key (their pod selector when
    externalTrafficPolicy is Local, none with Cluster) and use disjoint ports
    (internal/allocator/allocator.go, checkSharing and sharingOK;
    internal/allocator/k8salloc/k8salloc.go, BackendKey);
  * a Service keeps the address it has while the rules still allow it (controller/service.go
    re-assigns the current ingress address first); otherwise it gets the first free or
    shareable address of an auto-assign pool of its family.
  Services that cannot get an address stay pending; `failures` keeps MetalLB's
  AllocationFailed messages.
- a routing check: for every assigned address (and node port) and every port of a Service,
  every pod behind it serves that port. With externalTrafficPolicy Local a load balancer
  sends a port's traffic to every node whose health check passes for the Service, so a pod
  that does not serve one of the Service's ports drops that port's connections on its node
  (https://kubernetes.io/docs/reference/networking/virtual-ips/#external-traffic-policy).
  Pods are those of the Deployments whose template labels match the Service's selector
  (the Deployment controller's stand-in makes them all available), serving the ports of the
  listener configuration in the ConfigMap their `config` volume mounts. Nodes are not
  modelled: every pod is taken to be on a healthy node.

Pure over plain dicts, so the tests can also call it on `mailwarden render` output.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

Obj = dict[str, Any]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ANNOTATION_IPS = "metallb.io/loadBalancerIPs"
ANNOTATION_SHARED = "metallb.io/allow-shared-ip"
DEPRECATED_PREFIX = "metallb.universe.tf/"


def _annotation(meta: Mapping[str, Any], name: str) -> str | None:
    annotations = meta.get("annotations") or {}
    if name in annotations:
        return str(annotations[name])
    deprecated = DEPRECATED_PREFIX + name.split("/", 1)[1]
    return str(annotations[deprecated]) if deprecated in annotations else None


# -- the API server's allocators ------------------------------------------------------------


SERVICE_CIDR_V4 = ipaddress.ip_network("10.96.0.0/16")
SERVICE_CIDR_V6 = ipaddress.ip_network("fd00:10:96::/112")


@dataclasses.dataclass
class ApiServerAllocators:
    service_cidr_v4: IPNetwork = SERVICE_CIDR_V4
    service_cidr_v6: IPNetwork = SERVICE_CIDR_V6
    node_port_range: tuple[int, int] = (30000, 32767)
    _next_ip: dict[int, int] = dataclasses.field(default_factory=lambda: {4: 10, 6: 10})
    _ports: set[int] = dataclasses.field(default_factory=set)
    _port_counter: itertools.count[int] = dataclasses.field(
        default_factory=lambda: itertools.count(30000)
    )

    def admit(self, obj: Obj, old: Obj | None) -> Obj:
        """Defaults a Service as the API server does at create and update."""
        spec = obj.setdefault("spec", {})
        kind = spec.get("type") or "ClusterIP"
        spec["type"] = kind
        old_spec: Mapping[str, Any] = (old or {}).get("spec") or {}
        if old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
            spec["clusterIPs"] = old_spec.get("clusterIPs") or [old_spec["clusterIP"]]
        elif not spec.get("clusterIP"):
            families = spec.get("ipFamilies") or ["IPv4"]
            ips = [self._cluster_ip(6 if f == "IPv6" else 4) for f in families]
            spec["clusterIP"], spec["clusterIPs"] = ips[0], ips
            spec.setdefault("ipFamilies", families)
        kept = {
            (p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
            for p in old_spec.get("ports") or []
        }
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            if kind not in ("NodePort", "LoadBalancer"):
                port.pop("nodePort", None)
                continue
            if not port.get("nodePort"):
                port["nodePort"] = kept.get((port["port"], port["protocol"])) or self._node_port()
        local = spec.get("externalTrafficPolicy") == "Local" and kind == "LoadBalancer"
        if local and not spec.get("healthCheckNodePort"):
            spec["healthCheckNodePort"] = old_spec.get("healthCheckNodePort") or self._node_port()
        elif not local:
            spec.pop("healthCheckNodePort", None)
        return obj

    def _cluster_ip(self, version: int) -> str:
        cidr = self.service_cidr_v6 if version == 6 else self.service_cidr_v4
        n = self._next_ip[version]
        self._next_ip[version] = n + 1
        return str(cidr[n])

    def _node_port(self) -> int:
        while True:
            port = next(self._port_counter)
            if port > self.node_port_range[1]:
                raise RuntimeError("node port range exhausted in the emulator")
            if port not in self._ports:
                self._ports.add(port)
                return port


# -- MetalLB --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pool:
    name: str
    networks: tuple[IPNetwork, ...]
    auto_assign: bool = True

    def __contains__(self, ip: object) -> bool:
        return any(
            isinstance(ip, IPAddress) and ip.version == n.version and ip in n  # type: ignore[operator]
            for n in self.networks
        )

    def addresses(self, version: int) -> Iterable[IPAddress]:
        for network in self.networks:
            if network.version == version:
                yield from network.hosts() if network.num_addresses > 2 else network


def pool(name: str, *cidrs: str, auto_assign: bool = True) -> Pool:
    return Pool(name, tuple(ipaddress.ip_network(c) for c in cidrs), auto_assign)


# The documentation ranges the project's examples and tests use, requested by address, and a
# pool of its own for Services that ask for none.
DEFAULT_POOLS = (
    pool(
        "fixed",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "2001:db8::/32",
        "127.0.0.0/8",
        auto_assign=False,
    ),
    # Large enough for the operator benchmark's thousands of Services without an address.
    pool("auto", "203.0.113.0/24", "10.250.0.0/16", "2001:db8:ffff::/112"),
)


@dataclasses.dataclass(frozen=True)
class _Use:
    key: str  # namespace/name
    sharing: str
    backend: str
    ports: frozenset[tuple[str, int]]


@dataclasses.dataclass
class MetalLB:
    pools: tuple[Pool, ...] = DEFAULT_POOLS
    # MetalLB's --lb-class: None serves Services without spec.loadBalancerClass only.
    load_balancer_class: str | None = None
    # False: no load-balancer implementation at all (every Service stays pending).
    enabled: bool = True
    # Service key -> the reason of its last AllocationFailed.
    failures: dict[str, str] = dataclasses.field(default_factory=dict)
    # Service key -> (resourceVersion, use, addresses, as text) of Services holding theirs.
    _memo: dict[str, tuple[str, _Use, list[IPAddress], list[str]]] = dataclasses.field(
        default_factory=dict, repr=False
    )

    def handles(self, svc: Mapping[str, Any]) -> bool:
        spec = svc.get("spec") or {}
        if spec.get("type") != "LoadBalancer" or not self.enabled:
            return False
        return spec.get("loadBalancerClass") == self.load_balancer_class

    def assign(self, services: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
        """The ingress addresses of every LoadBalancer Service ([] while pending), by
        namespace/name. Services that already have an address go first, in the order given
        (creation order), then the rest."""
        self.failures = {}
        holding, waiting = [], []
        for svc in services:
            if self.handles(svc):
                (holding if _ingress(svc) else waiting).append(svc)
        in_use: dict[IPAddress, list[_Use]] = {}
        result: dict[str, list[str]] = {}
        memo: dict[str, tuple[str, _Use, list[IPAddress], list[str]]] = {}
        for svc in holding + waiting:
            key = _key(svc)
            version = str((svc.get("metadata") or {}).get("resourceVersion") or "")
            last = self._memo.get(key)
            if version and last is not None and last[0] == version:
                # Unchanged since it got its address (the emulator's stored object, by its
                # resourceVersion): it keeps it, as MetalLB keeps a valid assignment.
                _, use, ips, texts = last
                for ip in ips:
                    in_use.setdefault(ip, []).append(use)
                memo[key] = last
                result[key] = texts
                continue
            use = _Use(
                key,
                _annotation(svc["metadata"], ANNOTATION_SHARED) or "",
                _backend(svc),
                _ports(svc),
            )
            ips, error = self._choose(svc, use, in_use)
            texts = [str(i) for i in ips]
            if error is None and version and ips and texts == _ingress(svc):
                memo[key] = (version, use, ips, texts)
            if error is not None:
                self.failures[key] = f'Failed to allocate IP for "{key}": {error}'
                result[key] = []
                continue
            for ip in ips:
                in_use.setdefault(ip, []).append(use)
            result[key] = texts
        self._memo = memo
        return result

    def _choose(
        self, svc: Mapping[str, Any], use: _Use, in_use: Mapping[IPAddress, list[_Use]]
    ) -> tuple[list[IPAddress], str | None]:
        spec = svc.get("spec") or {}
        family = 6 if (spec.get("ipFamilies") or ["IPv4"])[0] == "IPv6" else 4
        requested_text = _annotation(svc["metadata"], ANNOTATION_IPS)
        field = spec.get("loadBalancerIP") or ""
        if requested_text and field:
            return [], f"service can not have both {ANNOTATION_IPS} and svc.Spec.LoadBalancerIP"
        wanted: list[IPAddress] = []
        for text in (requested_text or field).split(","):
            if text.strip():
                try:
                    wanted.append(ipaddress.ip_address(text.strip()))
                except ValueError:
                    return [], f"invalid {ANNOTATION_IPS}: {requested_text or field!r}"
        if wanted:
            if any(ip.version != family for ip in wanted):
                return [], f"requested loadBalancer IP(s) {wanted} does not match the ipFamily"
            for ip in wanted:
                if not any(ip in p for p in self.pools):
                    return [], f'["{ip}"] is not allowed in config'
                if why := _conflict(ip, use, in_use):
                    return [], why
            return wanted, None
        current = [_address(i) for i in _ingress(svc)]
        if (
            current
            and all(any(ip in p for p in self.pools) for ip in current)
            and not any(_conflict(ip, use, in_use) for ip in current)
        ):
            return current, None
        # The first address of an auto-assign pool that is free, or in use and shareable
        # (allocator.go, getIPFromCIDR). Walked as integers: a pool has thousands.
        used = {int(ip) for ip in in_use if ip.version == family}
        for p in self.pools:
            if not p.auto_assign:
                continue
            for network in p.networks:
                if network.version != family:
                    continue
                first, last = int(network.network_address), int(network.broadcast_address)
                if network.num_addresses > 2:
                    first, last = first + 1, last - 1  # hosts() skips network and broadcast
                for n in range(first, last + 1):
                    if n not in used:
                        return [ipaddress.ip_address(n)], None
                    if use.sharing and not _conflict(ipaddress.ip_address(n), use, in_use):
                        return [ipaddress.ip_address(n)], None
        return [], "no available IPs"


@functools.lru_cache(maxsize=65536)
def _address(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def _key(svc: Mapping[str, Any]) -> str:
    meta = svc["metadata"]
    return f"{meta.get('namespace')}/{meta['name']}"


def _ingress(svc: Mapping[str, Any]) -> list[str]:
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [i["ip"] for i in ingress if i.get("ip")]


def _backend(svc: Mapping[str, Any]) -> str:
    spec = svc.get("spec") or {}
    if spec.get("externalTrafficPolicy") == "Local":
        selector = spec.get("selector") or {}
        return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    return ""  # Cluster traffic policy can share regardless of backends


def _ports(svc: Mapping[str, Any]) -> frozenset[tuple[str, int]]:
    return frozenset(
        (p.get("protocol", "TCP"), int(p["port"]))
        for p in (svc.get("spec") or {}).get("ports") or []
    )


def _conflict(ip: IPAddress, use: _Use, in_use: Mapping[IPAddress, list[_Use]]) -> str | None:
    others = [u for u in in_use.get(ip, []) if u.key != use.key]
    if not others:
        return None
    existing = others[0]
    if not existing.sharing:
        return "existing service does not allow sharing"
    if not use.sharing:
        return "new service does not allow sharing"
    if existing.sharing != use.sharing:
        return (
            f'sharing key "{use.sharing}" does not match existing sharing key "{existing.sharing}"'
        )
    if existing.backend != use.backend:
        return (
            f'backend key "{use.backend}" does not match existing sharing key "{existing.backend}"'
        )
    for other in others:
        common = use.ports & other.ports
        if common:
            proto, port = sorted(common)[0]
            return f'port {proto}/{port} is already in use on "{ip}"'
    return None


# -- routing --------------------------------------------------------------------------------


def served_ports(config_text: str) -> set[int]:
    """The ports a listener pod serves, from its listener configuration."""
    data = yaml.safe_load(config_text) or {}
    return {int(ep["port"]) for svc in data.get("services") or [] for ep in svc.get("listen") or []}


def routing_problems(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    """For every Service that clients can reach (an assigned load-balancer address, node
    ports, external IPs), every port it has, and every pod behind it: the pod serves the
    port. Returns what is wrong, for people."""
    objs = list(objects)
    config_maps = {
        (o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in objs
        if o.get("kind") == "ConfigMap"
    }
    deployments = [o for o in objs if o.get("kind") == "Deployment"]
    problems = []
    for svc in (o for o in objs if o.get("kind") == "Service"):
        spec = svc.get("spec") or {}
        ns = svc["metadata"].get("namespace")
        reachable = _ingress(svc) or spec.get("externalIPs") or []
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            reachable = reachable or ["*"]
        if not reachable or not spec.get("selector"):
            continue
        selector = spec["selector"]
        behind = [
            d
            for d in deployments
            if d["metadata"].get("namespace") == ns
            and all(
                (d["spec"]["template"]["metadata"].get("labels") or {}).get(k) == v
                for k, v in selector.items()
            )
        ]
        for dep in behind:
            replicas = int(dep["spec"].get("replicas", 1))
            if replicas == 0:
                continue
            volumes = dep["spec"]["template"]["spec"].get("volumes") or []
            names = [v["configMap"]["name"] for v in volumes if "configMap" in v]
            served: set[int] = set()
            for name in names:
                cm = config_maps.get((ns, name))
                if cm is None:
                    problems.append(f"{dep['metadata']['name']}: ConfigMap {name} missing")
                    continue
                for text in (cm.get("data") or {}).values():
                    served |= served_ports(text)
            for port in spec.get("ports") or []:
                target = int(port.get("targetPort") or port["port"])
                if target not in served:
                    where = ",".join(reachable)
                    problems.append(
                        f"Service {ns}/{svc['metadata']['name']} ({where}) port {port['port']}: "
                        f"{replicas} pod(s) of Deployment {dep['metadata']['name']} do not "
                        f"serve {target}"
                    )
    return problems
