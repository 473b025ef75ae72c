"""The operator at scale: `mailwarden operator` (kopf, the real handlers) as a subprocess,
pointed by a kubeconfig at the test suite's Kubernetes API emulator served over HTTP on
loopback. It creates many MailServices across namespaces using nested IPAddressGroups, then
measures:

- steady state: from the first create to every MailService Ready (its Deployment's rollout
  done: the emulator plays the Deployment controller) with all its children present
  (ConfigMap, Deployment, Service, NetworkPolicy);
- fan-out: from a change to one widely used group to every affected ConfigMap and
  NetworkPolicy carrying the new address;
- API requests the emulator received from the operator, by verb and resource, in each phase,
  per reconciliation (the operator's own reconcile counter, from its metrics port);
- quiet: after each phase, how long until the operator stops sending requests, and the rate
  in a window after that (a self-triggered loop would keep it up);
- operator RSS from /proc (current and peak);
- live figures: one listener pod per MailService (Pod objects in the emulator whose
  addresses are served by a tiny fake `GET /status` in this process, not real listeners),
  then a window with the figures constant (the operator must poll without writing) and one
  with every pod's figures changing on every poll (a write per MailService per round):
  /status requests, API requests, status writes and operator CPU, per minute.

- start-up: from spawning the operator to its liveness endpoint answering, and its RSS then,
  optionally with thousands of unrelated ConfigMaps, Services and Deployments already in the
  cluster (`--unrelated N`: N of each kind, without the operator's labels).

    python -m bench.operator_scale            # 1,000 MailServices, 20 namespaces, 50 groups
    python -m bench.operator_scale --smoke    # 20 MailServices, 2 namespaces, 3 groups
    python -m bench.operator_scale --unrelated 10000 --baseline ../other-checkout
        # also run the operator of another checkout (same venv), one after the other on the
        # same machine, and compare: CPU per reconciliation, requests, RSS, start-up
    python -m bench.operator_scale --profile prof.txt   # py-spy samples of the operator
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp.web
import httpx
import kmock
import yaml
from kmock._internal import rendering

from kubeemu.emulator import Emulator, EmulatorThread
from mailwarden.operator import models, naming

MW = models.API_VERSION
BENCH_AGENT = "mailwarden-bench"
CHILD_KINDS = ("ConfigMap", "Deployment", "Service", "NetworkPolicy")
KIND_OF_PLURAL = {
    "configmaps": "ConfigMap",
    "deployments": "Deployment",
    "services": "Service",
    "networkpolicies": "NetworkPolicy",
    "mailservices": "MailService",
}
# The address the fan-out adds to the widely used group: in no other group, never collapsed.
NEW_CIDR = "203.0.113.0/24"

TARGETS = {"steady_s": 60.0, "fanout_s": 5.0, "rss_mib": 250.0}


@dataclasses.dataclass(frozen=True)
class Scale:
    services: int
    namespaces: int
    groups: int
    # How many MailServices of the first namespace depend on its "shared" group.
    shared_users: int
    timeout: float
    # Live figures: the operator's polling period and how long each figures window lasts.
    figures_period: float = 15.0
    figures_window: float = 60.0
    unrelated: int = 0  # unrelated ConfigMaps, Services and Deployments, each


FULL = Scale(services=1000, namespaces=20, groups=50, shared_users=500, timeout=240.0)
SMOKE = Scale(
    services=20,
    namespaces=2,
    groups=3,
    shared_users=10,
    timeout=60.0,
    figures_period=2.0,
    figures_window=8.0,
)
# The fake listener pods' addresses: 127.N.x.y, on the listeners' metrics port, N chosen per
# run (two runs on one machine must not meet).
LISTENER_METRICS_PORT = 9090


# -- the emulator, counting what it serves -------------------------------------------------


class CountingEmulator(Emulator):
    """The test emulator, counting every request it serves by client, verb and resource."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.stamps: list[float] = []  # when each operator request arrived
        self.count_lock = threading.Lock()

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        agent = request.headers.get("User-Agent", "")
        if not agent.startswith(BENCH_AGENT) and request.resource is not None:
            verb = _verb(request)
            with self.count_lock:
                plural = str(request.resource.plural)
                self.counts[("operator", verb, plural)] += 1
                # The live figures list listener pods every round by design (measured in
                # their own windows); "quiet" is about requests the operator feeds itself.
                if (verb, plural) != ("list", "pods"):
                    self.stamps.append(time.monotonic())
        return await super()._handle(request)


def _verb(request: rendering.Request) -> str:
    method = str(request.method.value).upper()
    if method == "GET":
        if request.params.get("watch") in ("true", "1", "True"):
            return "watch"
        return "get" if request.name else "list"
    verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(
        method, method.lower()
    )
    return f"{verb}/status" if request.subresource == "status" else verb


