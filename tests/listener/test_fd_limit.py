"""The open-file limit (issue 12, point 5): the listener raises its soft RLIMIT_NOFILE to the
hard limit at start, and says both on /metrics. Before: a listener started with the common
default soft limit of 1024 (256 here) ran out of descriptors at that, whatever the hard limit."""

from __future__ import annotations

import http.client
import pathlib
import re
import resource
import subprocess
import sys

from mailwarden.listener import config as lc
from tests.support.listener import free_port, service, wait_until


def get(port: int, path: str) -> tuple[int, str]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    except OSError:
        return 0, ""


def test_the_soft_open_file_limit_is_raised_to_the_hard_one_and_both_are_exported(tmp_path):
    cfg = lc.build(
        lc.ListenerConfig,
        {
            "services": [service("mail/smtp", "SMTP")],
            "metrics": {"address": "127.0.0.1", "port": free_port()},
        },
    )
    path = tmp_path / "listener.json"
    path.write_text(lc.dumps(cfg, "json"))
    _, hard_here = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = 4096 if hard_here == resource.RLIM_INFINITY else min(4096, hard_here)

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    proc = subprocess.Popen(
        [sys.executable, "-m", "mailwarden.listener", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=limits,
    )
    try:
        wait_until(lambda: get(cfg.metrics.port, "/readyz")[0] == 200, 30, "the listener")
        proc_limits = pathlib.Path(f"/proc/{proc.pid}/limits").read_text()
        soft_now = re.search(r"^Max open files\s+(\d+)\s+(\d+)", proc_limits, re.M)
        assert soft_now is not None
        assert (int(soft_now[1]), int(soft_now[2])) == (hard, hard)
        _, metrics = get(cfg.metrics.port, "/metrics")
        assert f'mailwarden_open_files_limit{{limit="soft"}} {float(hard)}' in metrics
        assert f'mailwarden_open_files_limit{{limit="hard"}} {float(hard)}' in metrics
        # And the descriptors held now, read at the scrape (a few sockets and files).
        held = re.search(r"^mailwarden_open_files (\S+)$", metrics, re.M)
        assert held is not None
        assert 3 <= float(held[1]) < 64
    finally:
        proc.terminate()
        proc.wait(10)
