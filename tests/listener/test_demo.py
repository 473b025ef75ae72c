"""The README's first command keeps working: the demo runs, shows what it promises, exits 0
and leaves nothing listening."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_demo_shows_an_admitted_session_refusals_and_metrics_and_stops_everything():
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "the SMTP server received: from alice@demo.example to bob@demo.example" in out
    assert "<- 554 5.7.1 submission Access denied" in out
    assert out.count("<- 503 5.5.1 Error: access denied, only QUIT is accepted") == 2
    assert out.count("<- 421 4.7.0 submission Error: too many connections") == 2
    assert 'mailwarden_connections_total{outcome="denied",service="demo/submission"} 1.0' in out
    assert "Traceback" not in done.stderr
    for address in (("127.0.0.10", 10587), ("127.0.0.1", 10025), ("127.0.0.1", 19090)):
        with socket.socket() as s:
            assert s.connect_ex(address) != 0, f"{address} still listening after the demo"
