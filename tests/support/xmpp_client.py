"""One slixmpp login attempt, run to its end in a private event loop, and what the client
saw: a started session, a stream error, or a connection that ended without either."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from typing import Any

import slixmpp

from tests.support import ldap_http_xmpp_servers as srv


@dataclasses.dataclass
class Outcome:
    session_started: bool = False
    stream_error: tuple[str, str] | None = None  # (condition, text)
    auth_failed: bool = False
    disconnected: bool = False
    encrypted: bool = False


def login(
    port: int,
    ctx: ssl.SSLContext,
    *,
    direct_tls: bool = False,
    starttls: bool = True,
    timeout: float = 15,
) -> Outcome:
    return asyncio.run(_login(port, ctx, direct_tls, starttls, deadline=timeout))


async def _login(
    port: int, ctx: ssl.SSLContext, direct_tls: bool, starttls: bool, *, deadline: float
) -> Outcome:
    xmpp = slixmpp.ClientXMPP(f"{srv.XMPP_USER}@{srv.XMPP_DOMAIN}", srv.XMPP_PASSWORD)
    xmpp.enable_direct_tls = direct_tls
    xmpp.enable_starttls = starttls and not direct_tls
    xmpp.enable_plaintext = not direct_tls and not starttls
    xmpp.ssl_context = ctx
    out = Outcome()
    done = asyncio.Event()

    def session_start(_: Any) -> None:
        out.session_started = True
        out.encrypted = xmpp.transport is not None and (
            xmpp.transport.get_extra_info("sslcontext") is not None
        )
        xmpp.disconnect()

    def stream_error(error: Any) -> None:
        out.stream_error = (str(error["condition"]), str(error["text"]))

    def failed_auth(_: Any) -> None:
        out.auth_failed = True
        xmpp.disconnect()

    def disconnected(_: Any) -> None:
        out.disconnected = True
        done.set()

    def connection_failed(_: Any) -> None:
        done.set()

    xmpp.add_event_handler("session_start", session_start)
    xmpp.add_event_handler("stream_error", stream_error)
    xmpp.add_event_handler("failed_all_auth", failed_auth)
    xmpp.add_event_handler("disconnected", disconnected)
    xmpp.add_event_handler("connection_failed", connection_failed)
    xmpp.connect(srv.HOST, port)
    try:
        await asyncio.wait_for(done.wait(), deadline)
    finally:
        # No reconnection attempts after the test's one.
        xmpp.cancel_connection_attempt()
        xmpp.abort()
    return out
