"""Issue 12, point 8 (the file side): what the configuration file may do to a running
listener. An empty file, or one cut before `services:`, is a broken file: the ports stay
open with the last good configuration. A huge file is refused unread and costs one stat per
poll, not a read and a hash of all its bytes every second.

Figures on the starting code: an empty file closed every port (taken as "no services"); a
100 MiB file was accepted and re-read and re-hashed every second."""

from __future__ import annotations

import os
import pathlib
import time

import pytest

from tests.support.attack import ListenerProcess, connect, recv_until
from tests.support.listener import service
from tests.support.misbehaving import Behaviour

RELOADS = "mailwarden_config_reloads_total"
GREETING = b"220 backend\r\n"


def _replace(path: pathlib.Path, data: bytes) -> None:
    """Swap the file at once, as Kubernetes swaps a mounted ConfigMap."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _still_serving(lp: ListenerProcess) -> bool:
    with connect(lp.port()) as s:
        return recv_until(s, b"\r\n") == GREETING


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [b"", b"version: 1\n", b"version: 1\nmetrics:\n  address: 127.0.0.1\n"],
    ids=["empty", "cut-before-services", "cut-after-metrics"],
)
def test_an_empty_or_cut_file_keeps_the_last_good_configuration(
    misbehaving_backend, listener_process, text
):
    b = misbehaving_backend(Behaviour.GREETER)
    lp = listener_process(service("attack/smtp", backend_port=b.port))
    port = lp.port()
    good = lp.config_path.read_bytes()
    assert _still_serving(lp)
    _replace(lp.config_path, text)
    assert lp.wait_metric(RELOADS, 1, timeout=10, result="failure") == 1
    assert "services: []" in lp.log()
    assert _still_serving(lp)
    # The file fixed again: nothing to change, the ports never closed.
    _replace(lp.config_path, good)
    assert lp.wait_metric(RELOADS, 2, timeout=10, result="success") == 2
    assert lp.port() == port
    assert _still_serving(lp)


@pytest.mark.timeout(90)
def test_a_100_mib_file_is_refused_unread_and_not_hashed_every_second(
    misbehaving_backend, listener_process
):
    """The bound: under 0.5 s of listener CPU over 5 polls of a 100 MiB file, RSS up by less
    than 20 MiB, one failed reload, and the service still served."""
    b = misbehaving_backend(Behaviour.GREETER)
    lp = listener_process(service("attack/smtp", backend_port=b.port))
    good = lp.config_path.read_bytes()
    padding = (b"# " + b"x" * 1021 + b"\n") * 1024  # 1 MiB of comment lines
    tmp = lp.config_path.with_suffix(".new")
    with tmp.open("wb") as f:
        f.write(good)
        for _ in range(100):
            f.write(padding)
    rss = lp.rss_mib()
    os.replace(tmp, lp.config_path)
    assert lp.wait_metric(RELOADS, 1, timeout=20, result="failure") == 1
    assert "more than the 1048576" in lp.log()
    cpu = lp.cpu_seconds()
    time.sleep(5)
    used = lp.cpu_seconds() - cpu
    assert used < 0.5, f"{used:.2f} s of CPU in 5 s next to a 100 MiB file"
    assert lp.rss_mib() - rss < 20
    assert lp.metric(RELOADS, result="failure") == 1
    assert _still_serving(lp)
