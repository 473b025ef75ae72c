"""Live figures end to end: the real operator polls real listener processes (the pod
stand-in of kubeemu/pods.py runs one `mailwarden-listener` per pod of a listener
Deployment, on an address of its own), sessions are opened through those listeners, and
`kubectl get msvc` (the real kubectl against the emulator) shows ACTIVE and REFUSED move.
A pod that stops answering is named in the FiguresAvailable condition while the operator
keeps going; a quiet cluster gets no status writes."""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
import pytest

from kubeemu.emulator import EmulatorThread
from mailwarden.operator import figures, naming
from mailwarden.operator import settings as settings_mod
from tests.operator.resources import MW, condition, group, mailservice, ready
from tests.operator.test_kubectl import KUBECTL, kubeconfig, run
from tests.support.listener import free_port
from tests.support.operator import Client, OperatorThread, eventually
from tests.support.raw_tcp import Backend, greeter, read_line

__all__ = ["kubeconfig"]

GREETING = b"220 backend.test ESMTP\r\n"
POLL_SECONDS = 1.0


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    et = EmulatorThread(pods=True).start()
    yield et
    et.stop()


@pytest.fixture(scope="module")
def operator(emulator: EmulatorThread) -> Iterator[OperatorThread]:
    settings = settings_mod.Settings(
        image="mailwarden:test",
        backend_probe_seconds=0,
        figures_seconds=POLL_SECONDS,
        figures_timeout=1.0,
        # Every pod has an address of its own, so one port serves them all.
        metrics_port=free_port(),
    )
    op = OperatorThread(emulator.url, settings=settings).start()
    yield op
    op.stop()


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = Backend(greeter(GREETING))
    yield b
    b.close()


def running_pods(et: EmulatorThread, ns: str, name: str, n: int) -> list[dict[str, Any]]:
    """The listener pods of a MailService as the emulator reports them, once n are Ready."""
    assert et.emulator is not None and et.emulator.pods is not None
    pods = et.emulator.pods.of(ns, naming.base(name))
    assert len(pods) == n, pods
    out = []
    for pod in pods:
        body = et.emulator.get("v1/pods", ns, pod.name)
        assert body is not None and body["status"].get("phase") == "Running", body
        out.append(body)
    return out


def session(ip: str, port: int, source: str) -> socket.socket:
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect((ip, port))
    return s


def columns(env: dict[str, str], ns: str, name: str) -> dict[str, str]:
    """`kubectl get msvc NAME` as {column: value}, cut where the header's columns start
    (kubectl aligns them; a value may be empty)."""
    header, row = run(env, KUBECTL, "get", "msvc", name, "-n", ns).splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)] + [max(len(header), len(row))]
    return {header[a:b].strip(): row[a:b].strip() for a, b in itertools.pairwise(starts)}


def shows(env: dict[str, str], ns: str, name: str, active: str, refused: str) -> Callable[[], None]:
    def check() -> None:
        got = columns(env, ns, name)
        assert (got["ACTIVE"], got["REFUSED"]) == (active, refused), got

    return check