# -- the world to create -------------------------------------------------------------------


def plan(scale: Scale) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Groups, MailServices, and the MailServices (ns/name) the shared group reaches.

    Groups are namespaced and only used within their namespace, so the first namespace is
    the big one: `shared_users` MailServices there depend on its group `shared`, half of them
    directly and half through groups nesting it. The other namespaces share the rest evenly,
    each with a small nested pair of groups.
    """
    namespaces = [f"scale-{i:02d}" for i in range(scale.namespaces)]
    big = namespaces[0]
    groups: list[dict[str, Any]] = []
    big_groups = max(2, scale.groups // 5)

    def group(ns: str, name: str, items: list[dict[str, str]]) -> None:
        meta = {"name": name, "namespace": ns}
        groups.append({"apiVersion": MW, "kind": "IPAddressGroup", "metadata": meta,
                       "spec": {"items": items}})  # fmt: skip

    group(big, "shared", [{"network": "10.0.0.0/16"}, {"host": "192.0.2.1"}])
    nesting = [f"office-{k}" for k in range(big_groups - 1)]
    for k, name in enumerate(nesting):
        group(big, name, [{"group": "shared"}, {"network": f"10.{1 + k}.0.0/16"}])
    others = namespaces[1:]
    for i in range(scale.groups - big_groups):
        ns = others[i % len(others)] if others else big
        base = i // max(1, len(others))
        items: list[dict[str, str]] = [{"network": f"172.{16 + i % 16}.{i}.0/24"}]
        if base > 0:
            items.append({"group": f"g{base - 1}"})  # nests the namespace's previous group
        group(ns, f"g{base}", items)
    per_ns_groups: dict[str, list[str]] = collections.defaultdict(list)
    for g in groups:
        per_ns_groups[g["metadata"]["namespace"]].append(g["metadata"]["name"])

    services: list[dict[str, Any]] = []
    users: list[str] = []
    rest = scale.services - scale.shared_users
    for i in range(scale.shared_users):
        allow = "shared" if i % 2 == 0 else nesting[i % len(nesting)]
        services.append(_mailservice(big, f"m{i:04d}", allow))
        users.append(f"{big}/m{i:04d}")
    for i in range(rest):
        ns = others[i % len(others)] if others else big
        choices = per_ns_groups.get(ns) or []
        chosen = choices[i % len(choices)] if choices and i % 4 else None
        services.append(_mailservice(ns, f"s{i:04d}", chosen))
    return groups, services, users


def _mailservice(ns: str, name: str, allow: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "service": "SMTP",
        "backend": {"host": f"backend-{name}.mail.svc"},
    }
    if allow:
        spec["access"] = {"allowFrom": allow}
    return {"apiVersion": MW, "kind": "MailService",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}  # fmt: skip


# -- the operator subprocess ---------------------------------------------------------------


def _free_port() -> int:
    # On every address, as the operator binds its metrics port (0.0.0.0): a port free on
    # 127.0.0.1 may be held on another loopback address (a test client bound to 127.0.0.21
    # gets an ephemeral port), and the operator's bind then fails.
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def operator_process(
    url: str,
    workdir: pathlib.Path,
    figures_period: float = 15.0,
    root: pathlib.Path | None = None,
    python: str | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """root: run the operator from that checkout's sources (listener/ and operator/) instead
    of the installed package, with the same libraries; python: with that interpreter (an
    older checkout may need a library this one dropped: its own virtualenv, whose
    site-packages come first)."""
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emulator",
                "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "u"}}],
            }
        )
    )
    liveness, metrics_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": os.pathsep.join(
            ([str(root / "listener"), str(root / "operator")] if root else []) + sys.path
        ),
        # The generated backends do not exist: probing them would only report
        # BackendUnreachable, which is not what this benchmark measures.
        "MAILWARDEN_BACKEND_PROBE_SECONDS": "0",
        "MAILWARDEN_FIGURES_SECONDS": f"{figures_period:g}",
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    log = (workdir / "operator.log").open("wb")
    proc = subprocess.Popen(
        [python or sys.executable, "-m", "mailwarden.cli", "operator",
         "--liveness", f"http://127.0.0.1:{liveness}/healthz",
         "--metrics-port", str(metrics_port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the operator exited: {(workdir / 'operator.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{liveness}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the operator did not become live within 30 s")
            time.sleep(0.1)
        yield proc, metrics_port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def rss_mib(pid: int) -> tuple[float, float]:
    """Current and peak resident set size of a process, in MiB."""
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far: unlike wall time, not inflated when
    other work shares the machine."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reconciles(metrics_port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    total = 0.0
    for m in re.finditer(r"^mailwarden_operator_reconciles_total\{[^}]*\} (\S+)$", text, re.M):
        total += float(m.group(1))
    return int(total)


# -- observing the emulator ----------------------------------------------------------------


def _state(emulator: Emulator) -> dict[str, Any]:
    """One pass over the emulator's store (on its own loop): MailServices Ready, and which
    child kinds each MailService has."""
    ready: set[tuple[str | None, str]] = set()
    services: set[tuple[str | None, str]] = set()
    figures = 0  # MailServices whose status shows the fake pods' figures
    kids: dict[tuple[str | None, str], set[str]] = collections.defaultdict(set)
    for (res, ns, name), obj in list(emulator._objects.items()):
        plural = str(res.plural)
        kind = KIND_OF_PLURAL.get(plural)
        if kind is None or obj.deleted:
            continue
        raw = obj.raw
        if kind == "MailService":
            services.add((ns, name))
            meta = raw.get("metadata", {})
            status = raw.get("status") or {}
            if (status.get("connections") or {}).get("active") == 1:
                figures += 1
            for cond in status.get("conditions") or []:
                if (
                    cond.get("type") == "Ready"
                    and cond.get("status") == "True"
                    and status.get("observedGeneration") == meta.get("generation")
                ):
                    ready.add((ns, name))
            continue
        owner = ((raw.get("metadata") or {}).get("labels") or {}).get(naming.LABEL_MAILSERVICE)
        if owner:
            kids[(ns, owner)].add(kind)
    complete = {k for k in services if kids.get(k, set()) >= set(CHILD_KINDS)}
    return {"services": services, "ready": ready, "complete": complete, "figures": figures}


async def _snapshot(emulator: Emulator) -> dict[str, Any]:
    return _state(emulator)


CONFIGMAPS = kmock.resource("v1/configmaps")
NETWORKPOLICIES = kmock.resource("networking.k8s.io/v1/networkpolicies")


def _raw(emulator: Emulator, key: Any) -> dict[str, Any] | None:
    if key not in emulator._objects or emulator._objects[key].deleted:
        return None
    raw: dict[str, Any] = emulator._objects[key].raw
    return raw


async def _carries(emulator: Emulator, users: list[str]) -> int:
    """How many of `users` have the new address in both their ConfigMap and NetworkPolicy
    (by key: cheap enough to ask often without slowing the emulator)."""
    done = 0
    for user in users:
        ns, name = user.split("/")
        cm = _raw(emulator, (CONFIGMAPS, ns, naming.base(name)))
        np = _raw(emulator, (NETWORKPOLICIES, ns, naming.base(name)))
        if cm is None or np is None:
            continue
        if NEW_CIDR in json.dumps(cm.get("data")) and NEW_CIDR in json.dumps(np.get("spec")):
            done += 1
    return done


# -- listener pods that only answer /status -------------------------------------------------


class FakeStatus:
    """A tiny HTTP server answering `GET /status` on every fake pod's address, in its own
    thread and event loop: what a listener pod would answer for its MailService, either the
    same figures every time or figures that change on every request. A benchmark stand-in,
    not a listener."""

    def __init__(self, pods: dict[str, str]) -> None:
        self.pods = pods  # address -> "namespace/name" of the MailService it serves
        self.changing = False
        self.requests = 0
        self._tick = 0
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> FakeStatus:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._bind(), self._loop).result(60)
        return self

    async def _bind(self) -> None:
        for ip in self.pods:
            self._servers.append(
                await self._loop.create_server(
                    functools.partial(_StatusProtocol, self, ip), ip, LISTENER_METRICS_PORT
                )
            )

    def answer(self, ip: str) -> bytes:
        self.requests += 1
        self._tick += 1
        active = self._tick if self.changing else 1
        doc = {
            "observedAt": "2026-01-01T00:00:00Z",
            "services": {
                self.pods[ip]: {
                    "active": active,
                    "refusals": {"denied": 2, "overCap": 0, "overAddressCap": 0,
                                 "rateLimited": 0, "banned": 0, "backendDown": 0},
                    "bannedAddresses": 0,
                }
            },
        }  # fmt: skip
        body = json.dumps(doc).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def stop(self) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class _StatusProtocol(asyncio.Protocol):
    def __init__(self, server: FakeStatus, ip: str) -> None:
        self.server = server
        self.ip = ip
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf and self.transport is not None:
            self.transport.write(self.server.answer(self.ip))
            self.transport.close()


def pod_network() -> int:
    """A second octet of 127.0.0.0/8 whose addresses are free on the metrics port."""
    start = os.getpid() % 60
    for k in range(60):
        octet = 192 + (start + k) % 60
        with socket.socket() as s:
            try:
                s.bind((f"127.{octet}.0.1", LISTENER_METRICS_PORT))
            except OSError:
                continue
        return octet
    raise RuntimeError("no free 127.N.0.0/16 for the fake listener pods")


def pod_address(net: int, i: int) -> str:
    return f"127.{net}.{i // 250}.{i % 250 + 1}"


def fake_pods(services: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One running listener pod per MailService, as the kubelet would report it."""
    pods, served = [], {}
    net = pod_network()
    for i, msvc in enumerate(services):
        ns, name = msvc["metadata"]["namespace"], msvc["metadata"]["name"]
        ip = pod_address(net, i)
        served[ip] = f"{ns}/{name}"
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{naming.base(name)}-0",
                    "namespace": ns,
                    "labels": naming.labels(naming.base(name), name),
                },
                "spec": {"containers": [{"name": "listener", "image": "mailwarden-listener"}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
            }
        )
    return pods, served


