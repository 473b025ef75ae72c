"""An SMTP backend that keeps what it receives (aiosmtpd, in a thread), for SMTP-family tests
that need no Postfix; with its fixture (registered in tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import shutil
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import certs
from tests.support.ldap_http_xmpp_servers import BACKEND_NAME, HOST
from tests.support.listener import free_port
from tests.support.process import private_dir


class Inbox:
    """aiosmtpd handler: every accepted message, as (sender, recipients, content)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Ok: queued"

    def wait_for(self, marker: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            for _, _, content in list(self.messages):
                if marker in content:
                    return content
            if time.monotonic() > deadline:
                raise AssertionError(f"no message with {marker!r} reached the backend")
            time.sleep(0.02)


@dataclasses.dataclass
class SMTPSink:
    port: int
    inbox: Inbox
    controller: Any


@pytest.fixture(scope="session")
def smtp_sink(test_ca: certs.CA) -> Iterator[SMTPSink]:
    """aiosmtpd with STARTTLS (the backend's own certificate), in a thread."""
    from aiosmtpd.controller import Controller

    root = private_dir("aiosmtpd")
    cert, key = test_ca.issue(BACKEND_NAME, HOST).write(root)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox, hostname=HOST, port=port, tls_context=ctx, require_starttls=False, ready_timeout=10
    )
    controller.start()
    try:
        yield SMTPSink(port, inbox, controller)
    finally:
        controller.stop()
        shutil.rmtree(root, ignore_errors=True)
