"""A service at run time: its policy (allowed addresses, caps, TLS), its sockets and its
sessions. Policy is replaced in place on reload; sessions already running keep going."""

from __future__ import annotations

import asyncio
import logging
import ssl

from mailwarden.listener import abuse, acl, catalogue, config, limits, session, tls
from mailwarden.listener import metrics as m
from mailwarden.listener.protocols import base, replies_for

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
        # Rate limit and bans; kept across reloads like the limiter's counts.
        self.guard = abuse.Guard()
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
        self.guard.configure(abuse_policy(cfg))
        guard, loop = self.guard, self.loop
        # Read at each scrape: bans end by themselves, without an event to count them down.
        self.metrics.banned.set_function(lambda: guard.banned_now(loop.time()))
        self.replies = replies_for(cfg.kind.wire)
        self._over_capacity = None
        self.server_tls = server_tls
        self.implicit_tls = cfg.kind.tls is catalogue.TLSMode.IMPLICIT
        self.backend_tls = backend_tls
        self.parent_metrics.cap.labels(cfg.name, "service").set(cfg.max_connections)
        self.parent_metrics.cap.labels(cfg.name, "address").set(cfg.max_connections_per_address)

    def failure(self, address: acl.IPAddress, name: str) -> None:
        """A refusal or a failed login from a client: count it towards a ban."""
        ban = self.guard.failure(address, name, self.loop.time())
        if ban is not None:
            self.metrics.bans.inc()
            log.warning(
                "%s: %s banned for %.0f s after %d failures within %.0f s",
                self.config.name,
                ban.key,
                ban.until - ban.started,
                ban.failures,
                ban.within_seconds,
            )

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
        """Close sessions that outlived their timeout. Called periodically; a session's
        `active` flag (set on every byte) restarts its idle clock."""
        now = self.loop.time()
        t = self.config.timeouts
        for s in list(self.sessions):
            if s.active:
                s.active = False
                s.idle_since = now
                continue
            state = s.state
            if state in (session.State.RELAY, session.State.GATED):
                limit = t.idle
            elif state is session.State.REFUSING:
                limit = t.refusal
            elif state in (session.State.PROXY, session.State.TLS):
                limit = t.handshake
                if now - s.started > limit:
                    s.rt.metrics.outcome[m.HANDSHAKE_FAILED].inc()
                    s.abort()
                continue
            else:
                continue
            if now - s.idle_since > limit:
                s.close()
            else:
                s.flush_counters()

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


def abuse_policy(cfg: config.ServiceConfig) -> abuse.Policy:
    ban = cfg.auto_ban
    return abuse.Policy(
        connections_per_minute=cfg.rate_limit.connections_per_minute,
        rate_limit_ipv6_prefix=cfg.rate_limit.ipv6_prefix_length,
        after_failures=ban.after_failures if ban else 0,
        within_seconds=ban.within_seconds if ban else 60.0,
        ban_seconds=ban.ban_seconds if ban else 600.0,
        ban_ipv6_prefix=ban.ipv6_prefix_length if ban else 64,
        exempt=acl.AddressSet(ban.exempt) if ban else frozenset(),
    )
