from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from tests.listener.clients import Backend
from tests.support.servers import dovecot, inn, mail_store, postfix

__all__ = ["dovecot", "inn", "mail_store", "postfix"]


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever clients send, the listener answers in its protocol and never logs a
    traceback (an exception escaping a callback is logged by asyncio with exc_info)."""
    caplog.set_level(logging.INFO)
    yield
    broken = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not broken, "\n".join(caplog.text.splitlines()[-40:])


@pytest.fixture
def backend() -> Iterator[Callable[..., Backend]]:
    """Start TCP backends of our own; each is closed at the end of the test."""
    made: list[Backend] = []

    def make(handler: Callable[..., None], host: str = "127.0.0.1", port: int = 0) -> Backend:
        b = Backend(handler, host, port)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()
