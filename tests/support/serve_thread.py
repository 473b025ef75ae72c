"""`main.serve()` (the listener process's loop: config and certificate watching, readiness,
drain) in a background thread, for tests that need the file watching without a subprocess."""

from __future__ import annotations

import asyncio
import pathlib
import threading

import uvloop

from mailwarden.listener import config as lc
from mailwarden.listener import main, server
from tests.support.listener import wait_until


class ServeThread:
    def __init__(self, path: pathlib.Path, poll: float = 0.05) -> None:
        self.source = main.FileSource(path)
        self.poll = poll
        self.loop = uvloop.new_event_loop()
        self.listener: server.Listener | None = None
        self.exit_code: int | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def go() -> int:
            self._stop = asyncio.Event()

            def started(listener: server.Listener) -> None:
                self.listener = listener

            return await main.serve(self.source, stop=self._stop, started=started, poll=self.poll)

        self.exit_code = self.loop.run_until_complete(go())

    def start(self) -> ServeThread:
        self._thread.start()
        wait_until(lambda: self.listener is not None, what="the listener to start")
        return self

    @property
    def config(self) -> lc.ListenerConfig:
        assert self.listener is not None
        return self.listener.config

    def metric(self, name: str, **labels: str) -> float:
        assert self.listener is not None
        value = self.listener.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def stop(self, timeout: float = 30) -> int | None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        return self.exit_code
