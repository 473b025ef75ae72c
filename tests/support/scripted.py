"""A scripted-transport harness for the listener's session state machine (as pymap tests its
IMAP state machine): the session, its service runtime (policy, caps, metrics, timeouts) and
the event loop are the real ones; only the two transports are scripted, so a test decides the
order of events that real sockets deliver in whatever order the network and the event loop
happen to produce (the client's EOF before the backend connection is made, the client gone
while the backend connects, a PROXY header split across TCP segments).

The scripted transports implement the parts of `asyncio.Transport` the session uses, with
asyncio's semantics: `close()` and `abort()` call the protocol's `connection_lost` on the next
loop turn, once; writes after close are dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mailwarden.listener import config as lc
from mailwarden.listener import metrics as m
from mailwarden.listener import runtime, session


class ScriptedTransport(asyncio.Transport):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.BaseProtocol,
        peer: tuple[str, int],
        local: tuple[str, int],
    ) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self.peer = peer
        self.local = local
        self.written = bytearray()
        self.eof_written = False
        self.closing = False
        self.aborted = False
        self.lost = False
        self.reading = True
        self.buffered = 0  # what the test says the kernel could not take yet

    # -- what the session calls ---------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closing:
            self.written += data

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self._end()

    def abort(self) -> None:
        self.aborted = True
        self._end()

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": self.local}.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    # -- what the test does -------------------------------------------------------------
    def peer_resets(self) -> None:
        """The peer is gone (RST): the protocol hears connection_lost with the error."""
        if not self.closing:
            self.closing = True
            self.lost = True
            self._protocol.connection_lost(ConnectionResetError())

    def _end(self) -> None:
        if self.closing:
            return
        self.closing = True

        def lost() -> None:
            self.lost = True
            self._protocol.connection_lost(None)

        self._loop.call_soon(lost)


class TLSLayer(asyncio.Protocol):
    """Stands for the TLS layer `start_tls` puts on a transport: records the raw bytes it is
    given (the ClientHello)."""

    def __init__(self) -> None:
        self.received = bytearray()

    def data_received(self, data: bytes) -> None:
        self.received += data


class ScriptedLoop(asyncio.SelectorEventLoop):
    """A real event loop whose outgoing connections (the session's backend) and TLS
    handshakes wait for the test to say how they end."""

    def __init__(self) -> None:
        super().__init__()
        self.connects: list[tuple[Callable[[], asyncio.BaseProtocol], asyncio.Future[Any]]] = []
        self.handshakes: list[tuple[TLSLayer, asyncio.Future[Any]]] = []

    async def start_tls(  # type: ignore[override]
        self, transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol, *_: Any, **__: Any
    ) -> asyncio.Transport | None:
        # As asyncio's and uvloop's do on their first step: the TLS layer takes the
        # transport's data from now on.
        layer = TLSLayer()
        transport.set_protocol(layer)
        fut: asyncio.Future[asyncio.Transport | None] = self.create_future()
        self.handshakes.append((layer, fut))
        return await fut

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, **_: Any
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        fut: asyncio.Future[tuple[asyncio.Transport, asyncio.BaseProtocol]] = self.create_future()
        self.connects.append((protocol_factory, fut))
        return await fut


class Script:
    """One session driven step by step. Each step runs the loop until it has nothing left to
    do now (tasks started by the step, callbacks it scheduled), as real sockets would."""

    def __init__(
        self,
        kind: str = "SMTP",
        *,
        peer: str = "127.0.0.1",
        **fields: Any,
    ) -> None:
        self.loop = ScriptedLoop()
        self.metrics = m.Metrics()
        cfg = lc.build(
            lc.ServiceConfig,
            {
                "name": "test/scripted",
                "service": kind,
                "listen": [{"address": "127.0.0.1", "port": 1025}],
                "backend": {"host": "127.0.0.1", "port": 1026, **fields.pop("backend", {})},
                **fields,
            },
        )
        self.rt = runtime.ServiceRuntime(cfg, self.metrics, self.loop)
        self.session = session.ClientConnection(self.rt)
        self.client = ScriptedTransport(self.loop, self.session, (peer, 40000), ("127.0.0.1", 1025))
        self.backend: ScriptedTransport | None = None

    # -- steps ----------------------------------------------------------------------------
    def connect(self) -> Script:
        self.session.connection_made(self.client)
        return self.settle()

    def send(self, data: bytes) -> Script:
        assert not self.client.closing, "the client's connection is closed"
        # To whichever protocol has the transport now: the session, or a TLS layer.
        self.client.get_protocol().data_received(data)  # type: ignore[attr-defined]
        return self.settle()

    def client_eof(self) -> Script:
        if not self.session.eof_received():
            self.client.close()
        return self.settle()

    def client_resets(self) -> Script:
        self.client.peer_resets()
        return self.settle()

    def backend_connects(self) -> Script:
        factory, fut = self.loop.connects.pop(0)
        protocol = factory()
        self.backend = ScriptedTransport(self.loop, protocol, ("127.0.0.1", 1026), ("127.0.0.1", 0))
        protocol.connection_made(self.backend)
        fut.set_result((self.backend, protocol))
        return self.settle()

    def backend_fails(self, exc: Exception | None = None) -> Script:
        _, fut = self.loop.connects.pop(0)
        fut.set_exception(exc or ConnectionRefusedError(111, "Connection refused"))
        return self.settle()

    def backend_says(self, data: bytes) -> Script:
        assert self.backend is not None
        self.backend.get_protocol().data_received(data)  # type: ignore[attr-defined]
        return self.settle()

    def sweep_at(self, seconds: float) -> Script:
        """The service's periodic sweep as if `seconds` had passed since the session began."""
        for s in list(self.rt.sessions):
            s.tick(self.session.started + seconds, self.rt.config.timeouts)
        return self.settle()

    def settle(self) -> Script:
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0))
        return self

    def close(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.settle()
        self.loop.close()

    # -- what a client and an operator see ------------------------------------------------
    @property
    def to_client(self) -> bytes:
        return bytes(self.client.written)

    @property
    def to_backend(self) -> bytes:
        return bytes(self.backend.written) if self.backend is not None else b""

    def outcome(self, name: str) -> float:
        return (
            self.metrics.registry.get_sample_value(
                "mailwarden_connections_total", {"service": "test/scripted", "outcome": name}
            )
            or 0.0
        )

    @property
    def active(self) -> float:
        return (
            self.metrics.registry.get_sample_value(
                "mailwarden_connections_active", {"service": "test/scripted"}
            )
            or 0.0
        )
