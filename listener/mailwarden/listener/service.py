"""A service at run time: its policy (allowed addresses, caps, TLS), its sockets and its
sessions. Policy is replaced in place on reload; sessions already running keep going."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from mailwarden.listener import acl, catalogue, config, limits, session, tls
from mailwarden.listener import metrics as m
from mailwarden.listener.protocols import base, gate_for, replies_for

log = logging.getLogger(__name__)


def check_tls(cfg: config.ServiceConfig) -> None:
    """Raise if the service's TLS files cannot be used."""
    if cfg.tls is not None:
        tls.server_context(cfg.tls)
    tls.backend_context(cfg.backend.tls)


class ServiceRuntime:
    def __init__(
        self, cfg: config.ServiceConfig, metrics: m.Metrics, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.loop = loop
        self.parent_metrics = metrics
        self.metrics = metrics.for_service(cfg.name)
        self.sessions: set[session.ClientConnection] = set()
        self.servers: dict[config.Endpoint, asyncio.Server] = {}
        self.limiter = limits.ConnectionLimiter()
        self.refusing = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        self.config = cfg
        self.allow: acl.AddressSet | acl.Everyone = acl.Everyone()
        self.trusted_proxies = acl.AddressSet(())
        self.replies: base.Replies = replies_for(cfg.kind.wire)
        self.server_tls: ssl.SSLContext | None = None
        # TLS from the first byte (SMTPS, IMAPS, ...); otherwise server_tls serves STARTTLS
        # where the listener reads commands (the NNTP gate).
        self.implicit_tls = False
        self.backend_tls: ssl.SSLContext | None = None
        self.gate: base.GateFactory | None = None
        # Hooks for admission policy and session observers (see session.Runtime).
        self.admission: session.Admission | None = None
        self.observe: Callable[[str], base.Observer] | None = None
        self._over_capacity: base.Conversation | None = None
        self.apply(cfg)

    def apply(self, cfg: config.ServiceConfig) -> None:
        """Take a new policy. Raises (and changes nothing) if its TLS files are unusable."""
        server_tls = tls.server_context(cfg.tls) if cfg.tls is not None else None
        backend_tls = tls.backend_context(cfg.backend.tls)
        self.config = cfg
        self.allow = acl.policy(cfg.allow)
        self.trusted_proxies = acl.AddressSet(cfg.proxy_protocol_from)
        self.limiter.reconfigure(cfg.max_connections, cfg.max_connections_per_address)
        self.replies = replies_for(cfg.kind.wire)
        self._over_capacity = None
        self.server_tls = server_tls
        self.implicit_tls = cfg.kind.tls is catalogue.TLSMode.IMPLICIT
        self.backend_tls = backend_tls
        self.gate = gate_for(
            cfg.kind.wire,
            anonymous=cfg.anonymous,
            starttls=server_tls is not None and not self.implicit_tls,
            tls_active=self.implicit_tls,
        )
        self.parent_metrics.cap.labels(cfg.name, "service").set(cfg.max_connections)
        self.parent_metrics.cap.labels(cfg.name, "address").set(cfg.max_connections_per_address)

    def over_capacity(self) -> base.Conversation:
        """The over-cap refusal. A flood is mostly these: a stateless one (OneShot) is made
        once per policy and serves every refused client."""
        conversation = self._over_capacity
        if conversation is None:
            conversation = self.replies.over_capacity(self.config.hostname)
            if isinstance(conversation, base.OneShot):
                self._over_capacity = conversation
        return conversation

    def reload_tls(self) -> bool:
        """Load the certificate files again; a broken pair keeps the old context."""
        if self.config.tls is None:
            return True
        try:
            self.server_tls = tls.server_context(self.config.tls)
        except (OSError, ssl.SSLError) as exc:
            log.error("%s: new certificate refused, keeping the old one: %s", self.config.name, exc)
            self.metrics.tls_reload["failure"].inc()
            return False
        log.info("%s: certificate reloaded", self.config.name)
        self.metrics.tls_reload["success"].inc()
        return True

    async def bind(self, endpoint: config.Endpoint) -> asyncio.Server:
        return await self.loop.create_server(
            lambda: session.ClientConnection(self),
            host=endpoint.address,
            port=endpoint.port,
            backlog=self.config.backlog,
            reuse_address=True,
        )

    def stop_accepting(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()

    def sweep(self) -> None:
        """Called periodically: each session decides whether it outlived its timeout."""
        now = self.loop.time()
        timeouts = self.config.timeouts
        for s in list(self.sessions):
            s.tick(now, timeouts)

    def session_ended(self) -> None:
        if not self.sessions:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def wait_idle(self) -> None:
        if not self.sessions:
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self._idle_waiters.append(fut)
        await fut
