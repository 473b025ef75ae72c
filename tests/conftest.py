from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from mailwarden.listener import config as lc
from tests.support.listener import ListenerThread

pytest_plugins = ["tests.support.attack"]


@pytest.fixture
def run_listener() -> Iterator[Callable[..., ListenerThread]]:
    """Start listeners for a test; every one is stopped at the end."""
    started: list[ListenerThread] = []

    def start(*services: lc.ServiceConfig, **options: object) -> ListenerThread:
        cfg = lc.ListenerConfig(services=services, **options)  # type: ignore[arg-type]
        lt = ListenerThread(cfg).start()
        started.append(lt)
        return lt

    yield start
    for lt in started:
        lt.stop()
