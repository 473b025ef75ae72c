"""The metrics and health port's HTTP server on real sockets: what a scraper and a probe get,
and what a client that does not speak HTTP/1.1 properly gets (an answer and a close, never a
hang or a traceback). Timeouts and the connection limit under attack: tests/attack/."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mailwarden.listener import health

CLOSED: list[str] = []


@pytest.fixture
async def server() -> AsyncIterator[health.HealthServer]:
    CLOSED.clear()
    s = health.HealthServer(
        {
            "/healthz": health.healthz,
            "/readyz": health.ready_route(lambda: False),
            "/boom": lambda: 1 // 0,  # type: ignore[dict-item]
        },
        health.Limits(header_timeout=1.0, keepalive_timeout=1.0, max_connections=3),
        closed=CLOSED.append,
    )
    await s.start("127.0.0.1", 0)
    yield s
    await s.close()


async def exchange(port: int, data: bytes, *, until_eof: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if until_eof:
            return await asyncio.wait_for(reader.read(), 5)
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


async def test_get_answers_with_status_type_and_length_and_keeps_the_connection(server):
    reply = await exchange(
        server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", until_eof=False
    )
    assert reply == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n"
        b"\r\nok\n"
    )


async def test_pipelined_requests_are_answered_in_order_and_connection_close_is_honoured(server):
    reply = await exchange(
        server.port,
        b"GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\n\r\n"
        b"HEAD /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    assert reply.count(b"HTTP/1.1 ") == 3
    assert reply.index(b"200 OK") < reply.index(b"503 Service Unavailable")
    assert reply.endswith(b"Connection: close\r\n\r\n")  # HEAD: the head only


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET /nothing HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"GET /healthz HTTP/2.0\r\n\r\n", b"505"),
        (b"GET /healthz\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"413"),
        (b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"413"),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n", b"431"),
        (b"GET /boom HTTP/1.1\r\n\r\n", b"500"),
        (b"GET /healthz HTTP/1.0\r\n\r\n", b"200"),  # HTTP/1.0: closed after the answer
    ],
)
async def test_every_other_request_gets_its_status_and_a_close(server, request_, status):
    reply = await exchange(server.port, request_)
    assert reply.startswith(b"HTTP/1.1 " + status + b" ")
    refused = status not in (b"200", b"404", b"500")
    assert (health.BAD_REQUEST in CLOSED) == refused


async def test_a_head_that_never_ends_gets_408_after_the_header_timeout(server):
    reply = await exchange(server.port, b"GET /healthz HTTP/1.1\r\nX-Slow: 1")
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert CLOSED == [health.HEADER_TIMEOUT]


async def test_an_idle_kept_alive_connection_is_closed_and_counted_apart(server, caplog):
    reply = await exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ")  # then EOF after the keep-alive time
    silent = await exchange(server.port, b"")
    assert silent == b""
    assert sorted(CLOSED) == [health.HEADER_TIMEOUT, health.KEEPALIVE]
    # Logged once (the minute's first), and not for the routine keep-alive close.
    lines = [r.getMessage() for r in caplog.records if "metrics port" in r.getMessage()]
    assert lines == ["metrics port: connections closed by its limits: 1 header_timeout"]


async def test_over_the_limit_the_longest_idle_connection_makes_room(server):
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
    await asyncio.sleep(0.1)
    reply = await exchange(server.port, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ")
    first_reader, _ = idle[0]
    assert await asyncio.wait_for(first_reader.read(), 2) == b""  # pushed out
    assert server.evicted == 1
    assert CLOSED == [health.EVICTED]
    for _, writer in idle:
        writer.close()