def test_kubectl_get_msvc_shows_active_and_refused_move_with_real_sessions(
    kube: Client,
    emulator: EmulatorThread,
    backend: Backend,
    ns: str,
    kubeconfig: dict[str, str],
) -> None:
    port = free_port()
    kube.apply(group(ns, "loopback", {"network": "127.0.0.0/24"}))
    kube.apply(
        mailservice(
            ns,
            "smtp",
            replicas=2,
            listen=[{"port": port}],
            backend={"host": "127.0.0.1", "port": backend.port},
            access={"allowFrom": "loopback", "maxConnectionsPerAddress": 1},
        )
    )
    eventually(lambda: ready(kube, ns, "smtp"))
    a, b = eventually(lambda: running_pods(emulator, ns, "smtp", 2), timeout=30)
    ip_a, ip_b = a["status"]["podIP"], b["status"]["podIP"]
    assert ip_a != ip_b
    eventually(shows(kubeconfig, ns, "smtp", "0", "0"), timeout=15)

    opened = [session(ip_a, port, "127.0.0.1"), session(ip_b, port, "127.0.0.1")]
    try:
        for s in opened:
            assert read_line(s) == GREETING  # relayed from the backend: admitted
        with session(ip_a, port, "127.0.0.1") as again:  # per-address cap of that pod
            assert read_line(again).startswith(b"421 4.7.0")
        with session(ip_b, port, "127.0.9.9") as stranger:  # not in the group
            assert read_line(stranger).startswith(b"554 5.7.1")
        eventually(shows(kubeconfig, ns, "smtp", "2", "2"), timeout=15)
        described = run(kubeconfig, KUBECTL, "describe", "msvc", "smtp", "-n", ns)
        assert "Connections:" in described
        for field, value in (
            ("Active", 2),
            ("Refused", 2),
            ("Denied", 1),
            ("Over Address Cap", 1),
            ("Over Cap", 0),
            ("Backend Down", 0),
            ("Banned Addresses", 0),
        ):
            assert re.search(rf"^\s+{field}:\s+{value}$", described, re.M), (field, described)
        status = kube.get(MW, "MailService", ns, "smtp")
        assert status is not None
        conns = status["status"]["connections"]
        assert {k: conns[k] for k in figures.FIELDS} == {
            "active": 2,
            "refused": 2,
            "denied": 1,
            "overCap": 0,
            "overAddressCap": 1,
            "rateLimited": 0,
            "banned": 0,
            "backendDown": 0,
            "bannedAddresses": 0,
        }
        cond = condition(status, figures.FIGURES_AVAILABLE)
        assert (cond["status"], cond["reason"]) == ("True", figures.PODS_ANSWERED)
    finally:
        for s in opened:
            s.close()
    # Sessions over: ACTIVE falls; the refusals count for five minutes.
    eventually(shows(kubeconfig, ns, "smtp", "0", "2"), timeout=15)

    # A ConfigMap change reaches the pods (the kubelet's ..data swap) without a restart:
    # the group no longer holds 127.0.0.1, so the next session from it is refused.
    names = {p.name for p in emulator.emulator.pods.of(ns, naming.base("smtp"))}  # type: ignore[union-attr]
    kube.apply(group(ns, "loopback", {"network": "127.0.5.0/24"}))

    def refused_now() -> None:
        with session(ip_a, port, "127.0.0.1") as s:
            assert read_line(s).startswith(b"554 5.7.1")

    eventually(refused_now, timeout=15)
    assert {p.name for p in emulator.emulator.pods.of(ns, naming.base("smtp"))} == names  # type: ignore[union-attr]
    eventually(shows(kubeconfig, ns, "smtp", "0", "3"), timeout=15)


def test_a_pod_that_does_not_answer_is_named_and_the_operator_keeps_polling(
    kube: Client, emulator: EmulatorThread, backend: Backend, ns: str
) -> None:
    port = free_port()
    kube.apply(
        mailservice(
            ns,
            "pop",
            service="POP3",
            replicas=2,
            listen=[{"port": port}],
            backend={"host": "127.0.0.1", "port": backend.port},
        )
    )
    eventually(lambda: ready(kube, ns, "pop"))
    eventually(lambda: running_pods(emulator, ns, "pop", 2), timeout=30)

    def figures_condition(status: str, reason: str) -> dict[str, Any]:
        cond = condition(kube.get(MW, "MailService", ns, "pop"), figures.FIGURES_AVAILABLE)
        assert (cond["status"], cond["reason"]) == (status, reason), cond
        return cond

    eventually(lambda: figures_condition("True", figures.PODS_ANSWERED), timeout=15)
    assert emulator.emulator is not None and emulator.emulator.pods is not None
    stand_in = emulator.emulator.pods
    hung, alive = stand_in.of(ns, naming.base("pop"))
    stand_in.freeze(hung)
    try:
        cond = eventually(lambda: figures_condition("False", figures.PODS_UNREACHABLE), timeout=15)
        assert hung.name in cond["message"] and alive.name not in cond["message"]
        assert "1 of 2 listener pods did not answer" in cond["message"]
        # The other pod is still read: a session through it shows.
        with session(alive.ip, port, "127.0.0.1") as s:
            assert read_line(s) == GREETING
            eventually(
                lambda: _active(kube, ns, "pop", 1),
                timeout=15,
            )
    finally:
        stand_in.thaw(hung)
    eventually(lambda: figures_condition("True", figures.PODS_ANSWERED), timeout=15)


