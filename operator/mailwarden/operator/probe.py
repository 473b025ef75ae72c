"""Is a MailService's backend reachable? One TCP connection from the operator, bounded by a
short timeout, closed at once, as a load balancer's TCP health check does. It runs on the
event loop without blocking it (name resolution goes to the loop's thread pool).

A backend that expects a PROXY header is sent the header's health-check form (v1 `UNKNOWN`,
v2 `LOCAL`, as HAProxy's checks send), so Postfix or Dovecot do not log a broken header for
every probe. Reaching the port says nothing about the protocol behind it; that is the
listener's business, whose backend errors are counted in its metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time

V1_CHECK = b"PROXY UNKNOWN\r\n"
# Signature, version 2 + command LOCAL, family UNSPEC, no addresses.
V2_CHECK = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00, 0x00, 0x00])


@dataclasses.dataclass(frozen=True)
class Target:
    host: str
    port: int
    proxy_protocol: str = "none"  # none, v1, v2

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Result:
    target: Target
    error: str | None  # None: reachable
    at: float  # time.monotonic() of the probe

    def fresh(self, target: Target, max_age: float) -> bool:
        return self.target == target and time.monotonic() - self.at < max_age


async def reach(target: Target, seconds: float) -> str | None:
    """None when a TCP connection to the target opens within `seconds`; otherwise
    why not, in a few words ("Connection refused", "no answer within 3 s", ...)."""
    try:
        async with asyncio.timeout(seconds):
            _, writer = await asyncio.open_connection(target.host, target.port)
    except TimeoutError:
        return f"no answer within {seconds:g} s"
    except OSError as exc:  # refused, unreachable, unknown name (socket.gaierror)
        return _why(exc)
    try:
        if target.proxy_protocol == "v1":
            writer.write(V1_CHECK)
        elif target.proxy_protocol == "v2":
            writer.write(V2_CHECK)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1):
                await writer.wait_closed()
    return None


async def check(target: Target, seconds: float) -> Result:
    return Result(target, await reach(target, seconds), time.monotonic())


def _why(exc: OSError) -> str:
    # asyncio words a refusal "Connect call failed ('127.0.0.1', 25)"; the errno says it better.
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__
