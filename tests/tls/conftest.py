from __future__ import annotations

import pathlib
import socket
from collections.abc import Iterator

import pytest

from tests.support import certs, wire
from tests.support.servers_extra import nginx, prosody, slapd, smtp_sink, test_ca

__all__ = ["listener_tls", "nginx", "prosody", "slapd", "smtp_sink", "test_ca"]


@pytest.fixture
def listener_tls(test_ca: certs.CA, tmp_path: pathlib.Path) -> wire.ListenerTLS:
    return wire.make_listener_tls(test_ca, tmp_path / "listener-tls")


@pytest.fixture
def silent_backend() -> Iterator[int]:
    """A port that accepts connections (in the kernel's backlog) and never answers: enough
    for an admitted session to hold its slot in refusal tests."""
    with socket.create_server((wire.HOST, 0), backlog=64) as sock:
        yield sock.getsockname()[1]
