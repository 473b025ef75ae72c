"""One client connection, from accept to close: PROXY header, TLS, the policy decision, and
then either a refusal in the protocol's words or a byte-exact relay to the backend.

Built on asyncio Protocols and transports rather than streams: the relay path is two
callbacks and a write, which is what keeps CPU and memory per session close to HAProxy's."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Protocol, cast

from mailwarden.listener import acl, config, limits, proxyproto, tlshello
from mailwarden.listener import metrics as m
from mailwarden.listener.protocols import base

log = logging.getLogger(__name__)

# Client bytes held while the backend connection is being made (or while the protocol's gate
# waits for the backend); past this the client is paused, not buffered without bound.
PENDING_LIMIT = 64 * 1024
EMPTY = b""
# Refused clients that may keep talking (the SMTP 503 loop, an HTTP request being read) at
# once per service. Past this a refused client hears the opening refusal and is closed: a
# flood of denied clients that trickle bytes holds no more than this many descriptors.
REFUSING_LIMIT = 128
# Client bytes handed to the protocol's gate in one callback. A gate answers every line it
# is given (NNTP: 480 per command), so a 256 KiB read of `X\n` is 128k answers; in slices,
# with a loop turn between them, other sessions and /healthz are served meanwhile, and no
# more is answered than a client that does not read can be sent.
GATE_SLICE = 16 * 1024

# Why the client's reading is paused; it resumes when no reason is left.
_PAUSE_PENDING = 1  # its bytes wait for the backend connection, the TLS layer or the gate
_PAUSE_BACKEND = 2  # the backend does not take what the client sends fast enough
_PAUSE_CLIENT = 4  # the client does not read what the listener itself answers (gate, refusal)


_HANDSHAKE_ERRORS = (OSError, ssl.SSLError, TimeoutError, ConnectionError, RuntimeError)


class State(enum.Enum):
    PROXY = "proxy"  # waiting for the PROXY header of a trusted load balancer
    TLS = "tls"  # implicit-TLS handshake in progress
    STARTTLS = "starttls"  # STARTTLS answered by the gate: the client's leg is being encrypted
    CONNECTING = "connecting"  # admitted; the backend connection is being made
    GATED = "gated"  # the protocol's gate (the NNTP reader gate) in front of the backend
    RELAY = "relay"
    REFUSING = "refusing"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """An admission step's verdict against a client: the outcome it is counted as (one of
    metrics.OUTCOMES) and the conversation that refuses it in the protocol's words."""

    outcome: str
    conversation: base.Conversation


class Admission(Protocol):
    """A policy step between the access list and the caps (rate limits, bans): None admits
    the client (its address, after any PROXY header), a Refusal refuses it."""

    def __call__(self, address: str) -> Refusal | None: ...


