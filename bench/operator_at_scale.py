"""The operator at scale: the real `mailwarden operator` process against the Kubernetes API
test emulator (real HTTP on loopback), with many MailServices and IPAddressGroups.

    python -m bench.operator_at_scale            # 1,000 MailServices, 20 namespaces, 50 groups
    python -m bench.operator_at_scale --smoke    # 20 MailServices, 2 namespaces, 5 groups

Namespace 0 holds the widely used group `wide`, four groups that nest it, and half of the
MailServices (half of those name `wide`, half one of the nesting groups); every other
namespace holds two groups (one nesting the other) and an even share of the rest. Groups are
namespaced, so a group change can only reach MailServices of its own namespace.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib
import json
import os
import pathlib
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import httpx
import yaml

from bench import procs

MW = "mailwarden.io/v1alpha1"
NEW_CIDR = "198.51.100.0/24"
BENCH_AGENT = "mailwarden-bench"


@dataclasses.dataclass(frozen=True)
class Params:
    namespaces: int = 20
    services: int = 1000
    groups: int = 50
    quiet_seconds: float = 5.0
    timeout: float = 120.0


FULL = Params()
SMOKE = Params(namespaces=2, services=20, groups=5, quiet_seconds=1.0, timeout=60.0)


# -- the load -------------------------------------------------------------------------------


def group(ns: str, name: str, items: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": MW,
        "kind": "IPAddressGroup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"items": items},
    }


def mailservice(ns: str, name: str, allow: str) -> dict[str, Any]:
    return {
        "apiVersion": MW,
        "kind": "MailService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "service": "SMTP",
            "access": {"allowFrom": allow, "maxConnections": 100},
            "backend": {"host": "postfix.mail.svc"},
        },
    }


def objects(p: Params) -> tuple[list[dict[str, Any]], dict[str, list[str]], list[str]]:
    """Groups first, then MailServices; the MailServices per namespace; those that `wide`
    reaches (directly or through nesting)."""
    out: list[dict[str, Any]] = []
    nesting = max(1, min(4, p.groups - 1 - 2 * (p.namespaces - 1)))
    ns0 = "bench-0"
    out.append(group(ns0, "wide", [{"network": "10.0.0.0/16"}]))
    ns0_groups = ["wide"]
    for i in range(nesting):
        name = f"wide-{i}"
        out.append(group(ns0, name, [{"group": "wide"}, {"network": f"10.{i + 1}.0.0/16"}]))
        ns0_groups.append(name)
    extra = p.groups - len(ns0_groups) - 2 * (p.namespaces - 1)
    for i in range(max(0, extra)):  # unused groups in namespace 0 make up the count
        out.append(group(ns0, f"spare-{i}", [{"host": f"192.0.2.{i + 1}"}]))
    for n in range(1, p.namespaces):
        ns = f"bench-{n}"
        out.append(group(ns, "base", [{"network": f"172.{16 + n % 16}.0.0/16"}]))
        out.append(group(ns, "office", [{"group": "base"}, {"host": f"203.0.113.{n}"}]))
    services: dict[str, list[str]] = collections.defaultdict(list)
    wide: list[str] = []
    half = p.services // 2
    for i in range(half):
        name = f"smtp-{i}"
        allow = "wide" if i % 2 == 0 else ns0_groups[1 + (i // 2) % nesting]
        out.append(mailservice(ns0, name, allow))
        services[ns0].append(name)
        wide.append(name)
    others = p.services - half
    for i in range(others):
        ns = f"bench-{1 + i % max(1, p.namespaces - 1)}"
        name = f"smtp-{i}"
        out.append(mailservice(ns, name, "base" if i % 2 == 0 else "office"))
        services[ns].append(name)
    return out, dict(services), wide


# -- the emulator and the operator ------------------------------------------------------------


class Counting:
    """Requests the emulator served, by who sent them and what they were."""

    def __init__(self) -> None:
        self.operator: collections.Counter[tuple[str, str]] = collections.Counter()
        self.bench = 0

    def total(self) -> int:
        return sum(self.operator.values())


def start_emulator(counts: Counting) -> Any:
    # The emulator is the project's test support (the benchmark runs from a checkout);
    # imported by name so that type checking of the benchmark does not walk the tests.
    kube: Any = importlib.import_module("tests.support.kube")

    original = kube.Emulator._handle

    async def counting(self: Any, request: Any) -> Any:
        if request.headers.get("User-Agent") == BENCH_AGENT:
            counts.bench += 1
        else:
            what = request.resource.plural if request.resource is not None else request.url.path
            counts.operator[(str(request.method.value), str(what))] += 1
        return await original(self, request)

    kube.Emulator._handle = counting
    return kube.EmulatorThread().start()


def kubeconfig(url: str, path: pathlib.Path) -> None:
    path.write_text(
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


class Operator:
    def __init__(self, url: str, tmp: pathlib.Path) -> None:
        kubeconfig(url, tmp / "kubeconfig")
        self.metrics_port = procs.free_port()
        self.liveness = procs.free_port()
        # The generated backends do not exist: probing them would only report
        # BackendUnreachable, which is not what this benchmark measures.
        env = dict(
            os.environ, KUBECONFIG=str(tmp / "kubeconfig"), MAILWARDEN_BACKEND_PROBE_SECONDS="0"
        )
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc = procs.start(
            [
                sys.executable,
                "-m",
                "mailwarden.cli",
                "operator",
                "--liveness",
                f"http://127.0.0.1:{self.liveness}/healthz",
                "--metrics-port",
                str(self.metrics_port),
            ],
            env=env,
        )

    def wait_alive(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise procs.BenchError(f"operator exited: {procs.stderr_tail(self.proc)}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.liveness}/healthz", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise procs.BenchError("the operator did not come alive")

    def reconciles(self) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("mailwarden_operator_reconciles_total{")
        )

    def rss_mib(self) -> float:
        return procs.rss_kib(self.proc.pid) / 1024

    def stop(self) -> None:
        procs.stop(self.proc)


# -- the user ---------------------------------------------------------------------------------


class Client:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30, headers={"User-Agent": BENCH_AGENT})

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def base(api_version: str, plural: str, ns: str) -> str:
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        return f"{prefix}/namespaces/{ns}/{plural}"

    def create(self, obj: dict[str, Any]) -> None:
        plural = {"IPAddressGroup": "ipaddressgroups", "MailService": "mailservices"}[obj["kind"]]
        r = self.http.post(self.base(MW, plural, obj["metadata"]["namespace"]), json=obj)
        if r.status_code >= 300:
            raise procs.BenchError(f"create {obj['metadata']}: {r.status_code} {r.text}")

    def items(self, api_version: str, plural: str, ns: str) -> list[dict[str, Any]]:
        r = self.http.get(self.base(api_version, plural, ns))
        r.raise_for_status()
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    def patch_group(self, ns: str, name: str, items: list[dict[str, str]]) -> None:
        r = self.http.patch(
            f"{self.base(MW, 'ipaddressgroups', ns)}/{name}",
            json={"spec": {"items": items}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        r.raise_for_status()


def is_ready(obj: dict[str, Any]) -> bool:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


CHILDREN = (
    ("v1", "configmaps"),
    ("apps/v1", "deployments"),
    ("v1", "services"),
    ("networking.k8s.io/v1", "networkpolicies"),
)


def not_ready(client: Client, services: dict[str, list[str]]) -> int:
    """MailServices not yet Ready (one list per namespace: cheap enough to poll)."""
    return sum(
        len(names) - sum(1 for o in client.items(MW, "mailservices", ns) if is_ready(o))
        for ns, names in services.items()
    )


def missing(client: Client, services: dict[str, list[str]]) -> int:
    """MailServices not yet Ready or with a child missing."""
    left = 0
    for ns, names in services.items():
        ready = {o["metadata"]["name"] for o in client.items(MW, "mailservices", ns) if is_ready(o)}
        children = [
            {o["metadata"]["name"] for o in client.items(v, plural, ns)} for v, plural in CHILDREN
        ]
        for name in names:
            child = f"mailwarden-{name}"
            if name not in ready or any(child not in have for have in children):
                left += 1
    return left


def not_fanned_out(client: Client, ns: str, names: list[str]) -> int:
    """Of `names`, how many ConfigMaps or NetworkPolicies do not carry NEW_CIDR yet."""
    want = {f"mailwarden-{n}" for n in names}
    configs = {
        o["metadata"]["name"]
        for o in client.items("v1", "configmaps", ns)
        if o["metadata"]["name"] in want and NEW_CIDR in json.dumps(o.get("data", {}))
    }
    policies = {
        o["metadata"]["name"]
        for o in client.items("networking.k8s.io/v1", "networkpolicies", ns)
        if o["metadata"]["name"] in want and NEW_CIDR in json.dumps(o.get("spec", {}))
    }
    return len(want - configs) + len(want - policies)


def wait(
    check: Callable[[], int],
    timeout: float,
    what: str,
    interval: float = 0.2,
    log: Callable[[str], None] | None = None,
) -> float:
    """Poll until check() is 0; the seconds it took. Polling costs the emulator (it serves
    the lists), so the interval is the resolution of the figure, not free."""
    start = time.monotonic()
    while (left := check()) > 0:
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            raise procs.BenchError(f"{what}: {left} still missing after {timeout:.0f}s")
        if log is not None:
            log(f"  {what}: {left} left after {elapsed:.0f}s")
        time.sleep(interval)
    return time.monotonic() - start


# -- the run ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    figures: dict[str, float]
    targets: list[tuple[str, str, float, bool]]


def run(p: Params, log: Callable[[str], None]) -> Result:
    counts = Counting()
    emulator = start_emulator(counts)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
            op = Operator(emulator.url, pathlib.Path(tmp))
            client = Client(emulator.url)
            try:
                op.wait_alive()
                return measure(p, op, client, counts, log)
            finally:
                client.close()
                op.stop()
    finally:
        emulator.stop()


def measure(
    p: Params, op: Operator, client: Client, counts: Counting, log: Callable[[str], None]
) -> Result:
    objs, services, wide = objects(p)
    reconciles0, requests0 = op.reconciles(), counts.total()
    t0 = time.monotonic()
    for obj in objs:
        client.create(obj)
    created = time.monotonic() - t0
    log(f"created {len(objs)} objects in {created:.1f}s")
    try:
        ready = wait(lambda: not_ready(client, services), p.timeout, "not Ready", 2.0, log)
        steady = created + ready + wait(lambda: missing(client, services), p.timeout, "children")
    except procs.BenchError:
        # Not reached in time: report how far it got instead of nothing.
        left = not_ready(client, services)
        elapsed = time.monotonic() - t0
        log(f"steady state not reached: {p.services - left} of {p.services} Ready after "
            f"{elapsed:.0f}s")  # fmt: skip
        figures = {
            "mailservices": p.services,
            "groups": p.groups,
            "namespaces": p.namespaces,
            "create_seconds": created,
            "ready_at_timeout": p.services - left,
            "seconds_at_timeout": elapsed,
            "reconciles_at_timeout": op.reconciles() - reconciles0,
            "requests_at_timeout": counts.total() - requests0,
            "rss_mib_at_timeout": op.rss_mib(),
            "operator_cpu_s_at_timeout": procs.cpu_seconds(op.proc.pid),
        }
        for (method, what), n in counts.operator.most_common(8):
            log(f"  operator requests: {method} {what}: {n}")
        return Result(figures, [("steady state (s)", "<", 60.0, False)])
    log(f"all {p.services} MailServices Ready with their children after {steady:.1f}s")
    # Settle: whatever is still queued (status updates, group status) finishes.
    settle_until = time.monotonic() + p.quiet_seconds
    while time.monotonic() < settle_until:
        time.sleep(0.1)
    reconciles1, requests1 = op.reconciles(), counts.total()
    quiet_start = time.monotonic()
    time.sleep(p.quiet_seconds)  # a measurement window
    quiet_requests = counts.total() - requests1
    quiet_reconciles = op.reconciles() - reconciles1
    quiet_s = time.monotonic() - quiet_start
    rss_steady = op.rss_mib()
    ns0 = "bench-0"
    client.patch_group(ns0, "wide", [{"network": "10.0.0.0/16"}, {"network": NEW_CIDR}])
    fanout = wait(lambda: not_fanned_out(client, ns0, wide), p.timeout, "group change")
    log(f"group change reached {len(wide)} MailServices in {fanout:.2f}s")
    rss_peak = max(rss_steady, op.rss_mib())
    reconciles = reconciles1 - reconciles0
    requests = requests1 - requests0
    by_verb: collections.Counter[str] = collections.Counter()
    for (method, _), n in counts.operator.items():
        by_verb[method] += n
    log("operator requests by verb: " + ", ".join(f"{k} {v}" for k, v in by_verb.most_common()))
    figures = {
        "mailservices": p.services,
        "groups": p.groups,
        "namespaces": p.namespaces,
        "create_seconds": created,
        "steady_seconds": steady,
        "fanout_services": len(wide),
        "fanout_seconds": fanout,
        "reconciles_to_steady": reconciles,
        "requests_to_steady": requests,
        "requests_per_reconcile": requests / max(1, reconciles),
        "quiet_requests_per_s": quiet_requests / quiet_s,
        "quiet_reconciles": quiet_reconciles,
        "rss_mib_steady": rss_steady,
        "rss_mib_peak": rss_peak,
    }
    targets = [
        ("steady state (s)", "<", 60.0, steady < 60.0),
        (f"group change to {len(wide)} MailServices (s)", "<", 5.0, fanout < 5.0),
        ("reconciles in a quiet window (no self-triggered loop)", "==", 0.0, quiet_reconciles == 0),
        ("operator RSS (MiB)", "<", 250.0, rss_peak < 250.0),
    ]
    return Result(figures, targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.operator_at_scale",
        description="The operator against the Kubernetes API emulator at scale.",
    )
    parser.add_argument("--smoke", action="store_true", help="20 MailServices, a few seconds")
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    p = SMOKE if args.smoke else FULL
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    result = run(p, log)
    f = result.figures
    if "ready_at_timeout" in f:
        print(json.dumps(f, indent=1))
        for label, op, bound, ok in result.targets:
            print(f"target: {label} {op} {bound:g}: {'met' if ok else 'NOT MET'}")
        if args.json:
            args.json.write_text(json.dumps({"figures": f, "targets": result.targets}, indent=1))
        return 1
    print(f"{int(f['mailservices'])} MailServices, {int(f['groups'])} IPAddressGroups, "
          f"{int(f['namespaces'])} namespaces; the operator in its own process\n")  # fmt: skip
    rows = [
        ("created (s, all objects, one client)", f["create_seconds"]),
        ("first create to all Ready with children (s)", f["steady_seconds"]),
        (f"group change to {int(f['fanout_services'])} ConfigMaps+NetworkPolicies (s)",
         f["fanout_seconds"]),
        ("reconciles to steady state", f["reconciles_to_steady"]),
        ("API requests to steady state", f["requests_to_steady"]),
        ("API requests per reconcile", f["requests_per_reconcile"]),
        ("API requests/s in a quiet window", f["quiet_requests_per_s"]),
        ("reconciles in a quiet window", f["quiet_reconciles"]),
        ("operator RSS at steady state (MiB)", f["rss_mib_steady"]),
        ("operator RSS peak seen (MiB)", f["rss_mib_peak"]),
    ]  # fmt: skip
    for label, value in rows:
        print(f"{label:<52}{value:>12.2f}")
    print()
    for label, op, bound, ok in result.targets:
        print(f"target: {label} {op} {bound:g}: {'met' if ok else 'NOT MET'}")
    if args.json:
        args.json.write_text(json.dumps({"figures": f, "targets": result.targets}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