def _active(kube: Client, ns: str, name: str, n: int) -> None:
    obj = kube.get(MW, "MailService", ns, name)
    assert obj is not None
    conns = (obj.get("status") or {}).get("connections") or {}
    assert conns.get("active") == n, conns


def test_a_quiet_cluster_gets_no_status_writes(
    kube: Client, emulator: EmulatorThread, backend: Backend, ns: str
) -> None:
    port = free_port()
    kube.apply(
        mailservice(
            ns,
            "imap",
            service="IMAP",
            listen=[{"port": port}],
            backend={"host": "127.0.0.1", "port": backend.port},
        )
    )
    eventually(lambda: ready(kube, ns, "imap"))
    eventually(lambda: running_pods(emulator, ns, "imap", 1), timeout=30)
    eventually(lambda: _active(kube, ns, "imap", 0), timeout=15)
    assert emulator.emulator is not None
    served = emulator.emulator.served
    # Let every other MailService of this module settle too (their last figures written).
    time.sleep(3 * POLL_SECONDS)
    writes, polls = served[("patch", "mailservices/status")], answered()
    time.sleep(5 * POLL_SECONDS)
    assert answered() >= polls + 3, "the operator stopped reading the pods"
    assert served[("patch", "mailservices/status")] == writes, "status written in a quiet cluster"


def answered() -> float:
    """Pods that answered the operator so far (its own counter: the operator runs in this
    process)."""
    value = prometheus_client.REGISTRY.get_sample_value(
        "mailwarden_operator_figure_polls_total", {"result": "answered"}
    )
    return value or 0.0


def test_a_restarted_operator_does_not_write_figures_that_did_not_change(
    backend: Backend,
) -> None:
    """The figures already in the status are the operator's memory: one that starts over
    reads the pods again and finds nothing to write."""
    et = EmulatorThread(pods=True).start()
    kube = Client(et.url)
    settings = settings_mod.Settings(
        image="mailwarden:test",
        backend_probe_seconds=0,
        figures_seconds=POLL_SECONDS,
        figures_timeout=1.0,
        metrics_port=free_port(),
    )
    try:
        first = OperatorThread(et.url, settings=settings).start()
        try:
            kube.apply(
                mailservice(
                    "again",
                    "smtp",
                    listen=[{"port": free_port()}],
                    backend={"host": "127.0.0.1", "port": backend.port},
                )
            )
            eventually(lambda: running_pods(et, "again", "smtp", 1), timeout=30)
            eventually(lambda: _active(kube, "again", "smtp", 0), timeout=15)
        finally:
            first.stop()
        writes, polls = _figure_writes(), answered()
        second = OperatorThread(et.url, settings=settings).start()
        try:
            eventually(lambda: _more(answered, polls + 2), timeout=15)
            assert _figure_writes() == writes, "unchanged figures written again"
        finally:
            second.stop()
    finally:
        kube.close()
        et.stop()


def _figure_writes() -> float:
    value = prometheus_client.REGISTRY.get_sample_value("mailwarden_operator_figure_writes_total")
    return value or 0.0


def _more(read: Callable[[], float], than: float) -> None:
    assert read() >= than
