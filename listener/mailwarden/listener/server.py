"""The listener process's services: binding, reloading a new configuration without dropping
sessions, timeouts, and the drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

from mailwarden.listener import config, figures, service
from mailwarden.listener import metrics as m

log = logging.getLogger(__name__)


class ReloadError(RuntimeError):
    """A new configuration that could not be put in force; the old one stays."""


class Listener:
    def __init__(self, cfg: config.ListenerConfig, metrics: m.Metrics | None = None) -> None:
        self.config = cfg
        self.metrics = metrics if metrics is not None else m.Metrics()
        self.services: dict[str, service.ServiceRuntime] = {}
        # Services removed by a reload whose sessions are still finishing.
        self.retired: list[service.ServiceRuntime] = []
        self.draining = False
        self.started = False
        self._sweeper: asyncio.Task[None] | None = None

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
        staged: dict[str, service.ServiceRuntime] = {}
        bound: list[tuple[service.ServiceRuntime, config.Endpoint, asyncio.Server]] = []
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
                    rt = service.ServiceRuntime(scfg, self.metrics, loop)
                    staged[name] = rt
                elif scfg != rt.config:
                    service.check_tls(scfg)
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
            for rt in [r for r in self.retired if not r.sessions]:
                self.retired.remove(rt)
                if rt.config.name not in self.services:
                    self.metrics.forget(rt.config.name)

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
