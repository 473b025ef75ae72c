"""The attack suite's view of a listener (tests/attack/, marker `attack`; see README.md
there): a real `mailwarden listener --config FILE` (or `mailwarden listen -f MANIFEST`) child
process, and what a client and an operator can see of it: bytes on sockets, /healthz
latency, /metrics, the process's RSS, CPU time and open file descriptors (from /proc), its
log.

Every loop here is bounded in count and in time (`Deadline`): an attack that the listener
does not survive fails the test, it never hangs the suite.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import msgspec
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mailwarden.listener import config as lc
from tests.support.listener import free_port
from tests.support.misbehaving import Behaviour, MisbehavingBackend

T = TypeVar("T")

ATTACK_DIR = pathlib.Path(__file__).parent.parent / "attack"
START_DEADLINE = 30.0
# What the issue asks of /healthz while the listener is under attack.
HEALTHZ_BOUND = 1.0


class Deadline:
    """A time budget: `left` seconds remain; `expired` once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    @property
    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll until predicate() is truthy (returns it); fail with `what` after `timeout`."""
    deadline = Deadline(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if deadline.expired:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# -- the listener process -----------------------------------------------------------------


class ListenerProcess:
    """A listener child process with its metrics port on 127.0.0.1:`metrics_port`."""

    def __init__(
        self,
        argv: Sequence[str],
        metrics_port: int,
        workdir: pathlib.Path,
        *,
        nofile: int | None = None,
    ) -> None:
        self.argv = list(argv)
        self.metrics_port = metrics_port
        self.workdir = workdir
        self.nofile = nofile
        self.log_path = workdir / "listener.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.config: lc.ListenerConfig | None = None

    @classmethod
    def for_config(
        cls,
        cfg: lc.ListenerConfig,
        workdir: pathlib.Path,
        *,
        nofile: int | None = None,
    ) -> ListenerProcess:
        """`mailwarden listener --config FILE` for this configuration (its metrics port is
        the configuration's)."""
        path = workdir / "listener.yaml"
        if os.environ.get("MAILWARDEN_ATTACK_SOURCE"):
            # Another checkout may not know fields added since: say only what differs from
            # the defaults.
            path.write_text(yaml.safe_dump(_without_defaults(lc.to_data(cfg)), sort_keys=False))
        else:
            path.write_text(lc.dumps(cfg))
        argv = [sys.executable, "-m", "mailwarden.cli", "listener", "--config", str(path)]
        lp = cls(argv, cfg.metrics.port, workdir, nofile=nofile)
        lp.config = cfg
        return lp

    @classmethod
    def for_manifests(
        cls, paths: Sequence[pathlib.Path], workdir: pathlib.Path, *, nofile: int | None = None
    ) -> ListenerProcess:
        """`mailwarden listen -f PATH...` with a free metrics port."""
        port = free_port()
        argv = [sys.executable, "-m", "mailwarden.cli", "listen", "--metrics-port", str(port)]
        for p in paths:
            argv += ["-f", str(p)]
        return cls(argv, port, workdir, nofile=nofile)

    @property
    def config_path(self) -> pathlib.Path:
        return self.workdir / "listener.yaml"

    def port(self, service: int = 0, endpoint: int = 0) -> int:
        """The port of a service's endpoint, as the configuration the process was started
        with says (the file may have been changed since)."""
        if self.config is None:
            self.config = lc.loads(self.config_path.read_text())
        return self.config.services[service].listen[endpoint].port

    def start(self) -> ListenerProcess:
        nofile = self.nofile

        def limits() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # MAILWARDEN_ATTACK_SOURCE=<another checkout>: attack that checkout's listener (the
        # starting code, say) with this suite, to see each case fail before a fix.
        other = os.environ.get("MAILWARDEN_ATTACK_SOURCE")
        if other:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(pathlib.Path(other) / "listener"), str(pathlib.Path(other) / "operator")]
            )
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=log, preexec_fn=limits, env=env, cwd=self.workdir
        )
        log.close()
        deadline = Deadline(START_DEADLINE)
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"listener exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if http_get(self.metrics_port, "/readyz", timeout=1.0)[0] == 200:
                    return self
            if deadline.expired:
                raise AssertionError(f"listener not ready in {START_DEADLINE}s:\n{self.log()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the drain), then SIGKILL if it is not gone in `timeout`."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            return None

    # -- what /proc says -----------------------------------------------------------------

    def rss_mib(self) -> float:
        """Resident memory of the process (VmRSS), in MiB."""
        return _status_kib(self.pid, "VmRSS") / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        return cpu_seconds(self.pid)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    # -- what the metrics port says ------------------------------------------------------

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, keyed by (name, sorted labels)."""
        status, body = http_get(self.metrics_port, "/metrics", timeout=5.0)
        assert status == 200, status
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """One sample (0 when absent, as a counter that never moved)."""
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_metric(
        self, name: str, expected: float, timeout: float = 10.0, **labels: str
    ) -> float:
        deadline = Deadline(timeout)
        while True:
            value = self.metric(name, **labels)
            if value == expected or deadline.expired:
                return value
            time.sleep(0.05)

    def healthz_latency(self, timeout: float = 10.0) -> float:
        """Seconds /healthz took to answer 200."""
        return healthz_latency(self.metrics_port, timeout)


def _without_defaults(data: dict[str, Any]) -> dict[str, Any]:
    top = lc.to_data(lc.build(lc.ListenerConfig, {"services": []}))
    svc = lc.to_data(
        lc.build(
            lc.ListenerConfig,
            {
                "services": [
                    {
                        "name": "x/y",
                        "service": "SMTP",
                        "listen": [{"port": 1}],
                        "backend": {"host": "h", "port": 1},
                    }
                ]
            },
        )
    )["services"][0]
    out = {k: v for k, v in data.items() if k == "services" or top.get(k) != v}
    out["services"] = [
        {
            k: v
            for k, v in s.items()
            if k in ("name", "service", "listen", "backend") or svc.get(k) != v
        }
        for s in data["services"]
    ]
    return out


def _status_kib(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- HTTP probes ----------------------------------------------------------------------------


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP/1.0 GET on 127.0.0.1 with a raw socket: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = bytearray()
        deadline = Deadline(timeout)
        while not deadline.expired:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


def healthz_latency(port: int, timeout: float = 10.0) -> float:
    start = time.monotonic()
    status, _ = http_get(port, "/healthz", timeout)
    took = time.monotonic() - start
    assert status == 200, f"/healthz answered {status}"
    return took


class HealthzWatch:
    """Polls /healthz every `interval` seconds in a thread while an attack runs:

        with HealthzWatch(lp.metrics_port) as watch:
            attack()
        assert watch.worst < HEALTHZ_BOUND

    A probe that fails or times out counts as `timeout` seconds."""

    def __init__(self, port: int, interval: float = 0.1, timeout: float = 5.0) -> None:
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.samples: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(healthz_latency(self.port, self.timeout))
            except (OSError, AssertionError) as exc:
                self.failures.append(repr(exc))
                self.samples.append(self.timeout)
            self._stop.wait(self.interval)

    def __enter__(self) -> HealthzWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 1)

    @property
    def worst(self) -> float:
        return max(self.samples, default=0.0)


# -- clients ----------------------------------------------------------------------------


def source_address(i: int) -> str:
    """The i-th distinct loopback source address, never 127.0.0.1 (every 127/8 address is
    local, so the listener sees each as a different client)."""
    i %= 250 * 250 * 200
    return f"127.{1 + i // 62500}.{(i // 250) % 250}.{1 + i % 250}"


def connect(
    port: int, source: str = "127.0.0.1", timeout: float = 5.0, host: str = "127.0.0.1"
) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect((host, port))
    return s


def open_clients(
    port: int,
    count: int,
    *,
    distinct_sources: bool = False,
    source: str = "127.0.0.1",
    timeout: float = 30.0,
    connect_timeout: float = 5.0,
) -> list[socket.socket]:
    """`count` TCP connections (each from its own 127.x.y.z with `distinct_sources`); stops
    at `timeout` seconds and returns what it opened."""
    deadline = Deadline(timeout)
    out: list[socket.socket] = []
    for i in range(count):
        if deadline.expired:
            break
        src = source_address(i) if distinct_sources else source
        try:
            out.append(connect(port, src, timeout=min(connect_timeout, deadline.left + 0.1)))
        except OSError:
            continue
    return out


def close_all(socks: Sequence[socket.socket], *, reset: bool = False) -> None:
    """Close clients (with a TCP RST when `reset`)."""
    for s in socks:
        with contextlib.suppress(OSError):
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            s.close()


def recv_some(s: socket.socket, timeout: float = 5.0, limit: int = 65536) -> bytes:
    """What arrives within `timeout` (b"" on EOF or reset, or if nothing came)."""
    s.settimeout(timeout)
    try:
        return s.recv(limit)
    except (TimeoutError, ConnectionError, OSError):
        return b""


def recv_until(
    s: socket.socket, marker: bytes, timeout: float = 5.0, limit: int = 1 << 20
) -> bytes:
    """Bytes until `marker` is seen, EOF, `limit` bytes or `timeout` seconds."""
    deadline = Deadline(timeout)
    out = bytearray()
    while marker not in out and len(out) < limit and not deadline.expired:
        s.settimeout(max(0.01, deadline.left))
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionError, OSError):
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def send_paced(s: socket.socket, chunks: Iterator[bytes] | Sequence[bytes], timeout: float) -> int:
    """Send chunks until they run out, the peer goes or `timeout` passes: bytes sent."""
    deadline = Deadline(timeout)
    sent = 0
    for chunk in chunks:
        if deadline.expired:
            break
        s.settimeout(max(0.01, deadline.left))
        try:
            s.sendall(chunk)
        except OSError:
            break
        sent += len(chunk)
    return sent


# -- fixtures (registered in tests/conftest.py's pytest_plugins) --------------------------


@pytest.fixture
def misbehaving_backend() -> Iterator[Callable[..., MisbehavingBackend]]:
    """misbehaving_backend(Behaviour.SILENT, **options) -> a started MisbehavingBackend,
    stopped at the end of the test."""
    started: list[MisbehavingBackend] = []

    def start(behaviour: Behaviour, **options: Any) -> MisbehavingBackend:
        b = MisbehavingBackend(behaviour, **options).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def listener_process(
    tmp_path: pathlib.Path,
) -> Iterator[Callable[..., ListenerProcess]]:
    """listener_process(*services, nofile=None, **ListenerConfig fields) -> a started
    `mailwarden listener --config` process (metrics on a free 127.0.0.1 port), stopped at
    the end of the test. Its log is printed if the test fails."""
    started: list[ListenerProcess] = []

    def start(
        *services: lc.ServiceConfig, nofile: int | None = None, **fields: Any
    ) -> ListenerProcess:
        fields.setdefault("drain_seconds", 2.0)
        # Other test runs on the machine may take a port between free_port() and the bind:
        # try again with fresh ports (tests read the ports from `lp.port()`).
        for attempt in range(3):
            if attempt:
                services = tuple(_fresh_ports(s) for s in services)
            cfg = lc.build(
                lc.ListenerConfig,
                {
                    "services": services,
                    "metrics": fields.get("metrics")
                    or lc.Metrics(address="127.0.0.1", port=free_port()),
                    **{k: v for k, v in fields.items() if k != "metrics"},
                },
            )
            workdir = tmp_path / f"listener-{len(started)}"
            workdir.mkdir()
            lp = ListenerProcess.for_config(cfg, workdir, nofile=nofile)
            started.append(lp)
            try:
                return lp.start()
            except AssertionError:
                if "address already in use" not in lp.log().lower() or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    yield start
    for lp in started:
        lp.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/attack/ carries the `attack` marker: `pytest -m attack` runs the
    suite alone, `-m "not attack"` leaves it out."""
    for item in items:
        if ATTACK_DIR in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.attack)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and call.when == "call":
        for name in ("listener_process",):
            if name in getattr(item, "funcargs", {}):
                report.sections.append(("listener logs", _logs(item)))
    return report


def _fresh_ports(svc: lc.ServiceConfig) -> lc.ServiceConfig:
    listen = tuple(
        msgspec.structs.replace(ep, port=free_port(ep.address or "127.0.0.1")) for ep in svc.listen
    )
    return msgspec.structs.replace(svc, listen=listen)


def _logs(item: pytest.Item) -> str:
    tmp = item.funcargs.get("tmp_path")  # type: ignore[attr-defined]
    if tmp is None:
        return ""
    return "\n".join(
        f"--- {p}\n{p.read_text(errors='replace')[-4000:]}"
        for p in sorted(pathlib.Path(tmp).glob("listener-*/listener.log"))
    )
