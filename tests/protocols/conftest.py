from __future__ import annotations

import pathlib

import pytest

from tests.support import certs, wire
from tests.support.servers_extra import nginx, prosody, slapd, smtp_sink, test_ca

__all__ = ["listener_tls", "nginx", "prosody", "slapd", "smtp_sink", "test_ca"]


@pytest.fixture
def listener_tls(test_ca: certs.CA, tmp_path: pathlib.Path) -> wire.ListenerTLS:
    return wire.make_listener_tls(test_ca, tmp_path / "listener-tls")
