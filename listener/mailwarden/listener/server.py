"""The listener process's services: binding, reloading a new configuration without dropping
sessions, timeouts, and the drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import ssl
import time

from mailwarden.listener import config, descriptors, figures, runtime
from mailwarden.listener import metrics as m

log = logging.getLogger(__name__)


class ReloadError(RuntimeError):
    """A new configuration that could not be put in force; the old one stays."""


@dataclasses.dataclass
class Paused:
    """A server closed while descriptors run short, and its listening sockets kept open."""

    rt: runtime.ServiceRuntime
    endpoint: config.Endpoint
    # The endpoint's server in rt.servers when accepting stopped.
    server: asyncio.Server
    socks: list[socket.socket]


class Listener:
    def __init__(self, cfg: config.ListenerConfig, metrics: m.Metrics | None = None) -> None:
        self.config = cfg
        self.metrics = metrics if metrics is not None else m.Metrics()
        self.services: dict[str, runtime.ServiceRuntime] = {}
        # Services removed by a reload whose sessions are still finishing.
        self.retired: list[runtime.ServiceRuntime] = []
        self.draining = False
        self.started = False
        self._sweeper: asyncio.Task[None] | None = None
        # Accepting stops while file descriptors run short (descriptors.py): the servers
        # closed then, each with duplicates of its listening sockets that keep the kernel's
        # backlog (and the port) until accepting resumes.
        self._fds = descriptors.Budget()
        self._paused: list[Paused] | None = None
        self._pausing = False
        # Servers made on resuming for the second and later sockets of an endpoint bound on
        # every address (IPv4 and IPv6): rt.servers holds one server per endpoint.
        self._secondary: dict[tuple[int, config.Endpoint], list[asyncio.Server]] = {}

    @property
    def ready(self) -> bool:
        return self.started and not self.draining

    def endpoints(self) -> dict[str, list[tuple[str, int]]]:
        """Where each service actually listens (the ports the kernel gave, for port 0)."""
        out: dict[str, list[tuple[str, int]]] = {}
        for name, rt in self.services.items():
            out[name] = [
                (sock.getsockname()[0], sock.getsockname()[1])
                for server in rt.servers.values()
                for sock in server.sockets
            ]
        return out

    def figures(self) -> list[figures.Service]:
        """The live figures of each service in force (GET /status)."""
        return [
            figures.Service(
                name=name,
                active=rt.limiter.active,
                window=rt.metrics.window,
                banned_addresses=rt.guard.banned_now(rt.loop.time()),
            )
            for name, rt in self.services.items()
        ]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._apply(self.config, loop)
        except ReloadError:
            for rt in self.services.values():
                rt.stop_accepting()
            raise
        self.metrics.reloads.labels("success").inc()
        self.metrics.last_reload.set(time.time())
        self._sweeper = loop.create_task(self._sweep_forever())
        self.started = True

    async def reload(self, cfg: config.ListenerConfig) -> None:
        """Put a new configuration in force; on failure nothing changes and ReloadError says
        why."""
        try:
            await self._apply(cfg, asyncio.get_running_loop())
        except ReloadError as exc:
            self.metrics.reloads.labels("failure").inc()
            log.error("configuration refused, keeping the last good one: %s", exc)
            raise
        self.config = cfg
        self.metrics.reloads.labels("success").inc()
        self.metrics.last_reload.set(time.time())
        log.info("configuration reloaded: %d services", len(cfg.services))

    def reject(self, why: str) -> None:
        """Count and log a configuration that could not even be read."""
        self.metrics.reloads.labels("failure").inc()
        log.error("configuration refused, keeping the last good one: %s", why)

    async def _apply(self, cfg: config.ListenerConfig, loop: asyncio.AbstractEventLoop) -> None:
        new = {s.name: s for s in cfg.services}
        # 1. Everything that can fail, without touching what runs: TLS files and sockets.
        staged: dict[str, runtime.ServiceRuntime] = {}
        bound: list[tuple[runtime.ServiceRuntime, config.Endpoint, asyncio.Server]] = []
        # A service removed by an earlier reload whose sessions are still open comes back as
        # the same runtime: its open sessions keep counting against its caps.
        revived = {
            rt.config.name: rt
            for rt in self.retired
            if rt.config.name in new and rt.config.name not in self.services
        }
        try:
            for name, scfg in new.items():
                rt = self.services.get(name) or revived.get(name)
                if rt is None:
                    rt = runtime.ServiceRuntime(scfg, self.metrics, loop)
                    rt.on_accept = self._accepted
                    staged[name] = rt
                elif scfg != rt.config:
                    runtime.check_tls(scfg)
                for ep in scfg.listen:
                    if ep not in rt.servers and not self._held_elsewhere(ep, name):
                        bound.append((rt, ep, await rt.bind(ep)))
        except (OSError, ValueError, ssl.SSLError) as exc:
            for _, _, server in bound:
                server.close()
            for name in staged:
                self.metrics.forget(name)
            raise ReloadError(str(exc)) from exc
        # 2. Nothing below can fail: swap.
        for rt, ep, server in bound:
            rt.servers[ep] = server
        for name, rt in revived.items():
            self.retired.remove(rt)
            self.services[name] = rt
        for name, scfg in new.items():
            if name in staged:
                self.services[name] = staged[name]
            else:
                rt = self.services[name]
                if scfg != rt.config:
                    rt.apply(scfg)
                for ep in list(rt.servers):
                    if ep not in scfg.listen:
                        rt.servers.pop(ep).close()
                        self._close_secondary(rt, ep)
        # Endpoints handed from one service to another in the same reload.
        for name, scfg in new.items():
            rt = self.services[name]
            for ep in scfg.listen:
                if ep not in rt.servers:
                    try:
                        rt.servers[ep] = await rt.bind(ep)
                    except OSError as exc:
                        log.error("%s: cannot take over %s:%s: %s", name, ep.address, ep.port, exc)
        for name in [n for n in self.services if n not in new]:
            rt = self.services.pop(name)
            rt.stop_accepting()
            self._close_secondary(rt)
            if rt.sessions:
                self.retired.append(rt)
            else:
                self.metrics.forget(name)

    def _held_elsewhere(self, ep: config.Endpoint, name: str) -> bool:
        return any(ep in rt.servers for n, rt in self.services.items() if n != name)

    async def _sweep_forever(self) -> None:
        while True:
            runtimes = [*self.services.values(), *self.retired]
            interval = min(
                [1.0]
                + [
                    max(0.05, min(t.handshake, t.idle, t.refusal) / 4)
                    for t in (rt.config.timeouts for rt in runtimes)
                ]
            )
            await asyncio.sleep(interval)
            for rt in runtimes:
                rt.sweep()
            await self._check_descriptors()
            for rt in [r for r in self.retired if not r.sessions]:
                self.retired.remove(rt)
                if rt.config.name not in self.services:
                    self.metrics.forget(rt.config.name)

    # -- file descriptors (issue 12, point 5) -------------------------------------------------

    def _clients(self) -> int:
        return sum(len(rt.sessions) for rt in (*self.services.values(), *self.retired))

    def _accepted(self) -> None:
        """Every accepted connection: stop accepting before descriptors run out. (The
        check itself is a sum over services; the servers are closed one loop turn later,
        not inside uvloop's accept callback.)"""
        if self._paused is not None or self._pausing or self.draining:
            return
        if self._fds.short(self._clients()):
            self._pausing = True
            asyncio.get_running_loop().call_soon(self._pause)

    def _pause(self) -> None:
        self._pausing = False
        clients = self._clients()
        open_now = self._fds.measure(clients)
        if self._paused is not None or self.draining or not self._fds.short(clients):
            return
        paused: list[Paused] = []
        for rt in self.services.values():
            for ep, server in rt.servers.items():
                for srv in [server, *self._secondary.pop((id(rt), ep), [])]:
                    try:
                        socks = [socket.socket(fileno=os.dup(s.fileno())) for s in srv.sockets]
                    except OSError as exc:
                        log.error("cannot stop accepting on %s: %s", ep, exc)
                        continue
                    srv.close()
                    paused.append(Paused(rt, ep, server, socks))
        self._paused = paused
        self.metrics.fd_shortages.inc()
        self.metrics.accept_paused.set(1)
        log.warning(
            "file descriptors running short (%d open, limit %d): not accepting new "
            "connections until some are free; they wait in the kernel's backlog",
            open_now,
            self._fds.limit,
        )

    async def _check_descriptors(self) -> None:
        """From the sweeper: measure when near the limit, and resume accepting once enough
        descriptors are free again."""
        clients = self._clients()
        if self._paused is None:
            if self._fds.near(clients):
                self._fds.measure(clients)
            return
        open_now = self._fds.measure(clients)
        if not self._fds.recovered(open_now) or self.draining:
            return
        paused, self._paused = self._paused, None
        self.metrics.accept_paused.set(0)
        services = list(self.services.values())
        live = [p for p in paused if p.rt in services and p.rt.servers.get(p.endpoint) is p.server]
        for p in paused:
            if p not in live:
                for sock in p.socks:
                    sock.close()
        replaced: set[tuple[int, config.Endpoint]] = set()
        for p in live:
            key = (id(p.rt), p.endpoint)
            for sock in p.socks:
                try:
                    server = await p.rt.bind(p.endpoint, sock)
                except OSError as exc:
                    sock.close()
                    log.error("cannot accept again on %s: %s", p.endpoint, exc)
                    continue
                if key in replaced:
                    self._secondary.setdefault(key, []).append(server)
                else:
                    p.rt.servers[p.endpoint] = server
                    replaced.add(key)
        log.info("accepting again (%d descriptors open, limit %d)", open_now, self._fds.limit)

    def _close_secondary(
        self, rt: runtime.ServiceRuntime, ep: config.Endpoint | None = None
    ) -> None:
        for key in [k for k in self._secondary if k[0] == id(rt) and ep in (None, k[1])]:
            for server in self._secondary.pop(key):
                server.close()

    def _forget_paused(self) -> None:
        paused, self._paused = self._paused, None
        for p in paused or []:
            for sock in p.socks:
                sock.close()

    def reload_tls(self) -> None:
        for rt in self.services.values():
            rt.reload_tls()

    async def drain(self, seconds: float | None = None) -> int:
        """Stop accepting, let sessions finish for `seconds`, then close what is left.
        Returns how many sessions had to be cut."""
        seconds = self.config.drain_seconds if seconds is None else seconds
        self.draining = True
        self.metrics.draining.set(1)
        runtimes = [*self.services.values(), *self.retired]
        for rt in runtimes:
            rt.stop_accepting()
            self._close_secondary(rt)
        self._forget_paused()
        waiting = [asyncio.ensure_future(rt.wait_idle()) for rt in runtimes]
        if waiting:
            _, still = await asyncio.wait(waiting, timeout=seconds)
            for w in still:
                w.cancel()
        cut = 0
        for rt in runtimes:
            for s in list(rt.sessions):
                s.abort()
                cut += 1
        if cut:
            log.warning("drain period over: closed %d sessions", cut)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        return cut

    async def close(self) -> None:
        await self.drain(0)
