"""Child processes of a benchmark run and what /proc says about them.

Every child starts in its own session (process group) and is stopped by group: HAProxy,
the backend, the listener and the load generators never outlive a run."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark step that did not happen as it must (a child died, a timeout)."""


# Scheduling priority (nice value) for every child; None leaves it alone. On a machine shared
# with other work, a negative value (root only) keeps that work from skewing the figures;
# both front ends, the backend and the load generators get the same one.
NICE: int | None = None


def prepare_child() -> None:
    """preexec_fn: lift the soft open-file limit to the hard one; apply NICE."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if NICE is not None:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14, stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


# Each child's stderr goes to a temporary file, never a pipe: a chatty child must not block
# on a full pipe in the middle of a measurement.
_stderr: dict[int, IO[str]] = {}


def start(
    argv: Sequence[str], *, stdin: bool = False, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        start_new_session=True,
        preexec_fn=prepare_child,
        cwd=ROOT,
        env=env,
    )
    _stderr[proc.pid] = err
    return proc


def stderr_tail(proc: subprocess.Popen[str], size: int = 2000) -> str:
    err = _stderr.get(proc.pid)
    if err is None:
        return ""
    err.seek(0)
    return err.read()[-size:]


def stop(proc: subprocess.Popen[str], grace: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it is still there after `grace`.
    Only while the leader is alive: once it is reaped its id may belong to someone else."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(grace)
    for stream in (proc.stdin, proc.stdout, _stderr.pop(proc.pid, None)):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


@contextlib.contextmanager
def running(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        stop(proc)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise BenchError(f"{proc.args!r}: no output within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        proc.poll()
        raise BenchError(f"{proc.args!r} ended (status {proc.returncode}): {stderr_tail(proc)}")
    return line


def wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """Poll until a server answers an SMTP greeting on `port` (or its process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode}: {stderr_tail(proc)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"nothing answers on port {port} after {timeout}s")


class LoadGen:
    """One load-generator process and its JSON-lines conversation."""

    def __init__(self, scenario: str, port: int, *args: str | int | float) -> None:
        argv = [sys.executable, "-m", "bench.loadgen", scenario, "--port", str(port)]
        self.proc = start([*argv, *(str(a) for a in args)], stdin=True)

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"load generator: no {event!r} within {timeout}s")
            line = read_line(self.proc, left)
            try:
                msg: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue
            if msg.get("event") == event:
                return msg

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        stop(self.proc)

    def __enter__(self) -> LoadGen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