@dataclasses.dataclass
class Window:
    """What the live figures cost over a window of time, scaled to a minute."""

    name: str
    seconds: float
    status_requests: int
    requests: collections.Counter[tuple[str, str]]
    operator_cpu_s: float

    def per_minute(self, n: float) -> float:
        return n * 60.0 / self.seconds


# -- the run -------------------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    name: str
    seconds: float
    reached: int  # MailServices that got there (all of them unless the phase timed out)
    goal: int
    reconciles: int
    requests: collections.Counter[tuple[str, str]]
    quiet_after_s: float | None
    residual_rps: float
    operator_cpu_s: float = 0.0  # CPU time of the operator process during the phase
    emulator_cpu_s: float = 0.0  # CPU time of this process (the emulator, mostly)

    @property
    def total(self) -> int:
        return sum(self.requests.values())


@dataclasses.dataclass
class Result:
    scale: Scale
    services: int
    groups: int
    users: int
    steady: Phase
    fanout: Phase
    rss_idle: float
    rss_steady: float
    rss_peak: float
    log_lines: int
    figures: list[Window] = dataclasses.field(default_factory=list)
    startup_s: float = 0.0  # spawn -> liveness answering
    label: str = "this checkout"


class Run:
    def __init__(self, et: EmulatorThread) -> None:
        assert isinstance(et.emulator, CountingEmulator)
        self.et = et
        self.emulator: CountingEmulator = et.emulator

    def state(self) -> dict[str, Any]:
        return self.et.call(_snapshot, self.emulator)  # type: ignore[no-any-return]

    def counts(self) -> collections.Counter[tuple[str, str]]:
        with self.emulator.count_lock:
            return collections.Counter(
                {(verb, plural): n for (_, verb, plural), n in self.emulator.counts.items()}
            )

    def last_request(self) -> float:
        with self.emulator.count_lock:
            return self.emulator.stamps[-1] if self.emulator.stamps else 0.0

    def requests_since(self, t: float) -> int:
        with self.emulator.count_lock:
            return sum(1 for s in self.emulator.stamps if s >= t)

    def quiet(
        self, since: float, window: float = 2.0, limit: float = 30.0
    ) -> tuple[float | None, float]:
        """Seconds from `since` until the operator's last request before a `window` of
        silence, and the request rate over the following window (None: never quiet)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            last = self.last_request()
            if time.monotonic() - last >= window:
                start = time.monotonic()
                time.sleep(window)
                return max(0.0, last - since), self.requests_since(start) / window
            time.sleep(0.1)
        return None, self.requests_since(time.monotonic() - window) / window


async def _create_all(url: str, objs: list[dict[str, Any]], concurrency: int = 8) -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for obj in objs:
        queue.put_nowait(obj)
    async with httpx.AsyncClient(
        base_url=url, timeout=30, headers={"User-Agent": BENCH_AGENT}
    ) as client:

        async def worker() -> None:
            while not queue.empty():
                obj = queue.get_nowait()
                ns = obj["metadata"]["namespace"]
                plural = {"MailService": "mailservices", "IPAddressGroup": "ipaddressgroups"}.get(
                    obj["kind"]
                )
                path = (
                    f"/apis/{MW}/namespaces/{ns}/{plural}"
                    if plural
                    else f"/api/v1/namespaces/{ns}/pods"
                )
                r = await client.post(path, json=obj)
                if r.status_code >= 300:
                    raise RuntimeError(f"create {ns}/{obj['metadata']['name']}: {r.text}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def unrelated(n: int, namespaces: int) -> dict[str, list[dict[str, Any]]]:
    """n ConfigMaps, Services and Deployments that are none of the operator's business."""
    out: dict[str, list[dict[str, Any]]] = {}
    for resource, api_version, kind in (
        ("v1/configmaps", "v1", "ConfigMap"),
        ("v1/services", "v1", "Service"),
        ("apps/v1/deployments", "apps/v1", "Deployment"),
    ):
        objs = []
        for i in range(n):
            app = f"app-{i % 50}"
            meta = {
                "name": f"unrelated-{i:05d}",
                "namespace": f"scale-{i % max(1, namespaces):02d}",
                "labels": {"app": app, "team": "other"},
            }
            body: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": meta}
            if kind == "ConfigMap":
                body["data"] = {"config.yaml": "key: value\n" * 20}
            elif kind == "Service":
                body["spec"] = {"selector": {"app": app},
                                "ports": [{"port": 80, "targetPort": 8080}]}  # fmt: skip
            else:
                pod = {"containers": [{"name": "c", "image": "nginx"}]}
                body["spec"] = {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                                "template": {"metadata": {"labels": {"app": app}},
                                             "spec": pod}}  # fmt: skip
            objs.append(body)
        out[resource] = objs
    return out


