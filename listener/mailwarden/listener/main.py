"""Running a listener process: load the configuration, serve, follow changes to the mounted
files, and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import pathlib
import signal
from collections.abc import Callable
from typing import Protocol

from mailwarden.listener import config, figures, health, server, watch

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0


class Source(Protocol):
    """Where the configuration comes from: a rendered file in a pod, or MailService
    manifests on a host (`mailwarden listen`)."""

    def paths(self) -> list[pathlib.Path]: ...

    def load(self) -> config.ListenerConfig: ...


class FileSource:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def paths(self) -> list[pathlib.Path]:
        return [self.path]

    def load(self) -> config.ListenerConfig:
        return config.load(self.path)


def tls_paths(cfg: config.ListenerConfig) -> list[pathlib.Path]:
    out: list[pathlib.Path] = []
    for svc in cfg.services:
        if svc.tls is not None:
            out += [svc.tls.cert_file, svc.tls.key_file]
    return out


async def serve(
    source: Source,
    *,
    stop: asyncio.Event | None = None,
    started: Callable[[server.Listener], None] | None = None,
    poll: float = POLL_SECONDS,
) -> int:
    """Serve until SIGTERM/SIGINT (or `stop`), then drain. Returns the exit status."""
    cfg = source.load()
    listener = server.Listener(cfg)
    await listener.start()
    # Everything allocated so far (modules, config, metrics) lives as long as the process:
    # keep it out of the collector's full passes, which otherwise stall every session.
    gc.freeze()
    app = health.HealthApp(
        listener.metrics.registry,
        lambda: listener.ready,
        routes={"/status": lambda: figures.response(listener.figures())},
    )
    web = health.server(app, cfg.metrics.address, cfg.metrics.port)
    web_task = asyncio.create_task(web.serve())
    stop = stop or asyncio.Event()
    reload_now = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signals reach only the main thread; embedded in another thread (tests, or a host
    # program) serve() runs without them (uvloop says so with ValueError, asyncio with
    # RuntimeError).
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload_now.set)
    for name, eps in listener.endpoints().items():
        log.info("%s listening on %s", name, ", ".join(f"[{h}]:{p}" for h, p in eps))
    if started is not None:
        started(listener)

    seen = watch.fingerprint(source.paths())
    seen_tls = watch.fingerprint(tls_paths(listener.config))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            reloading = asyncio.ensure_future(reload_now.wait())
            await asyncio.wait(
                [stopping, reloading], timeout=poll, return_when=asyncio.FIRST_COMPLETED
            )
            reloading.cancel()
            if stop.is_set():
                break
            current = watch.fingerprint(source.paths())
            if current != seen or reload_now.is_set():
                reload_now.clear()
                seen = current
                try:
                    await listener.reload(source.load())
                except config.ConfigError as exc:
                    listener.reject(str(exc))
                except server.ReloadError:
                    pass  # logged and counted by the listener
                seen_tls = watch.fingerprint(tls_paths(listener.config))
                continue
            current_tls = watch.fingerprint(tls_paths(listener.config))
            if current_tls != seen_tls:
                seen_tls = current_tls
                listener.reload_tls()
    finally:
        stopping.cancel()
        log.info("draining for up to %ss", listener.config.drain_seconds)
        cut = await listener.drain()
        web.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await web_task
        log.info("stopped (%d sessions cut at the end of the drain)", cut)
    return 0


def run(source: Source) -> int:
    """Blocking entry point with uvloop where available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(source))
    return uvloop.run(serve(source))
