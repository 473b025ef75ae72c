from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from mailwarden.listener import config as lc
from tests.support.listener import EVENT_LOOPS, ListenerThread


@pytest.fixture(params=sorted(EVENT_LOOPS))
def run_listener(request: pytest.FixtureRequest) -> Iterator[Callable[..., ListenerThread]]:
    """Listeners on each event loop the listener runs on: the TLS paths (implicit TLS, the
    NNTP gate's STARTTLS, the bytes that come with the PROXY header before the ClientHello)
    hand bytes to the TLS layer that `start_tls` puts in place, and the order of its first
    steps is each loop's own (the listener falls back to asyncio where uvloop is missing)."""
    started: list[ListenerThread] = []

    def start(*services: lc.ServiceConfig, **options: object) -> ListenerThread:
        cfg = lc.ListenerConfig(services=services, **options)  # type: ignore[arg-type]
        lt = ListenerThread(cfg, event_loop=request.param).start()
        started.append(lt)
        return lt

    yield start
    for lt in started:
        lt.stop()
