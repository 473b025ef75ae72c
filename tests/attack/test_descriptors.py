"""Issue 12, point 5: file descriptors running out. Under `ulimit -n 256`, 400 clients of a
relayed service (two descriptors each): the starting code accepted and closed 279 of them
with no reply, no log line and no metric (libuv's EMFILE trick under uvloop). Now the
listener stops accepting before the limit, the clients it cannot take wait in the kernel's
backlog, it says so once per episode in the log and in `mailwarden_fd_shortages_total`, and
every client is served once others leave."""

from __future__ import annotations

import os
import selectors
import socket

import pytest

from tests.support.attack import (
    Deadline,
    HealthzWatch,
    ListenerProcess,
    close_all,
    open_clients,
)
from tests.support.listener import free_port, service
from tests.support.misbehaving import Behaviour

GREETING = b"220 backend\r\n"
SHORT = "file descriptors running short"


def _sort(socks: list[socket.socket], wait: float) -> tuple[list, list, list]:
    """Within `wait` seconds: (greeted, closed without a reply, still waiting)."""
    greeted: list[socket.socket] = []
    silent: list[socket.socket] = []
    pending = {s.fileno(): s for s in socks}
    got: dict[int, bytes] = {}
    deadline = Deadline(wait)
    # epoll, not select(): the test process may hold descriptors numbered past 1,024.
    with selectors.DefaultSelector() as sel:
        for fd, s in pending.items():
            sel.register(s, selectors.EVENT_READ, fd)
        while pending and not deadline.expired:
            for key, _ in sel.select(min(0.2, deadline.left)):
                fd = key.data
                if fd in pending and _take(pending, fd, got, greeted, silent):
                    sel.unregister(pending.pop(fd))
    return greeted, silent, list(pending.values())


def _take(
    pending: dict[int, socket.socket],
    fd: int,
    got: dict[int, bytes],
    greeted: list[socket.socket],
    silent: list[socket.socket],
) -> bool:
    """Read what `fd` has; True once it is sorted (greeted, or closed without a reply)."""
    s = pending[fd]
    try:
        chunk = s.recv(256)
    except OSError:
        chunk = b""
    if not chunk:
        (greeted if got.get(fd, b"").startswith(b"220") else silent).append(s)
        return True
    got[fd] = got.get(fd, b"") + chunk
    if got[fd].endswith(b"\r\n"):
        greeted.append(s)
        return True
    return False


@pytest.mark.timeout(120)
def test_out_of_descriptors_the_listener_leaves_clients_in_the_backlog_and_says_so(
    misbehaving_backend, listener_process
):
    b = misbehaving_backend(Behaviour.GREETER)
    lp = listener_process(service("attack/smtp", backend_port=b.port, backlog=1024), nofile=256)
    clients = open_clients(lp.port(), 400, distinct_sources=True, timeout=30)
    assert len(clients) == 400
    served: list[socket.socket] = []
    silent: list[socket.socket] = []
    waiting = clients
    rounds = 0
    with HealthzWatch(lp.metrics_port, timeout=3.0) as watch:
        deadline = Deadline(60)
        while waiting and not deadline.expired:
            greeted, closed, waiting = _sort(waiting, wait=3.0)
            served += greeted
            silent += closed
            rounds += 1
            if rounds == 1:
                # The first round: some served, the rest waiting, none dropped.
                assert closed == [], f"{len(closed)} of 400 closed without a reply"
                assert 50 <= len(greeted) < 400
                assert lp.metric("mailwarden_accept_paused") == 1
            close_all(greeted)  # they leave: room for those in the backlog
    assert silent == [], f"{len(silent)} clients closed without a reply"
    assert len(served) == 400, f"{len(waiting)} still waiting after {rounds} rounds"
    assert watch.failures == []
    episodes = lp.metric("mailwarden_fd_shortages_total")
    assert episodes >= 1
    assert lp.log().count(SHORT) == episodes  # once per episode
    assert "Too many open files" not in lp.log()
    assert lp.wait_metric("mailwarden_accept_paused", 0, timeout=5) == 0
    assert lp.wait_metric("mailwarden_connections_active", 0, service="attack/smtp") == 0


@pytest.mark.timeout(120)
def test_listen_f_under_a_low_limit_never_takes_running_short_for_a_broken_manifest(
    misbehaving_backend, tmp_path
):
    """`mailwarden listen -f` as the issue attacked it: 400 clients under `ulimit -n 256`
    while the manifest is edited. The starting code logged "configuration refused … Too many
    open files" and counted a failed reload; now the edit is taken and nothing is refused."""
    b = misbehaving_backend(Behaviour.GREETER)
    port = free_port()
    manifest = tmp_path / "smtp.yaml"
    text = (
        "apiVersion: mailwarden.io/v1alpha1\nkind: MailService\n"
        "metadata: {name: smtp, namespace: attack}\n"
        f"spec:\n  service: SMTP\n  listen: [{{address: 127.0.0.1, port: {port}}}]\n"
        f"  backend: {{host: 127.0.0.1, port: {b.port}}}\n"
    )
    manifest.write_text(text)
    workdir = tmp_path / "run"
    workdir.mkdir()
    lp = ListenerProcess.for_manifests([manifest], workdir, nofile=256).start()
    try:
        clients = open_clients(port, 400, distinct_sources=True, timeout=30)
        edited = manifest.with_suffix(".new")
        edited.write_text(text + "# edited under attack\n")
        os.replace(edited, manifest)
        served, silent, waiting = [], [], clients
        deadline = Deadline(60)
        while waiting and not deadline.expired:
            greeted, closed, waiting = _sort(waiting, wait=3.0)
            served += greeted
            silent += closed
            close_all(greeted)
        assert silent == []
        assert len(served) == 400
        assert lp.wait_metric("mailwarden_config_reloads_total", 2, result="success") == 2
        assert lp.metric("mailwarden_config_reloads_total", result="failure") == 0
        assert "configuration refused" not in lp.log()
        assert "Too many open files" not in lp.log()
    finally:
        lp.stop()
