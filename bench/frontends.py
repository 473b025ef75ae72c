"""The two front ends under test, configured with the same policy: connections from
127.0.0.0/8 only, a cap on relayed sessions with an SMTP `421` line for the clients over it,
metrics on, relaying to the same backend.

HAProxy has no built-in way to answer a TCP client with text, so the refusal lines come from
two small Lua services (`core.register_service(..., "tcp", ...)`): a `use_backend` rule sends
a connection to the `over_cap` backend when `be_conn(relay)` (sessions attached to the relay
backend, counted in HAProxy's single thread, so check and count are one step) has reached the
cap, and that backend's `tcp-request content use-service lua.over_cap` writes the 421 line
and closes. Addresses outside the ACL get the 554 line from another Lua service the same way.

`--policy abuse` adds a per-address rate limit and auto-ban to both, set high enough that the
benchmark's one client address never trips them: what is measured is the cost of keeping the
per-address tables on every connection. The listener gets `rate_limit` and `auto_ban` (every
refusal then also counts as a failure); HAProxy a stick table tracking each source's
connection rate over 60 s, with a reject rule on it (HAProxy's usual rate limit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Iterator

import yaml

from bench import procs

HAPROXY = os.environ.get("HAPROXY", "/usr/sbin/haproxy")
ALLOW = "127.0.0.0/8"
HOSTNAME = "bench.test"
OVER_CAP_LINE = f"421 4.7.0 {HOSTNAME} Error: too many connections, try again later"
DENIED_LINE = f"554 5.7.1 {HOSTNAME} Access denied: your address is not allowed to use this service"

LUA = f"""
core.register_service("over_cap", "tcp", function(applet)
  applet:send("{OVER_CAP_LINE}\\r\\n")
end)
core.register_service("denied", "tcp", function(applet)
  applet:send("{DENIED_LINE}\\r\\n")
end)
"""

# The abuse policy of `--policy abuse`: never reached by one client at benchmark rates, but
# checked and counted on every connection. The flood refuses up to ~10,000 connections a
# second here, each a failure: a ban would need 10,000 within 0.25 s (40,000 a second); the
# sessions benchmark admits a few thousand a second, far from 1,000,000 a minute.
RATE_PER_MINUTE = 1_000_000
BAN_AFTER_FAILURES = 10_000
BAN_WITHIN_SECONDS = 0.25
POLICIES = ("none", "abuse")

HAPROXY_ABUSE = """
    stick-table type ip size 100k expire 60s store conn_rate(60s)
    tcp-request connection track-sc0 src
    tcp-request connection reject if {{ sc0_conn_rate gt {rate} }}"""

HAPROXY_CFG = """
global
    nbthread 1
    maxconn {maxconn}
    lua-load {lua}

defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s

frontend smtp
    bind 127.0.0.1:{smtp_port}{abuse_smtp}
    acl allowed src {allow}
    tcp-request content use-service lua.denied if !allowed
    use_backend over_cap if {{ be_conn(relay) ge {cap} }}
    default_backend relay

frontend stream
    bind 127.0.0.1:{stream_port}{abuse_stream}
    acl allowed src {allow}
    tcp-request content use-service lua.denied if !allowed
    default_backend stream

backend relay
    server backend 127.0.0.1:{backend_smtp}

backend over_cap
    tcp-request content use-service lua.over_cap

backend stream
    server backend 127.0.0.1:{backend_stream}

