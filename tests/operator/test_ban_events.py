"""Bans end to end: a real listener (the emulator's pod stand-in) bans an address after its
failures, the operator's poll of `GET /status` shows it in status.connections (banned,
bannedAddresses, and REFUSED in `kubectl get msvc`), and one Warning Event says so; a flood
of bans does not become a flood of Events."""

from __future__ import annotations

from kubeemu.emulator import EmulatorThread
from mailwarden.operator import bans, figures
from tests.operator.resources import MW, mailservice, ready
from tests.operator.test_live_figures import (
    backend,
    emulator,
    operator,
    running_pods,
    session,
)
from tests.support.listener import free_port
from tests.support.operator import Client, OperatorThread, eventually
from tests.support.raw_tcp import Backend, read_line

__all__ = ["backend", "emulator", "operator"]


def ban_events(kube: Client, ns: str, name: str) -> list[dict]:
    return [
        e
        for e in kube.list("v1", "Event", ns)
        if e["involvedObject"]["name"] == name and e["reason"] == bans.REASON
    ]


def test_a_ban_reaches_the_status_and_one_event_however_many_addresses_are_banned(
    kube: Client, emulator: EmulatorThread, operator: OperatorThread, backend: Backend, ns: str
) -> None:
    port = free_port()
    kube.apply(
        mailservice(
            ns,
            "smtp",
            listen=[{"port": port}],
            backend={"host": "127.0.0.1", "port": backend.port},
            access={
                "maxConnectionsPerAddress": 1,
                "autoBan": {"afterFailures": 1, "withinSeconds": 60, "banSeconds": 600},
            },
        )
    )
    eventually(lambda: ready(kube, ns, "smtp"))
    (pod,) = eventually(lambda: running_pods(emulator, ns, "smtp", 1), timeout=30)
    ip = pod["status"]["podIP"]

    def ban(source: str) -> None:
        """One refusal over the per-address cap bans `source` (afterFailures: 1)."""
        with session(ip, port, source) as held:
            assert read_line(held).startswith(b"220 ")
            with session(ip, port, source) as again:
                assert read_line(again).startswith(b"421 4.7.0")
        with session(ip, port, source) as banned:
            assert b"banned" in read_line(banned)

    ban("127.0.0.61")

    def counted() -> dict[str, int]:
        status = kube.get(MW, "MailService", ns, "smtp")
        assert status is not None and "connections" in status.get("status", {}), status
        conns = status["status"]["connections"]
        assert conns["bannedAddresses"] == 1 and conns["banned"] == 1, conns
        return {k: conns[k] for k in figures.FIELDS}

    conns = eventually(counted, timeout=15)
    assert conns["overAddressCap"] == 1 and conns["refused"] == 2
    (event,) = eventually(lambda: ban_events(kube, ns, "smtp") or None, timeout=15)
    assert event["type"] == "Warning"
    assert event["message"].startswith("1 client addresses (IPv6: networks) banned now")

    # More bans within the Event interval: the figures follow, the Events do not.
    for source in ("127.0.0.62", "127.0.0.63", "127.0.0.64"):
        ban(source)

    def four() -> None:
        status = kube.get(MW, "MailService", ns, "smtp")
        assert status["status"]["connections"]["bannedAddresses"] == 4  # type: ignore[index]

    eventually(four, timeout=15)
    assert len(ban_events(kube, ns, "smtp")) == 1


def test_with_two_replicas_each_pod_counts_on_its_own_and_the_status_sums_them(
    kube: Client, emulator: EmulatorThread, operator: OperatorThread, backend: Backend, ns: str
) -> None:
    """What the user sees of the per-pod decision (docs/decisions/0004): a client spread over
    two pods gets the limit on each, twice the setting in all; refusals are summed."""
    port = free_port()
    kube.apply(
        mailservice(
            ns,
            "sub",
            service="Submission",
            replicas=2,
            listen=[{"port": port}],
            backend={"host": "127.0.0.1", "port": backend.port},
            access={"rateLimit": {"connectionsPerMinute": 2}},
        )
    )
    eventually(lambda: ready(kube, ns, "sub"))
    a, b = eventually(lambda: running_pods(emulator, ns, "sub", 2), timeout=30)
    admitted = 0
    for pod in (a, b):
        for _ in range(3):
            with session(pod["status"]["podIP"], port, "127.0.0.81") as s:
                line = read_line(s)
            if line.startswith(b"220 "):
                admitted += 1
            else:
                assert line.startswith(b"421 4.7.0 sub Error: rate limited:"), line
    assert admitted == 4  # 2 a minute, on each of 2 pods

    def summed() -> None:
        status = kube.get(MW, "MailService", ns, "sub")
        assert status is not None
        conns = status.get("status", {}).get("connections", {})
        assert conns.get("rateLimited") == 2, status.get("status")

    eventually(summed, timeout=15)
