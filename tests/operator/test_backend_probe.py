"""BackendUnreachable: the operator probes each running MailService's backend over TCP (short
timeout, on a period and at reconcile), reports an unreachable one in Ready with a warning
event once per transition, and recovers by itself. Real TCP listeners on loopback that go
away and come back; the real operator against the emulator."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kubeemu.emulator import EmulatorThread
from mailwarden.listener import proxyproto
from mailwarden.operator import conflicts, groups, models, probe
from mailwarden.operator import status as status_mod
from mailwarden.operator.conditions import Reason
from mailwarden.operator.settings import Settings
from tests.operator.resources import MW, condition, mailservice, ready
from tests.support.operator import Client, OperatorThread, eventually

PERIOD = 0.3  # seconds between probes in these tests (60 by default)


class Backend:
    """A TCP server on 127.0.0.1 that accepts and closes, and can go away and come back on
    the same port. It keeps the first bytes of each connection (the probe's PROXY check)."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.received: list[bytes] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> Backend:
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.05)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, args=(self._sock,), daemon=True)
        self._thread.start()
        return self

    def _serve(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                try:
                    data = conn.recv(64)
                except OSError:
                    data = b""
                if data:
                    self.received.append(data)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
        self._sock = self._thread = None


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend().start()
    yield b
    b.stop()


# -- the probe itself --------------------------------------------------------------------


async def test_a_listening_port_is_reachable_and_a_closed_one_is_refused(backend: Backend) -> None:
    assert await probe.reach(probe.Target("127.0.0.1", backend.port), 3) is None
    backend.stop()
    assert await probe.reach(probe.Target("127.0.0.1", backend.port), 3) == "Connection refused"


async def test_an_unknown_host_name_says_so() -> None:
    error = await probe.reach(probe.Target("no-such-backend.invalid", 25), 3)
    assert error is not None and "not known" in error


async def test_a_port_that_never_answers_times_out_within_the_bound() -> None:
    """A listening socket whose accept queue is full: the kernel drops further SYNs, so a
    connect neither succeeds nor fails (as with a firewall that drops)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # bounded: the queue of a listen(0) socket holds one or two
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        start = time.monotonic()
        error = await probe.reach(probe.Target("127.0.0.1", port), 0.5)
        elapsed = time.monotonic() - start
    finally:
        for c in fillers:
            c.close()
        server.close()
    assert error == "no answer within 0.5 s"
    assert 0.4 < elapsed < 2


async def test_the_probe_never_blocks_the_event_loop() -> None:
    """Ten probes of a dropping port run while a ticker keeps ticking every 10 ms."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = [socket.socket() for _ in range(8)]
    for c in fillers:
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(
            *(probe.reach(probe.Target("127.0.0.1", port), 0.4) for _ in range(10))
        )
    finally:
        task.cancel()
        for c in fillers:
            c.close()
        server.close()
    assert set(results) == {"no answer within 0.4 s"}
    assert ticks >= 5  # ~40 possible in 0.4 s; a blocked loop would give 0 or 1


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_a_proxy_protocol_backend_gets_the_health_check_header(
    backend: Backend, version: str
) -> None:
    assert await probe.reach(probe.Target("127.0.0.1", backend.port, version), 3) is None

    def got() -> bytes:
        assert backend.received
        return backend.received[-1]

    data = await asyncio.to_thread(eventually, got, 5)
    # The listener's own PROXY parser reads it as a complete header carrying no client.
    assert data == (probe.V1_CHECK if version == "v1" else probe.V2_CHECK)
    assert proxyproto.parse(data) == (proxyproto.Addresses(None, None), len(data))


# -- where it stands in the Ready chain -----------------------------------------------------


def facts(**changes: Any) -> status_mod.Facts:
    base = status_mod.Facts(
        generation=1,
        running=True,
        replicas=1,
        resolution=None,
        lost={},
        current_replicas=1,
        available_replicas=1,
        updated_replicas=1,
        rollout_observed=True,
        backend="127.0.0.1:25",
        backend_error="Connection refused",
    )
    return status_mod.Facts(**{**base.__dict__, **changes})


def test_backend_unreachable_comes_after_spec_group_and_conflict_checks_and_before_starting() -> (
    None
):
    v = status_mod.verdict(facts())
    # It can clear by itself (the backend comes up): Reconciling, not Stalled (kstatus).
    assert v is not None and v.reason == Reason.BACKEND_UNREACHABLE
    assert v.reconciling and not v.stalled
    assert v.message.startswith("backend 127.0.0.1:25 unreachable: Connection refused")
    missing = groups.Resolution(cidrs=(), missing=("office",), uses=frozenset({"office"}))
    assert status_mod.verdict(facts(resolution=missing)).reason == Reason.GROUP_NOT_FOUND  # type: ignore[union-attr]
    holder = conflicts.Claimant("mail", "old", "2026", frozenset())
    lost = {("192.0.2.1", 25): holder}
    assert status_mod.verdict(facts(lost=lost)).reason == Reason.LISTEN_CONFLICT  # type: ignore[union-attr]
    assert status_mod.verdict(facts(running=False, replicas=0)).reason == Reason.STOPPED  # type: ignore[union-attr]
    starting = facts(available_replicas=0)
    assert status_mod.verdict(starting).reason == Reason.BACKEND_UNREACHABLE  # type: ignore[union-attr]
    assert status_mod.verdict(facts(available_replicas=0, backend_error=None)).reason == (  # type: ignore[union-attr]
        Reason.STARTING
    )
    assert status_mod.verdict(facts(backend_error=None)) is None


# -- through the operator -------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator(emulator: EmulatorThread) -> Iterator[OperatorThread]:
    op = OperatorThread(
        emulator.url,
        Settings(
            image="mailwarden-listener:test",
            backend_probe_seconds=PERIOD,
            backend_probe_timeout=1.0,
        ),
    ).start()
    yield op
    op.stop()


def warnings(kube: Client, ns: str, name: str, reason: str) -> int:
    return sum(
        1
        for e in kube.list("v1", "Event", ns)
        if e["involvedObject"]["name"] == name and e["reason"] == reason
    )


def probes_after(op: OperatorThread, key: tuple[str, str], since: float, n: int) -> None:
    result = op.ctx.probes.get(key)
    assert result is not None and result.at > since + n * PERIOD, "not probed again yet"


def test_an_unreachable_backend_is_reported_once_and_recovers_by_itself(
    kube: Client, ns: str, operator: OperatorThread, backend: Backend
) -> None:
    kube.apply(mailservice(ns, "smtp", backend={"host": "127.0.0.1", "port": backend.port}))
    eventually(lambda: ready(kube, ns, "smtp"))

    backend.stop()
    obj = eventually(lambda: ready(kube, ns, "smtp", Reason.BACKEND_UNREACHABLE), timeout=10)
    cond = condition(obj, "Ready")
    assert cond["status"] == "False"
    assert f"127.0.0.1:{backend.port}" in cond["message"]
    assert "Connection refused" in cond["message"]
    # Applied together with its backend, a MailService must not fail Flux's or Argo CD's
    # health check: it waits (kstatus Reconciling), it is not stuck.
    assert condition(obj, "Stalled")["status"] == "False"
    assert condition(obj, "Reconciling")["status"] == "True"
    assert obj["status"]["state"] == "Running"  # the pods run; their sessions cannot relay
    eventually(lambda: _one(warnings(kube, ns, "smtp", Reason.BACKEND_UNREACHABLE)))
    # Several more probes, still unreachable: still one warning.
    since = time.monotonic()
    eventually(lambda: probes_after(operator, (ns, "smtp"), since, 3), timeout=10)
    assert warnings(kube, ns, "smtp", Reason.BACKEND_UNREACHABLE) == 1

    backend.start()
    obj = eventually(lambda: ready(kube, ns, "smtp"), timeout=10)
    assert condition(obj, "Stalled")["status"] == "False"
    eventually(lambda: _one(warnings(kube, ns, "smtp", Reason.BACKEND_REACHABLE)))

    # Down again: a second transition, a second warning.
    backend.stop()
    eventually(lambda: ready(kube, ns, "smtp", Reason.BACKEND_UNREACHABLE), timeout=10)
    eventually(lambda: _count(warnings(kube, ns, "smtp", Reason.BACKEND_UNREACHABLE), 2))


def test_a_stopped_service_is_not_probed_and_reports_stopped(
    kube: Client, ns: str, operator: OperatorThread
) -> None:
    closed = Backend()  # never started: nothing listens on its port
    kube.apply(
        mailservice(
            ns,
            "pop3",
            service="POP3",
            startup="Manual",
            backend={"host": "127.0.0.1", "port": closed.port},
        )
    )
    eventually(lambda: ready(kube, ns, "pop3", Reason.STOPPED))
    since = time.monotonic()
    # Other services' probes go on; this one has none.
    kube.apply(mailservice(ns, "canary", backend={"host": "127.0.0.1", "port": closed.port}))
    eventually(lambda: probes_after(operator, (ns, "canary"), since, 2), timeout=10)
    assert (ns, "pop3") not in operator.ctx.probes
    ready(kube, ns, "pop3", Reason.STOPPED)
    assert warnings(kube, ns, "pop3", Reason.BACKEND_UNREACHABLE) == 0
    # Started: probed at once, and unreachable.
    kube.patch(
        MW,
        "MailService",
        ns,
        "pop3",
        {"metadata": {"annotations": {models.STATE_ANNOTATION: models.RUNNING}}},
    )
    eventually(lambda: ready(kube, ns, "pop3", Reason.BACKEND_UNREACHABLE), timeout=10)


def test_a_reconcile_probes_at_once_without_waiting_for_the_period(backend: Backend) -> None:
    """Its own operator with the default 60 s period: only the probe made during the
    reconciliation can report within the deadlines here."""
    closed = Backend()
    et = EmulatorThread().start()
    op = OperatorThread(et.url, Settings(image="mailwarden-listener:test")).start()
    kube = Client(et.url)
    try:
        assert op.settings.backend_probe_seconds == 60
        start = time.monotonic()
        kube.apply(
            mailservice(
                "p", "imap", service="IMAP", backend={"host": "127.0.0.1", "port": closed.port}
            )
        )
        eventually(lambda: ready(kube, "p", "imap", Reason.BACKEND_UNREACHABLE), timeout=10)
        # A new backend in the spec: probed by that reconciliation, not in a minute.
        kube.apply(
            mailservice(
                "p", "imap", service="IMAP", backend={"host": "127.0.0.1", "port": backend.port}
            )
        )
        eventually(lambda: ready(kube, "p", "imap"), timeout=10)
        assert time.monotonic() - start < 30
        assert op.ctx.probes[("p", "imap")].target == probe.Target("127.0.0.1", backend.port)
    finally:
        kube.close()
        op.stop()
        et.stop()


def _one(n: int) -> None:
    assert n == 1, n


def _count(n: int, want: int) -> None:
    assert n == want, n
