"""Running a real server in the foreground under a test fixture: start-up deadlines, logs,
and stopping by PID (this init does not reap orphans, so nothing is daemonised)."""

from __future__ import annotations

import pathlib
import re
import socket
import subprocess
import tempfile
import time

import pytest

START_DEADLINE = 30.0


class ServerFailed(RuntimeError):
    pass


def require(*paths: str | pathlib.Path) -> None:
    """Skip the test (with the reason) when a server binary is not installed."""
    for p in paths:
        if not pathlib.Path(p).exists():
            pytest.skip(f"{p} is not installed (scripts/install-debian-packages installs it)")


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], log: pathlib.Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            why = "exited" if proc.poll() is not None else "did not answer in time"
            raise ServerFailed(f"{proc.args!r} {why} on {host}:{port}; log:\n{read_log(log)}")
        time.sleep(0.05)


def read_log(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return "(no log)"


def wait_log(path: pathlib.Path, pattern: str, timeout: float = 10.0) -> re.Match[str]:
    """Poll a server log until a line matches `pattern`."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        found = rx.search(read_log(path))
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not in {path}:\n{read_log(path)[-3000:]}")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def private_dir(prefix: str) -> pathlib.Path:
    # Not pytest's tmp_path: its parents are 0700, and the servers drop privileges.
    path = pathlib.Path(tempfile.mkdtemp(prefix=f"mailwarden-{prefix}-"))
    path.chmod(0o755)
    return path
