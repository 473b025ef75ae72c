"""A service at run time: its policy (allowed addresses, caps, TLS), its sockets and its
sessions. Policy is replaced in place on reload; sessions already running keep going.
(server.py holds every service of the process; this module was service.py.)"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from mailwarden.listener import abuse, acl, catalogue, config, limits, session, tls
from mailwarden.listener import metrics as m
from mailwarden.listener.protocols import auth_watch_for, authwatch, base, gate_for, replies_for

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
        # Called for each accepted connection before its session exists: the listener's
        # watch on file descriptors (descriptors.py).
        self.on_accept: Callable[[], None] | None = None
        self.limiter = limits.ConnectionLimiter()
        self.refusing = 0
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
        self.gate: base.GateFactory | None = None
        # Hooks for admission policy and session observers (see session.Runtime).
        self.admission: session.Admission | None = None
        self.observe: Callable[[str], base.Observer] | None = None
        self.failure: Callable[[str], None] | None = None
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
        # The hooks cost nothing when the policy is off: the session skips a None.
        self.admission = self._admit if guard.enabled else None
        self.failure = self._failure if cfg.auto_ban is not None else None
        watch = auth_watch_for(cfg.kind.wire) if cfg.auto_ban is not None else None
        self.observe = self._observer(watch) if watch is not None else None
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

    def _admit(self, address: str) -> session.Refusal | None:
        """The abuse defence's word on a new connection, before any backend is contacted:
        a banned or rate-limited address is refused in its protocol's words for a temporary
        refusal, saying why."""
        ip, name = acl.parse_client(address)
        verdict, wait = self.guard.admit(ip, name, self.loop.time())
        if verdict is abuse.Verdict.ACCEPTED:
            return None
        retry = abuse.retry_after(wait)
        host = self.config.hostname
        if verdict is abuse.Verdict.BANNED:
            return session.Refusal(m.BANNED, self.replies.banned(host, retry))
        self._failure(address)
        return session.Refusal(m.RATE_LIMITED, self.replies.rate_limited(host, retry))

    def _observer(self, watch: Callable[[], authwatch.LineWatch]) -> Callable[[str], base.Observer]:
        failed = self._login_failed  # bound once, not once per session

        def observe(client: str) -> base.Observer:
            return authwatch.LoginObserver(watch(), failed, client)

        return observe

    def _login_failed(self, client: str) -> None:
        self.metrics.login_failures.inc()
        self._failure(client)

    def _failure(self, client: str) -> None:
        """A refusal or a failed login from a client: count it towards a ban."""
        address, name = acl.parse_client(client)
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

    async def bind(
        self, endpoint: config.Endpoint, sock: socket.socket | None = None
    ) -> asyncio.Server:
        """Listen on the endpoint (or on `sock`, a listening socket already bound to it)."""
        if sock is not None:
            return await self.loop.create_server(
                self._accepted, sock=sock, backlog=self.config.backlog
            )
        return await self.loop.create_server(
            self._accepted,
            host=endpoint.address,
            port=endpoint.port,
            backlog=self.config.backlog,
            reuse_address=True,
        )

    def _accepted(self) -> session.ClientConnection:
        if self.on_accept is not None:
            self.on_accept()
        return session.ClientConnection(self)

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
