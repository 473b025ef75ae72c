"""SIGTERM drains a real listener process: it stops accepting, reports not ready, lets open
sessions finish (a message in the middle of DATA is delivered), cuts what is left when the
drain period is over, and exits 0."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time

import httpx
import pytest

from mailwarden.listener import config as lc
from tests.support import mail_servers as servers
from tests.support import wire
from tests.support.listener import free_port, service, wait_until

pytestmark = pytest.mark.servers

EXIT_DEADLINE = 30.0


class ListenerProcess:
    def __init__(self, tmp: pathlib.Path, svc: lc.ServiceConfig, drain_seconds: float) -> None:
        self.metrics_port = free_port()
        self.port = svc.listen[0].port
        cfg = lc.ListenerConfig(
            services=(svc,),
            metrics=lc.Metrics(address=wire.HOST, port=self.metrics_port),
            drain_seconds=drain_seconds,
        )
        self.config = tmp / "listener.yaml"
        self.config.write_text(lc.dumps(cfg))
        self.log = tmp / "listener.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailwarden.cli", "listener", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(lambda: self.readyz() == 200 or self.proc.poll() is not None, what="ready")
        assert self.proc.poll() is None, self.log.read_text()

    def readyz(self) -> int | None:
        try:
            return httpx.get(
                f"http://{wire.HOST}:{self.metrics_port}/readyz", timeout=2
            ).status_code
        except httpx.HTTPError:
            return None

    def accepts(self) -> bool:
        try:
            socket.create_connection((wire.HOST, self.port), timeout=2).close()
        except ConnectionRefusedError:
            return False
        return True

    def terminate(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)

    def wait(self) -> int:
        return self.proc.wait(EXIT_DEADLINE)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def listener_process(tmp_path):
    started: list[ListenerProcess] = []

    def start(svc: lc.ServiceConfig, drain_seconds: float) -> ListenerProcess:
        p = ListenerProcess(tmp_path, svc, drain_seconds)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture(params=["postfix", "aiosmtpd"])
def smtp_backend(request, smtp_sink):
    """(port, wait for a message containing the marker) of a real SMTP server."""
    if request.param == "aiosmtpd":
        yield smtp_sink.port, smtp_sink.inbox.wait_for
        return
    servers.require(servers.POSTFIX)
    store = servers.make_mail_store()
    postfix = servers.make_postfix(store).start()

    def delivered(marker: bytes, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            for message in store.messages():
                if marker in message:
                    return message
            assert time.monotonic() < deadline, "the message did not reach the mailbox"
            time.sleep(0.05)

    try:
        yield postfix.port, delivered
    finally:
        postfix.stop()
        shutil.rmtree(postfix.dir, ignore_errors=True)
        shutil.rmtree(store.root, ignore_errors=True)


def test_a_message_in_the_middle_of_data_when_sigterm_arrives_is_delivered(
    listener_process, smtp_backend
):
    port, delivered = smtp_backend
    lp = listener_process(service(kind="SMTP", backend_port=port), drain_seconds=30)
    client = smtplib.SMTP(wire.HOST, lp.port, timeout=10)
    client.ehlo("drain.test")
    client.mail("sender@example.test")
    client.rcpt("alice@test.example")
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(b"Subject: drained\r\n\r\nfirst half of the message\r\n")

    started = time.monotonic()
    lp.terminate()
    wait_until(lambda: lp.readyz() == 503, what="/readyz to report not ready")
    wait_until(lambda: not lp.accepts(), what="the listener to stop accepting")
    assert lp.proc.poll() is None  # still draining: the session is open

    client.send(b"second half, sent during the drain\r\n.\r\n")
    assert client.getreply()[0] == 250
    client.quit()
    assert lp.wait() == 0
    # It left as soon as the last session ended, not at the end of the drain period.
    assert time.monotonic() - started < 15
    content = delivered(b"second half, sent during the drain")
    assert b"first half of the message" in content


def test_sessions_still_open_at_the_end_of_the_drain_period_are_closed_and_the_exit_is_clean(
    listener_process, smtp_sink
):
    lp = listener_process(service(kind="SMTP", backend_port=smtp_sink.port), drain_seconds=1)
    client = smtplib.SMTP(wire.HOST, lp.port, timeout=10)
    client.ehlo("idle.test")
    started = time.monotonic()
    lp.terminate()
    assert lp.wait() == 0
    assert 1 <= time.monotonic() - started < 10
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    assert "draining for up to 1.0s" in lp.log.read_text()