@contextlib.contextmanager
def profiling(pid: int, out: pathlib.Path | None) -> Iterator[None]:
    """py-spy sampling the operator (every thread) while the body runs."""
    if out is None:
        yield
        return
    spy = subprocess.Popen(
        [str(pathlib.Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
         "--format", "raw", "--output", str(out), "--rate", "100", "--nonblocking", "--gil"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)


def run(
    scale: Scale,
    *,
    progress: bool = True,
    root: pathlib.Path | None = None,
    profile: pathlib.Path | None = None,
    figures: bool = True,
    python: str | None = None,
) -> Result:
    groups, services, users = plan(scale)

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    et = EmulatorThread(emulator_class=CountingEmulator).start()
    try:
        if scale.unrelated:
            assert et.emulator is not None
            for resource, objs in unrelated(scale.unrelated, scale.namespaces).items():
                et.call(et.emulator.seed, resource, objs)
            say(f"seeded {scale.unrelated} unrelated objects of each of 3 kinds")
        spawned = time.monotonic()
        with (
            tempfile.TemporaryDirectory(prefix="opscale-") as tmp,
            operator_process(et.url, pathlib.Path(tmp), scale.figures_period, root, python) as (
                proc,
                metrics_port,
            ),
            profiling(proc.pid, profile),
        ):
            startup_s = time.monotonic() - spawned
            r = Run(et)
            # Start-up is over when kopf's initial lists are done: the requests go quiet.
            r.quiet(spawned, window=1.0, limit=60.0)
            rss_idle, _ = rss_mib(proc.pid)
            base_counts, base_rec = r.counts(), reconciles(metrics_port)
            cpu_op, cpu_emu = cpu_seconds(proc.pid), cpu_seconds(os.getpid())

            # Steady state: create everything, wait for every MailService Ready and whole.
            t0 = time.monotonic()
            asyncio.run(_create_all(et.url, groups + services))
            say(f"created {len(groups)} groups, {len(services)} MailServices "
                f"in {time.monotonic() - t0:.1f} s")  # fmt: skip
            deadline = t0 + scale.timeout
            while True:
                st = r.state()
                ok = len(st["ready"] & st["complete"])
                if ok == len(services) or time.monotonic() > deadline:
                    break
                # A pass over the emulator's whole store holds its loop: not too often.
                time.sleep(1.0)
            steady_s = time.monotonic() - t0
            say(f"steady state: {ok}/{len(services)} in {steady_s:.1f} s")
            quiet_at, residual = r.quiet(t0 + steady_s)
            steady = Phase(
                "steady state",
                steady_s,
                ok,
                len(services),
                reconciles(metrics_port) - base_rec,
                r.counts() - base_counts,
                quiet_at,
                residual,
            )
            steady.operator_cpu_s = cpu_seconds(proc.pid) - cpu_op
            steady.emulator_cpu_s = cpu_seconds(os.getpid()) - cpu_emu
            rss_steady, _ = rss_mib(proc.pid)

            # Fan-out: one more network in the shared group.
            base_counts, base_rec = r.counts(), reconciles(metrics_port)
            cpu_op, cpu_emu = cpu_seconds(proc.pid), cpu_seconds(os.getpid())
            big = groups[0]["metadata"]["namespace"]
            items = [*groups[0]["spec"]["items"], {"network": NEW_CIDR}]
            t1 = time.monotonic()
            resp = httpx.patch(
                f"{et.url}/apis/{MW}/namespaces/{big}/ipaddressgroups/shared",
                json={"spec": {"items": items}},
                headers={"Content-Type": "application/merge-patch+json", "User-Agent": BENCH_AGENT},
            )  # fmt: skip
            resp.raise_for_status()
            deadline = t1 + scale.timeout
            while True:
                done = et.call(_carries, r.emulator, users)
                if done == len(users) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            fanout_s = time.monotonic() - t1
            say(f"fan-out: {done}/{len(users)} MailServices in {fanout_s:.2f} s")
            quiet_at, residual = r.quiet(t1 + fanout_s, limit=60.0)
            fanout = Phase(
                "group fan-out",
                fanout_s,
                done,
                len(users),
                reconciles(metrics_port) - base_rec,
                r.counts() - base_counts,
                quiet_at,
                residual,
            )
            fanout.operator_cpu_s = cpu_seconds(proc.pid) - cpu_op
            fanout.emulator_cpu_s = cpu_seconds(os.getpid()) - cpu_emu
            # RSS at the end of the reconciliation phases (the figures' pods add to it).
            _, rss_peak = rss_mib(proc.pid)
            windows = _figures_phases(scale, et, r, proc.pid, services, say) if figures else []
            _, rss_peak = rss_mib(proc.pid)
            log_lines = len((pathlib.Path(tmp) / "operator.log").read_bytes().splitlines())
    finally:
        et.stop()
    return Result(scale, len(services), len(groups), len(users), steady, fanout,
                  rss_idle, rss_steady, rss_peak, log_lines, windows, startup_s,
                  str(root) if root else "this checkout")  # fmt: skip


def _figures_phases(
    scale: Scale,
    et: EmulatorThread,
    r: Run,
    pid: int,
    services: list[dict[str, Any]],
    say: Any,
) -> list[Window]:
    """One pod per MailService answering /status; after the first round has written every
    MailService's figures, a window of constant figures, then one of changing figures."""
    pods, served = fake_pods(services)
    fake = FakeStatus(served).start()
    try:
        asyncio.run(_create_all(et.url, pods))
        # The first rounds write each MailService's figures once; then it must go quiet.
        deadline = time.monotonic() + scale.timeout
        while time.monotonic() < deadline:
            st = r.state()
            if st["figures"] >= len(services):
                break
            time.sleep(1.0)
        say(f"figures: {r.state()['figures']}/{len(services)} MailServices show them")
        time.sleep(scale.figures_period)
        windows = []
        for changing in (False, True):
            fake.changing = changing
            base, asked, cpu = r.counts(), fake.requests, cpu_seconds(pid)
            t = time.monotonic()
            time.sleep(scale.figures_window)
            windows.append(
                Window(
                    "figures changing" if changing else "figures constant",
                    time.monotonic() - t,
                    fake.requests - asked,
                    r.counts() - base,
                    cpu_seconds(pid) - cpu,
                )
            )
            say(f"{windows[-1].name}: {windows[-1].status_requests} /status requests")
        return windows
    finally:
        fake.stop()


def figures_only(scale: Scale, *, progress: bool = True) -> list[Window]:
    """The live figures' polling alone (bench/figures_poller.py, the operator's polling code
    in a process of its own) against the emulator holding the MailServices and one fake pod
    each: the first round writes every MailService's figures, then a window with constant
    figures and one with figures changing on every poll."""

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    groups, services, _ = plan(scale)
    et = EmulatorThread(emulator_class=CountingEmulator).start()
    try:
        r = Run(et)
        asyncio.run(_create_all(et.url, groups + services))
        pods, served = fake_pods(services)
        fake = FakeStatus(served).start()
        try:
            asyncio.run(_create_all(et.url, pods))
            say(f"created {len(services)} MailServices and {len(pods)} pods")
            total = scale.figures_period + 2 * scale.figures_window + 5
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.figures_poller", et.url,
                 f"{scale.figures_period:g}", f"{total:g}"],
                env=env, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                assert proc.stdout is not None
                first = json.loads(proc.stdout.readline() or "{}")
                say(f"first round: {first}")
                windows = []
                for changing in (False, True):
                    fake.changing = changing
                    base, asked, cpu = r.counts(), fake.requests, cpu_seconds(proc.pid)
                    t = time.monotonic()
                    time.sleep(scale.figures_window)
                    windows.append(
                        Window(
                            "figures changing" if changing else "figures constant",
                            time.monotonic() - t,
                            fake.requests - asked,
                            r.counts() - base,
                            cpu_seconds(proc.pid) - cpu,
                        )
                    )
                    say(f"{windows[-1].name}: {windows[-1].status_requests} /status requests")
            finally:
                proc.terminate()
                proc.wait(30)
        finally:
            fake.stop()
    finally:
        et.stop()
    return windows


def figures_report(scale: Scale, windows: list[Window]) -> str:
    lines = [
        f"live figures alone (bench/figures_poller.py): {scale.services} MailServices, one "
        f"pod each, {scale.namespaces} namespaces, a round every {scale.figures_period:g} s; "
        f"per minute over {scale.figures_window:g} s",
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average "
        f"{os.getloadavg()[0]:.1f}",
        "",
    ]
    for w in windows:
        writes = w.requests.get(("patch/status", "mailservices"), 0)
        other = sum(w.requests.values()) - writes
        lines.append(f"{w.name + ': GET /status':<52}{w.per_minute(w.status_requests):>14.0f}")
        lines.append(f"{w.name + ': API requests, not writes':<52}{w.per_minute(other):>14.0f}")
        lines.append(f"{w.name + ': status writes':<52}{w.per_minute(writes):>14.0f}")
        lines.append(f"{w.name + ': poller CPU s':<52}{w.per_minute(w.operator_cpu_s):>14.2f}")
    return "\n".join(lines)


# -- the report ----------------------------------------------------------------------------


def report(res: Result) -> str:
    s = res.scale
    lines = [
        f"mailwarden operator at scale: {res.services} MailServices, {s.namespaces} namespaces, "
        f"{res.groups} IPAddressGroups (nested), {res.users} depending on one group",
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average "
        f"{os.getloadavg()[0]:.1f}; emulator and benchmark in one process, the operator in "
        f"another; operator from {res.label}"
        + (f"; {s.unrelated} unrelated ConfigMaps, Services, Deployments" if s.unrelated else ""),
        "",
        f"{'figure':<52}{'value':>14}{'target':>12}  ok",
    ]

    def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        mark = "" if ok is None else ("yes" if ok else "NO")
        lines.append(f"{name:<52}{value:>14}{target:>12}  {mark}")

    full = s == FULL

    def took(ph: Phase, fmt: str) -> str:
        if ph.reached == ph.goal:
            return format(ph.seconds, fmt) + " s"
        return f"{ph.reached}/{ph.goal} in {ph.seconds:.0f} s"

    steady_ok = res.steady.reached == res.steady.goal and res.steady.seconds < TARGETS["steady_s"]
    fanout_ok = res.fanout.reached == res.fanout.goal and res.fanout.seconds < TARGETS["fanout_s"]
    row("steady state: create -> all Ready, children present", took(res.steady, ".1f"),
        "< 60 s", steady_ok if full else None)  # fmt: skip
    row(f"group change reaches {res.users} ConfigMaps+NetworkPolicies", took(res.fanout, ".2f"),
        "< 5 s", fanout_ok if full else None)  # fmt: skip
    for ph in (res.steady, res.fanout):
        per = ph.total / ph.reconciles if ph.reconciles else float("nan")
        row(f"{ph.name}: reconciles", str(ph.reconciles))
        row(f"{ph.name}: CPU s operator / emulator",
            f"{ph.operator_cpu_s:.1f} / {ph.emulator_cpu_s:.1f}")  # fmt: skip
        row(f"{ph.name}: API requests (per reconcile)", f"{ph.total} ({per:.1f})")
        q = "never" if ph.quiet_after_s is None else f"{ph.quiet_after_s:.1f} s"
        row(f"{ph.name}: last request after the goal", q)
        row(f"{ph.name}: requests/s once quiet", f"{ph.residual_rps:.1f}", "~0",
            ph.residual_rps < 1.0 and ph.quiet_after_s is not None)  # fmt: skip
    row("operator start-up (spawn -> live)", f"{res.startup_s:.1f} s")
    for ph in (res.steady, res.fanout):
        per_ms = 1000 * ph.operator_cpu_s / ph.reconciles if ph.reconciles else float("nan")
        row(f"{ph.name}: operator CPU per reconcile", f"{per_ms:.1f} ms")
    row("operator RSS idle (after start-up)", f"{res.rss_idle:.0f} MiB")
    row("operator RSS at steady state", f"{res.rss_steady:.0f} MiB", "< 250 MiB",
        res.rss_steady < TARGETS["rss_mib"] if full else None)  # fmt: skip
    row("operator RSS peak (VmHWM)", f"{res.rss_peak:.0f} MiB", "< 250 MiB",
        res.rss_peak < TARGETS["rss_mib"] if full else None)  # fmt: skip
    row("operator log lines", str(res.log_lines))
    if res.figures:
        lines += [
            "",
            f"live figures, every {s.figures_period:g} s, one pod per MailService, per minute "
            f"over {s.figures_window:g} s (changing: new figures on every poll)",
        ]
    for w in res.figures:
        writes = w.requests.get(("patch/status", "mailservices"), 0)
        other = sum(w.requests.values()) - writes
        row(f"{w.name}: GET /status", f"{w.per_minute(w.status_requests):.0f}")
        row(f"{w.name}: API requests, not writes", f"{w.per_minute(other):.0f}")
        row(f"{w.name}: status writes", f"{w.per_minute(writes):.0f}",
            "0" if "constant" in w.name else "",
            writes == 0 if "constant" in w.name else None)  # fmt: skip
        row(f"{w.name}: operator CPU s", f"{w.per_minute(w.operator_cpu_s):.2f}")
    for ph in (res.steady, res.fanout):
        lines += ["", f"{ph.name}: requests by verb and resource"]
        for (verb, plural), n in sorted(ph.requests.items(), key=lambda kv: -kv[1]):
            per = n / ph.reconciles if ph.reconciles else float("nan")
            lines.append(f"  {verb:<14}{plural:<18}{n:>8}  {per:>6.2f}/reconcile")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, 20 MailServices")
    parser.add_argument("--unrelated", type=int, default=0, metavar="N",
                        help="N unrelated ConfigMaps, Services and Deployments each")  # fmt: skip
    parser.add_argument("--baseline", type=pathlib.Path, metavar="CHECKOUT",
                        help="then run the operator of another checkout and compare")  # fmt: skip
    parser.add_argument("--baseline-python", metavar="PYTHON",
                        help="the baseline operator's interpreter (default: this one)")  # fmt: skip
    parser.add_argument("--services", type=int, metavar="N",
                        help="N MailServices (namespaces, groups, users scaled)")  # fmt: skip
    parser.add_argument("--no-figures", action="store_true",
                        help="skip the live figures windows")  # fmt: skip
    parser.add_argument("--figures-only", action="store_true",
                        help="only the live figures' polling, no operator")  # fmt: skip
    parser.add_argument("--profile", type=pathlib.Path, metavar="FILE",
                        help="py-spy samples of this operator (collapsed stacks)")  # fmt: skip
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the operator subprocess is stopped too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    scale = dataclasses.replace(SMOKE if args.smoke else FULL, unrelated=args.unrelated)
    if args.figures_only:
        print(figures_report(scale, figures_only(scale)), flush=True)
        return 0
    if args.services:
        n = args.services
        scale = dataclasses.replace(
            scale, services=n, namespaces=max(2, n // 50), groups=max(3, n // 20),
            shared_users=n // 2,
        )  # fmt: skip
    res = run(scale, profile=args.profile, figures=not args.no_figures)
    print(report(res), flush=True)
    if args.baseline is not None:
        # An older checkout may not report live figures: its run has none.
        base = run(scale, root=args.baseline.resolve(), figures=False, python=args.baseline_python)
        print("\n" + report(base))
        print("\n" + compare(res, base))
    return 0


def compare(new: Result, old: Result) -> str:
    """This checkout against the baseline, side by side."""
    lines = [f"{'this checkout vs ' + old.label:<52}{'new':>12}{'baseline':>12}{'ratio':>8}"]

    def row(name: str, a: float, b: float, fmt: str = ".1f") -> None:
        ratio = a / b if b else float("nan")
        lines.append(f"{name:<52}{a:>12{fmt}}{b:>12{fmt}}{ratio:>8.2f}")

    for attr in ("steady", "fanout"):
        a, b = getattr(new, attr), getattr(old, attr)
        row(f"{a.name}: wall s", a.seconds, b.seconds, ".2f")
        row(f"{a.name}: operator CPU s", a.operator_cpu_s, b.operator_cpu_s)
        row(f"{a.name}: emulator CPU s", a.emulator_cpu_s, b.emulator_cpu_s)
        row(f"{a.name}: reconciles", a.reconciles, b.reconciles, ".0f")
        per_a = 1000 * a.operator_cpu_s / a.reconciles if a.reconciles else float("nan")
        per_b = 1000 * b.operator_cpu_s / b.reconciles if b.reconciles else float("nan")
        row(f"{a.name}: operator CPU ms per reconcile", per_a, per_b)
        row(f"{a.name}: API requests per reconcile",
            a.total / max(1, a.reconciles), b.total / max(1, b.reconciles))  # fmt: skip
    row("start-up s (spawn -> live)", new.startup_s, old.startup_s, ".2f")
    row("RSS idle MiB", new.rss_idle, old.rss_idle, ".0f")
    row("RSS steady MiB", new.rss_steady, old.rss_steady, ".0f")
    row("RSS peak MiB", new.rss_peak, old.rss_peak, ".0f")
    row("log lines", new.log_lines, old.log_lines, ".0f")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