class Runtime(Protocol):
    """What a session needs of the service it belongs to. `runtime.ServiceRuntime` provides
    it; the session depends only on this shape, so imports run one way (runtime -> session)
    and a test can drive a session without the service's sockets."""

    loop: asyncio.AbstractEventLoop
    config: config.ServiceConfig
    metrics: m.ServiceMetrics
    # Sessions of the service (accepted and not yet finished): the sweep and the drain
    # walk it; an empty set ends a drain.
    sessions: set[ClientConnection]
    allow: acl.AddressSet | acl.Everyone
    trusted_proxies: acl.AddressSet
    limiter: limits.ConnectionLimiter
    replies: base.Replies
    # The protocol's gate between client and backend, if the service has one (the NNTP
    # reader gate); None relays from the first byte.
    gate: base.GateFactory | None
    # Optional hooks: a policy step before the caps, and an observer of the first bytes of
    # each admitted session (created with the client's address).
    admission: Admission | None
    observe: Callable[[str], base.Observer] | None
    # Refused sessions of the service still open (bounded by REFUSING_LIMIT).
    refusing: int
    # Told of every refusal of a client by the access list or a cap, and of every failed
    # login a gate sees, with the client's address (the auto-ban counts them).
    failure: Callable[[str], None] | None
    server_tls: ssl.SSLContext | None
    implicit_tls: bool
    backend_tls: ssl.SSLContext | None

    def over_capacity(self) -> base.Conversation: ...

    def session_ended(self) -> None: ...


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_eof",
        "_gate_turn",
        "_hello",
        "_local",
        "_paused",
        "_pending",
        "active",
        "admitted",
        "backend",
        "bytes_down",
        "bytes_up",
        "client",
        "conversation",
        "gate",
        "handshake_counted",
        "idle_since",
        "observer",
        "peer",
        "phase_started",
        "refusing",
        "rt",
        "seen_data",
        "started",
        "state",
        "tls",
        "transport",
    )

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.transport: asyncio.Transport | None = None
        self.state = State.CONNECTING
        self.backend: BackendConnection | None = None
        # Implicit TLS: the ClientHello is being read (and screened) before the handshake.
        self._hello = False
        self.conversation: base.Conversation | None = None
        self.gate: base.Gate | None = None
        # Reads the first bytes of a relayed session (the login watchers of the abuse
        # defence) until it has seen enough; relayed sessions without a gate keep the relay
        # state meanwhile: the gate's path would cost an allocation per read.
        self.observer: base.Observer | None = None
        # Client bytes that arrive before the session can take them; a bytearray only once
        # there are some, so that the thousands of sessions that never have any carry none.
        self._pending: bytes | bytearray = EMPTY
        # The client half-closed before its bytes could go to the backend.
        self._eof = False
        self.peer: tuple[str, int] = ("", 0)
        self.client: tuple[str, int] = ("", 0)
        self._local: tuple[str, int] | None = None
        self.admitted = False
        self.seen_data = False
        self.active = False
        self.bytes_up = 0
        self.bytes_down = 0
        self.started = 0.0
        self.idle_since = 0.0
        # When the phase with a total time limit began (PROXY header and TLS handshake:
        # the session's start; STARTTLS; a refusal): bytes trickled in do not extend it.
        self.phase_started = 0.0
        self._paused = 0
        # The gate's next slice of held client bytes, scheduled for the next loop turn.
        self._gate_turn: asyncio.Handle | None = None
        # Counted among the service's refused sessions that keep talking.
        self.refusing = False
        # handshake_failed is counted for this session (by the sweep or the TLS step).
        self.handshake_counted = False
        # Whether the client leg is TLS (which cannot half-close); known once, not asked
        # of the transport on every EOF.
        self.tls = False

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        rt = self.rt
        self.started = self.idle_since = self.phase_started = rt.loop.time()
        rt.sessions.add(self)
        peer = transport.get_extra_info("peername")
        if not peer:  # the peer was gone before we looked
            self.transport.abort()
            return
        # IPv4 names are already (host, port); IPv6 ones carry flow info and scope id.
        self.peer = self.client = peer if len(peer) == 2 else (peer[0], peer[1])
        if rt.trusted_proxies and acl.client_address(peer[0]) in rt.trusted_proxies:
            self.state = State.PROXY
            return
        self._handshake_done()

    def data_received(self, data: bytes) -> None:
        self.active = True
        state = self.state
        if state is State.RELAY and self.seen_data:
            observer = self.observer
            if observer is not None and not observer.client(data):
                self.observer = None
            self.bytes_up += len(data)
            assert self.backend is not None
            self.backend.transport.write(data)
            return
        if not self.seen_data and state is not State.PROXY and state is not State.REFUSING:
            # The client's first bytes: only trusted load balancers may say who the client
            # is. Checked even when the relay is already up (whether the backend connected
            # before the client's first bytes arrived must not decide whether a forged header
            # gets through), and across TCP segments: `PRO` + `XY TCP4 ...` is one header.
            # A refused client is not screened: nothing it sends reaches a backend, and its
            # session is already counted once.
            if self._pending:
                self._pending += data
                data = bytes(self._pending)
                self._pending = EMPTY
            claim = _proxy_claim(data)
            if claim is None:  # a prefix of a signature: wait for the bytes that decide
                self._pending = bytearray(data)
                return
            if claim:
                self._fail(m.PROXY_ERROR, "PROXY header from an untrusted peer")
                return
            self.seen_data = True
        if state is State.RELAY:
            observer = self.observer
            if observer is not None and not observer.client(data):
                self.observer = None
            self.bytes_up += len(data)
            assert self.backend is not None
            self.backend.transport.write(data)
        elif state is State.PROXY:
            self._hold(data)
            self._read_proxy_header()
        elif state is State.GATED:
            assert self.gate is not None and self.backend is not None
            if self._pending or not self.gate.idle or len(data) > GATE_SLICE:
                # A command waits for the backend's answer (or its greeting), or there is
                # more than one slice: what follows is held here, bounded, until the gate
                # can take it.
                self._hold(data)
                self._gate_soon()
            else:
                self._apply_gate(self.gate.from_client(data))
        elif state is State.REFUSING:
            assert self.conversation is not None
            self._say(self.conversation.feed(data))
        elif state in (State.CONNECTING, State.TLS, State.STARTTLS):
            self._hold(data)
            if self._hello:
                self._screen_hello()

    def eof_received(self) -> bool | None:
        if not self.seen_data and self._pending and self.state in (State.RELAY, State.GATED):
            # Bytes held as a possible PROXY signature that the EOF leaves incomplete: they
            # are the client's, pass them on before its EOF.
            self.seen_data = True
            held = bytes(self._pending)
            self._pending = EMPTY
            self.data_received(held)
        if self.state is State.RELAY and self.backend is not None:
            backend = self.backend.transport
            if backend.can_write_eof() and not self.tls and not self.backend.backend_eof:
                backend.write_eof()
                self.backend.client_eof = True
                # Half-close: keep reading what the backend still has to say.
                return True
            # Both sides have finished (or TLS cannot half-close): close() sends the FIN
            # that write_eof would, one system call less.
            backend.close()
            return False
        if self.state in (State.CONNECTING, State.GATED) and not self.tls:
            # `printf 'EHLO x\r\nQUIT\r\n' | nc -N`: the client has said everything before
            # the backend is reachable (or while the NNTP gate holds its commands). Keep the
            # session; the EOF follows its bytes once they are delivered.
            self._eof = True
            if self.state is State.GATED:
                self._gate_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def pause_writing(self) -> None:
        # The client does not read fast enough: stop reading what would be written to it,
        # the backend's bytes and, where the listener answers the client itself (the gate,
        # a refusal), the client's own commands.
        if self.backend is not None:
            self.backend.transport.pause_reading()
        if self.state is not State.RELAY:
            self._pause(_PAUSE_CLIENT)

    def resume_writing(self) -> None:
        if self.backend is not None and self.state is not State.STARTTLS:
            self.backend.transport.resume_reading()
        self._resume(_PAUSE_CLIENT)
        if self.state is State.GATED and self._pending:
            self._gate_soon()

    @property
    def local(self) -> tuple[str, int]:
        """The address the client connected to, or the one a trusted PROXY header names.
        Asked of the kernel only when something needs it (PROXY towards the backend): an
        idle session should not carry it."""
        local = self._local
        if local is None:
            sockname = self.transport.get_extra_info("sockname") if self.transport else None
            local = self._local = (sockname[0], sockname[1]) if sockname else ("", 0)
        return local

    @local.setter
    def local(self, value: tuple[str, int]) -> None:
        self._local = value

    def _hold(self, data: bytes) -> None:
        if self._pending:
            self._pending += data
        else:
            self._pending = bytearray(data)
        if len(self._pending) > PENDING_LIMIT:
            self._pause(_PAUSE_PENDING)

    def _take_pending(self) -> bytes:
        pending = bytes(self._pending)
        self._pending = EMPTY
        if self._paused & _PAUSE_PENDING:
            self._resume(_PAUSE_PENDING)
        return pending

    def _pause(self, why: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= why

    def _resume(self, why: int) -> None:
        if self._paused & why:
            self._paused &= ~why
            if not self._paused and self.transport is not None:
                self.transport.resume_reading()

    # -- the session's steps -----------------------------------------------------------

    def _read_proxy_header(self) -> None:
        # The header may come in any number of segments: the parser says "more" until it is
        # complete and refuses it past its maximum size; the sweep bounds the total time.
        try:
            header = proxyproto.parse_header(self._pending)
        except proxyproto.ProxyError as exc:
            self._fail(m.PROXY_ERROR, str(exc))
            return
        if header is None:
            return
        addresses = header.addresses
        rest = bytes(self._pending[header.length :])
        self._pending = EMPTY
        if addresses.source is not None:
            self.client = addresses.source
        if addresses.destination is not None:
            self.local = addresses.destination
        # What follows the header is the client's first bytes, screened like any client's:
        # a second header behind the balancer's is the client's forgery, not relayed.
        claim = _proxy_claim(rest) if rest else None
        if claim:
            self._fail(m.PROXY_ERROR, "a second PROXY header after the load balancer's")
            return
        if rest:
            self._pending = bytearray(rest)
        self.seen_data = claim is False
        self._handshake_done()

    def _handshake_done(self) -> None:
        rt = self.rt
        if rt.server_tls is not None and rt.implicit_tls:
            self.state = State.TLS
            # The ClientHello is read here first (tlshello.screen: a client of TLS
            # 1.0/1.1 only is told `protocol_version`), then handed to the TLS layer.
            self._hello = True
            if self._pending:  # it came with the PROXY header
                self._screen_hello()
            return
        self._decide()

    def _screen_hello(self) -> None:
        verdict = tlshello.screen(self._pending)
        if verdict is tlshello.Hello.NEED_MORE and len(self._pending) <= PENDING_LIMIT:
            return
        self._hello = False
        starttls = self.state is State.STARTTLS
        if isinstance(verdict, bytes):
            if self.transport is not None:
                self.transport.write(verdict)
            why = "TLS handshake: the client offers only TLS < 1.2"
            if starttls:  # the session was counted when it was admitted
                log.info("%s: %s:%s: STARTTLS: %s", self.rt.config.name, *self.peer, why)
                self.close()
            else:
                self._fail(m.HANDSHAKE_FAILED, why)
            return
        # The ClientHello belongs to the TLS layer start_tls puts in place; what reaches
        # this protocol before that is handed over by _hand_over. (uvloop may read once
        # more after the pause, so it narrows the window but cannot be relied on.)
        if self.transport is not None:
            self.transport.pause_reading()
        assert self.rt.server_tls is not None
        upgrade = self._gate_upgrade if starttls else self._start_tls
        self.rt.loop.create_task(upgrade(self.rt.server_tls))

    async def _start_tls(self, ctx: ssl.SSLContext) -> None:
        transport = self.transport
        assert transport is not None
        try:
            tls_transport = await self._upgrade(transport, ctx)
        except _HANDSHAKE_ERRORS as exc:
            _drop_traceback(exc)
            self._handshake_failed(f"TLS handshake: {exc!r}")
            return
        if tls_transport is None:
            self._handshake_failed("TLS handshake: closed")
            return
        if self.state is not State.TLS:  # timed out by the sweep meanwhile
            tls_transport.abort()
            return
        self.transport = tls_transport
        self.tls = True
        self._decide()

    def _gate_starttls(self) -> None:
        """STARTTLS offered by the NNTP gate, the 382 written: from now on the reader's bytes
        are its TLS handshake (not commands); the news server's leg stays as it is. Done at
        once, in the callback that wrote the 382, so no byte of the reader is read as a
        command in between."""
        backend = self.backend
        assert backend is not None
        self.state = State.STARTTLS
        self.phase_started = self.rt.loop.time()
        # What the reader pipelined behind STARTTLS is dropped (RFC 4642 §2.2.2), as the
        # gate drops its own rest.
        if self._pending:
            self._take_pending()
        # The server has nothing to say until the next command; hold it anyway so nothing
        # can be written into the handshake.
        backend.transport.pause_reading()
        # The reader's ClientHello is screened first (tlshello.screen), as for implicit TLS;
        # _screen_hello then starts _gate_upgrade.
        self._hello = True

    async def _gate_upgrade(self, ctx: ssl.SSLContext) -> None:
        transport, backend = self.transport, self.backend
        if transport is None or backend is None or self.state is not State.STARTTLS:
            return
        try:
            tls_transport = await self._upgrade(transport, ctx)
        except _HANDSHAKE_ERRORS as exc:
            _drop_traceback(exc)
            log.info("%s: %s:%s: STARTTLS: %r", self.rt.config.name, *self.peer, exc)
            self._end_now()
            return
        if tls_transport is None or self.state is not State.STARTTLS or self.gate is None:
            if tls_transport is not None:
                tls_transport.abort()
            self._end_now()
            return
        self.transport = tls_transport
        self.tls = True
        self.state = State.GATED
        self.gate.tls_started()
        backend.transport.resume_reading()
        # Commands that came with the end of the handshake.
        self._gate_ready()

    async def _upgrade(
        self, transport: asyncio.Transport, ctx: ssl.SSLContext
    ) -> asyncio.Transport | None:
        """TLS on the client's leg, within the handshake timeout."""
        loop = self.rt.loop
        timeout = self.rt.config.timeouts.handshake
        # The TLS layer's own handshake timer (60 s by default) keeps it, with its buffers,
        # for that long after a client reset that the loop did not report: give it ours.
        upgrade = loop.create_task(
            loop.start_tls(transport, self, ctx, server_side=True, ssl_handshake_timeout=timeout)
        )
        # start_tls swaps in its TLS protocol on its first step and schedules that protocol's
        # connection_made and the transport's resume_reading; one loop turn later (before
        # the socket is read again) the raw bytes this protocol got meanwhile (the start of
        # the ClientHello, possibly sent with the PROXY header) are handed to it.
        loop.call_soon(loop.call_soon, self._hand_over, transport)
        return await asyncio.wait_for(upgrade, timeout=timeout)

    def _hand_over(self, transport: asyncio.Transport) -> None:
        if transport.is_closing():
            return
        if transport.get_protocol() is self:
            # start_tls has not swapped its TLS layer in yet (on neither event loop has this
            # been seen; the order of its first steps is not documented): try again next
            # turn rather than feed the ClientHello to the wrong protocol.
            self.rt.loop.call_soon(self._hand_over, transport)
            return
        early = bytes(self._pending)
        self._pending = EMPTY
        self._paused = 0  # the TLS layer reads the socket now; it pauses it itself
        if early:
            _feed(transport, early)

    def _decide(self) -> None:
        rt = self.rt
        try:
            address, name = acl.parse_client(self.client[0])
        except ValueError:
            self._fail(m.PROXY_ERROR, f"unusable client address {self.client[0]!r}")
            return
        if address not in rt.allow:
            if rt.failure is not None:
                rt.failure(name)
            self._refuse(m.DENIED, rt.replies.denied(rt.config.hostname))
            return
        if rt.admission is not None:
            refusal = rt.admission(name)
            if refusal is not None:
                self._refuse(refusal.outcome, refusal.conversation)
                return
        verdict = rt.limiter.acquire(name)
        if verdict is not limits.Verdict.ACCEPTED:
            if rt.failure is not None:
                rt.failure(name)
            outcome = m.OVER_CAP if verdict is limits.Verdict.OVER_CAP else m.OVER_ADDRESS_CAP
            self._refuse(outcome, rt.over_capacity())
            return
        self.admitted = True
        if name != self.client[0]:
            self.client = (name, self.client[1])
        rt.metrics.active.inc()
        self.state = State.CONNECTING
        rt.loop.create_task(self._connect())

    async def _connect(self) -> None:
        rt = self.rt
        backend = rt.config.backend
        loop = rt.loop
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        # One timer, not asyncio.timeout or wait_for: those cost a context manager's frames
        # or a second task per session, more than the rest of the admission.
        timer = loop.call_later(backend.connect_timeout, expire)
        try:
            # On success BackendConnection.connection_made has already adopted the backend
            # (see _backend_connected).
            await loop.create_connection(
                lambda: BackendConnection(self),
                backend.host,
                backend.port,
                ssl=rt.backend_tls,
                server_hostname=(backend.tls.server_name or backend.host)
                if rt.backend_tls
                else None,
            )
        except asyncio.CancelledError:
            if not expired:
                raise  # cancelled from outside (shutdown), not by the timer
            task.uncancel()
            self._backend_failed(TimeoutError())
        except (OSError, ssl.SSLError) as exc:
            self._backend_failed(exc)
        finally:
            timer.cancel()

    def _backend_failed(self, exc: BaseException) -> None:
        if self.state is not State.CONNECTING:
            return
        rt = self.rt
        backend = rt.config.backend
        log.warning(
            "%s: backend %s:%s unavailable: %s", rt.config.name, backend.host, backend.port, exc
        )
        self._refuse(m.BACKEND_ERROR, rt.replies.unavailable(rt.config.hostname))

    def _backend_connected(self, protocol: BackendConnection) -> None:
        """Called from the backend's connection_made: before any byte from the backend can
        arrive, so the greeting already meets the NNTP gate and the relay state. (After the
        `await` in _connect would be too late: the backend's data_received may run first.)"""
        rt = self.rt
        backend = rt.config.backend
        if self.state is not State.CONNECTING:  # the client left meanwhile
            protocol.transport.close()
            return
        rt.metrics.outcome[m.ACCEPTED].inc()
        self.backend = protocol
        if backend.proxy_protocol != "none":
            protocol.transport.write(
                proxyproto.build(backend.proxy_protocol, self.client, self.local)
            )
        if self._eof and not self.seen_data:
            # The client's last bytes are a prefix of a PROXY signature and nothing follows:
            # they are not a header.
            self.seen_data = True
        gate = rt.gate() if rt.gate is not None else None
        if rt.observe is not None:
            if gate is not None:
                gate = base.Observed(gate, rt.observe(self.client[0]))
            else:
                self.observer = rt.observe(self.client[0])
        if gate is not None:
            self.gate = gate
            self.state = State.GATED
            # The client's bytes so far stay held until the gate can take them (after the
            # greeting, for the NNTP gate).
            self._gate_ready()
        else:
            self.state = State.RELAY
            if self.seen_data:
                # (Otherwise they are held until they show whether they are a PROXY header.)
                pending = self._take_pending()
                if pending:
                    if self.observer is not None and not self.observer.client(pending):
                        self.observer = None
                    self.bytes_up += len(pending)
                    protocol.transport.write(pending)
            if self._eof:
                self._pass_eof()

    def _apply_gate(self, out: base.GateOutput) -> None:
        assert self.backend is not None and self.transport is not None
        if out.to_backend:
            self.bytes_up += len(out.to_backend)
            self.backend.transport.write(out.to_backend)
        if out.to_client:
            self.bytes_down += len(out.to_client)
            self.transport.write(out.to_client)
        if out.auth is not None:
            rt = self.rt
            rt.metrics.nntp_auth[out.auth.value].inc()
            if out.auth is base.AuthResult.FAILURE and rt.failure is not None:
                rt.metrics.login_failures.inc()
                rt.failure(self.client[0])
        if out.open:
            self.state = State.RELAY
            self.gate = None
            if self._pending and self.seen_data:
                held = self._take_pending()
                self.bytes_up += len(held)
                self.backend.transport.write(held)
        elif out.start_tls and self.rt.server_tls is not None:
            self._gate_starttls()
        if self._eof:
            self._gate_eof()

    def _gate_ready(self) -> None:
        """The gate may have answered: hand it the next slice of the client's bytes held
        meanwhile, if it can take them and the client reads what it is told."""
        self._gate_turn = None
        gate = self.gate
        if (
            self.state is State.GATED
            and gate is not None
            and gate.idle
            and self._pending
            and self.seen_data
            and not self._paused & _PAUSE_CLIENT
        ):
            pending = self._pending
            if len(pending) <= GATE_SLICE:
                data = self._take_pending()
            else:
                data = bytes(pending[:GATE_SLICE])
                self._pending = pending = pending[GATE_SLICE:]
                if len(pending) <= PENDING_LIMIT:
                    self._resume(_PAUSE_PENDING)
            self._apply_gate(gate.from_client(data))
            if self._pending:
                self._gate_soon()
        elif self._eof:
            self._gate_eof()

    def _gate_soon(self) -> None:
        if self._gate_turn is None and self.gate is not None and self.gate.idle:
            self._gate_turn = self.rt.loop.call_soon(self._gate_ready)

    def _gate_eof(self) -> None:
        # Pass the client's EOF on once the gate has no command waiting for its turn or
        # its answer, and none held here.
        if self.backend is not None and (
            self.gate is None or (self.gate.idle and not self._pending)
        ):
            self._pass_eof()

    def _pass_eof(self) -> None:
        backend = self.backend
        assert backend is not None
        if backend.client_eof:
            return
        backend.client_eof = True
        if backend.backend_eof or not backend.transport.can_write_eof():
            # Both sides have finished (the backend's EOF came first, e.g. after SMTP's 221
            # or NNTP's 205): close, as the relay does. A half-close here would leave two
            # half-closed transports that nobody closes, and the session's slot taken until
            # the idle timeout. The backend's connection_lost closes the client.
            backend.transport.close()
        else:
            backend.transport.write_eof()

    def _refuse(self, outcome: str, conversation: base.Conversation) -> None:
        rt = self.rt
        rt.metrics.outcome[outcome].inc()
        if self.admitted:
            self._release()
        self.state = State.REFUSING
        self.conversation = conversation
        self.phase_started = rt.loop.time()
        self._say(conversation.opening())
        if self.state is State.REFUSING and self._pending:
            self._say(conversation.feed(self._take_pending()))
        if self.state is State.REFUSING:
            if rt.refusing >= REFUSING_LIMIT:
                # Enough refused clients are talking already: this one has heard its
                # refusal (or, where the client must speak first, nothing) and goes.
                self.close()
                return
            rt.refusing += 1
            self.refusing = True

    def _say(self, reply: base.Reply) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if reply.reset:
            _reset(transport)
            return
        if reply.data:
            transport.write(reply.data)
        if reply.close:
            self.close()

    def _handshake_failed(self, why: str) -> None:
        """A TLS handshake that did not complete: the layer start_tls put in place owns the
        transport, and its connection_lost does not reach this protocol during a handshake,
        so the session releases what it holds itself."""
        if self.handshake_counted:
            return  # already ended by the sweep's handshake timeout, and counted there
        self.handshake_counted = True
        log.info("%s: %s:%s: %s", self.rt.config.name, self.peer[0], self.peer[1], why)
        self.rt.metrics.outcome[m.HANDSHAKE_FAILED].inc()
        self._end_now()

    def _fail(self, outcome: str, why: str) -> None:
        log.info("%s: %s:%s: %s", self.rt.config.name, self.peer[0], self.peer[1], why)
        self.rt.metrics.outcome[outcome].inc()
        self.close()

    # -- ending ------------------------------------------------------------------------

    def close(self) -> None:
        """Close both legs, letting what is already written reach each side."""
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.phase_started = self.rt.loop.time()
        if self.transport is not None:
            self.transport.close()
        if self.backend is not None:
            self.backend.transport.close()

    def abort(self) -> None:
        self.state = State.CLOSED
        if self.transport is not None:
            self.transport.abort()
        if self.backend is not None:
            self.backend.transport.abort()

    def _end_now(self) -> None:
        """Abort both legs and release what the session holds now, without waiting for a
        connection_lost that a transport in a TLS handshake may never deliver."""
        self.abort()
        self._finish()

    def _release(self) -> None:
        self.admitted = False
        rt = self.rt
        rt.limiter.release(self.client[0])
        rt.metrics.active.dec()

    def _finish(self) -> None:
        rt = self.rt
        if self not in rt.sessions:
            return  # finished already (by _end_now, then by connection_lost)
        self.state = State.CLOSED
        if self.refusing:
            self.refusing = False
            rt.refusing -= 1
        if self.backend is not None:
            self.backend.transport.close()
        if self.admitted:
            self._release()
            rt.metrics.duration.observe(rt.loop.time() - self.started)
        self.flush_counters()
        rt.sessions.discard(self)
        # Break the client <-> backend reference cycle so both go by reference counting
        # now, not in a later (and, with thousands of sessions, long) garbage collection.
        self.backend = None
        rt.session_ended()

    def tick(self, now: float, timeouts: config.Timeouts) -> None:
        """The service's periodic sweep: end the session if it outlived its timeout.

        The PROXY header, a TLS handshake and a refusal have totals (as nginx's
        client_header_timeout and HAProxy's `timeout http-request`): a byte every few
        seconds does not extend them. A relayed session has an idle timeout, restarted by
        every byte either way (the `active` flag). A session past its time is torn down
        with abort(), not close(): close() would wait for a write buffer that a client which
        stopped reading never drains, and the session would keep its slot."""
        state = self.state
        if state is State.RELAY or state is State.GATED:
            if self.active:
                self.active = False
                self.idle_since = now
            elif now - self.idle_since > timeouts.idle:
                self._end_now()
                return
            self.flush_counters()
        elif state is State.REFUSING:
            if now - self.phase_started > timeouts.refusal:
                self._end_now()
        elif state is State.PROXY or state is State.TLS or state is State.STARTTLS:
            if now - self.phase_started > timeouts.handshake:
                if state is not State.STARTTLS:  # (a STARTTLS session was counted accepted)
                    self.rt.metrics.outcome[m.HANDSHAKE_FAILED].inc()
                    self.handshake_counted = True
                self._end_now()
        elif state is State.CLOSED and now - self.phase_started > timeouts.idle:
            # Closing, and the transport has not said it is gone: close() waits for a write
            # buffer to drain, or the event loop lost the callback (a reset during a TLS
            # handshake under uvloop). Past the idle timeout, let go of it.
            self._end_now()

    def flush_counters(self) -> None:
        if self.bytes_up:
            self.rt.metrics.bytes_up.inc(self.bytes_up)
            self.bytes_up = 0
        if self.bytes_down:
            self.rt.metrics.bytes_down.inc(self.bytes_down)
            self.bytes_down = 0


class BackendConnection(asyncio.Protocol):
    __slots__ = ("backend_eof", "client", "client_eof", "transport")

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client_eof = False
        self.backend_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.client._backend_connected(self)

    def data_received(self, data: bytes) -> None:
        client = self.client
        client.active = True
        if client.gate is not None:
            client._apply_gate(client.gate.from_backend(data))
            client._gate_ready()
            return
        observer = client.observer
        if observer is not None and not observer.backend(data):
            client.observer = None
        client.bytes_down += len(data)
        if client.transport is not None:
            client.transport.write(data)

    def eof_received(self) -> bool | None:
        self.backend_eof = True
        client = self.client.transport
        if client is None:
            return False
        if client.can_write_eof() and not self.client.tls and not self.client_eof:
            client.write_eof()
            return True
        client.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client
        client.close()

    def pause_writing(self) -> None:
        self.client._pause(_PAUSE_BACKEND)

    def resume_writing(self) -> None:
        self.client._resume(_PAUSE_BACKEND)


def _proxy_claim(data: bytes) -> bool | None:
    """Whether a client's first bytes are a PROXY header: True, False, or None while they
    are a strict prefix of a signature and the next bytes decide. What follows a signature
    does not matter here: any header from a peer not trusted to send one is refused."""
    kind = proxyproto.signature(data)
    if kind is proxyproto.Signature.NONE:
        return False
    if kind is proxyproto.Signature.PARTIAL:
        return None
    return True


def _drop_traceback(exc: BaseException | None) -> None:
    """Forget where a failed handshake's exception was raised. Its traceback holds the frames
    of start_tls and wait_for, whose locals hold the task that holds the exception: a cycle
    that keeps the session, its transports and the TLS layer's buffers (256 KiB each under
    uvloop) until the cyclic collector's next full pass. 20,000 clients that reset after
    their ClientHello grew the listener by 18 MiB per round that way."""
    seen = 0
    while exc is not None and seen < 8:  # the exception and what it was raised from
        exc.__traceback__ = None
        exc = exc.__context__
        seen += 1


def _reset(transport: asyncio.Transport) -> None:
    """Close with a TCP RST rather than a FIN: a zero linger time makes close() drop the
    connection (XEP-0205's refusal at the TCP level)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _feed(transport: asyncio.Transport, data: bytes) -> None:
    """Hand bytes already read to the protocol the transport now has (a TLS layer)."""
    protocol = transport.get_protocol()
    # asyncio's TLS layer is a BufferedProtocol; uvloop's implements the same two methods
    # without subclassing it.
    get_buffer = getattr(protocol, "get_buffer", None)
    if get_buffer is not None:
        view = memoryview(data)
        while view:
            buf = get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)  # type: ignore[attr-defined]
            view = view[n:]
    else:
        cast(asyncio.Protocol, protocol).data_received(data)