frontend stats
    mode http
    bind 127.0.0.1:{metrics_port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
"""


@dataclasses.dataclass
class Backend:
    smtp_port: int
    stream_port: int


@dataclasses.dataclass
class Running:
    name: str
    pid: int
    smtp_port: int
    stream_port: int


def have_haproxy() -> bool:
    return shutil.which(HAPROXY) is not None


@contextlib.contextmanager
def backend() -> Iterator[Backend]:
    b = Backend(procs.free_port(), procs.free_port())
    argv = [sys.executable, "-m", "bench.backend", "--smtp-port", str(b.smtp_port)]
    proc = procs.start([*argv, "--source-port", str(b.stream_port)])
    with procs.running(proc):
        if procs.read_line(proc, 15).strip() != "ready":
            raise procs.BenchError("backend did not start")
        yield b


@contextlib.contextmanager
def haproxy(be: Backend, cap: int, policy: str = "none") -> Iterator[Running]:
    with tempfile.TemporaryDirectory(prefix="bench-haproxy-") as tmp:
        d = pathlib.Path(tmp)
        (d / "refuse.lua").write_text(LUA)
        smtp_port, stream_port = procs.free_port(), procs.free_port()
        (d / "haproxy.cfg").write_text(
            HAPROXY_CFG.format(
                maxconn=9500,
                lua=d / "refuse.lua",
                smtp_port=smtp_port,
                stream_port=stream_port,
                metrics_port=procs.free_port(),
                allow=ALLOW,
                cap=cap,
                backend_smtp=be.smtp_port,
                backend_stream=be.stream_port,
                abuse_smtp=HAPROXY_ABUSE.format(rate=RATE_PER_MINUTE) if policy == "abuse" else "",
                abuse_stream=HAPROXY_ABUSE.format(rate=RATE_PER_MINUTE)
                if policy == "abuse"
                else "",
            )
        )
        proc = procs.start([HAPROXY, "-db", "-f", str(d / "haproxy.cfg")])
        with procs.running(proc):
            procs.wait_port(smtp_port, proc)
            yield Running("HAProxy", proc.pid, smtp_port, stream_port)


def listener_config(
    be: Backend, cap: int, smtp_port: int, stream_port: int, policy: str = "none"
) -> dict[str, object]:
    def service(name: str, port: int, backend_port: int, max_connections: int) -> dict[str, object]:
        abuse: dict[str, object] = {}
        if policy == "abuse":
            abuse = {
                "rate_limit": {"connections_per_minute": RATE_PER_MINUTE},
                "auto_ban": {
                    "after_failures": BAN_AFTER_FAILURES,
                    "within_seconds": BAN_WITHIN_SECONDS,
                },
            }
        return {
            **abuse,
            "name": f"bench/{name}",
            "service": "SMTP",
            "listen": [{"address": "127.0.0.1", "port": port}],
            "allow": [ALLOW],
            "max_connections": max_connections,
            "backend": {"host": "127.0.0.1", "port": backend_port},
            "hostname": HOSTNAME,
        }

    return {
        "version": 1,
        "services": [
            service("smtp", smtp_port, be.smtp_port, cap),
            service("stream", stream_port, be.stream_port, 0),
        ],
        "metrics": {"address": "127.0.0.1", "port": procs.free_port()},
        "drain_seconds": 0,
    }


def mailwarden_command() -> list[str]:
    script = pathlib.Path(sys.executable).parent / "mailwarden"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mailwarden.cli"]


@contextlib.contextmanager
def mailwarden(
    be: Backend, cap: int, source: str | None = None, policy: str = "none"
) -> Iterator[Running]:
    """The listener from this checkout, or (`source`: another checkout's root) from there,
    to compare two versions in one run."""
    with tempfile.TemporaryDirectory(prefix="bench-mailwarden-") as tmp:
        smtp_port, stream_port = procs.free_port(), procs.free_port()
        path = pathlib.Path(tmp) / "listener.yaml"
        path.write_text(yaml.safe_dump(listener_config(be, cap, smtp_port, stream_port, policy)))
        env = None
        if source is not None:
            root = pathlib.Path(source).resolve()
            env = dict(os.environ, PYTHONPATH=f"{root / 'listener'}:{root / 'operator'}")
        proc = procs.start([*mailwarden_command(), "listener", "--config", str(path)], env=env)
        with procs.running(proc):
            procs.wait_port(smtp_port, proc)
            yield Running("mailwarden", proc.pid, smtp_port, stream_port)


def frontend(
    name: str, be: Backend, cap: int, policy: str = "none"
) -> contextlib.AbstractContextManager[Running]:
    """`haproxy`, `mailwarden`, or `mailwarden@DIR` (the listener of another checkout).
    `policy`: "none", or "abuse" (a per-address rate limit and auto-ban on both)."""
    if name == "haproxy":
        return haproxy(be, cap, policy)
    if name == "mailwarden":
        return mailwarden(be, cap, policy=policy)
    if name.startswith("mailwarden@"):
        return mailwarden(be, cap, name.split("@", 1)[1], policy)
    raise ValueError(f"unknown front end {name!r}")


def known(name: str) -> bool:
    return name in ("haproxy", "mailwarden") or name.startswith("mailwarden@")
