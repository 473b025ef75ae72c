"""Running a listener process: load the configuration, serve, follow changes to the mounted
files, and on SIGTERM: lame duck, then drain.

Shutdown, in order (a second SIGTERM or SIGINT at any point cuts it short, closing every
session at once, as nginx's and HAProxy's fast shutdowns do):
1. lame duck (`lame_duck_seconds`, 0 = none): /readyz answers 503 while every port still
   accepts, so that EndpointSlices and the load balancers' health checks stop sending new
   clients before the ports close;
2. drain (`drain_seconds`): the ports close; open sessions may finish;
3. what is left is closed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import pathlib
import signal
from collections.abc import Callable
from typing import Protocol

from mailwarden.listener import config, fdlimit, figures, health, server, watch

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


class Shutdown:
    """The shutdown signals: the first one starts the lame duck and drain, the next one cuts
    them short."""

    def __init__(self, stop: asyncio.Event | None = None) -> None:
        self.stop = stop or asyncio.Event()
        self.cut = asyncio.Event()
        # Set for the lame duck: /readyz says 503 while the ports still accept.
        self.lame_duck = False

    def signalled(self) -> None:
        if self.stop.is_set():
            if not self.cut.is_set():
                log.warning("second shutdown signal: closing every session now")
            self.cut.set()
        else:
            self.stop.set()


async def _until(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True if it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


async def serve(
    source: Source,
    *,
    stop: asyncio.Event | None = None,
    cut: asyncio.Event | None = None,
    started: Callable[[server.Listener], None] | None = None,
    poll: float = POLL_SECONDS,
) -> int:
    """Serve until SIGTERM/SIGINT (or `stop`), then lame duck and drain (cut short by a
    second signal, or `cut`). Returns the exit status."""
    limits = fdlimit.raise_soft_limit()
    cfg = source.load()
    listener = server.Listener(cfg)
    listener.metrics.open_files_limit.labels("soft").set(limits.soft)
    listener.metrics.open_files_limit.labels("hard").set(limits.hard)
    listener.metrics.open_files.set_function(fdlimit.open_files)
    await listener.start()
    # Everything allocated so far (modules, config, metrics) lives as long as the process:
    # keep it out of the collector's full passes, which otherwise stall every session.
    gc.freeze()
    shutdown = Shutdown(stop)
    if cut is not None:
        shutdown.cut = cut
    web = health.HealthServer(
        {
            "/metrics": listener.metrics.exposition,
            "/healthz": health.healthz,
            "/readyz": health.ready_route(lambda: listener.ready and not shutdown.lame_duck),
            "/status": lambda: figures.response(listener.figures()),
        },
        closed=lambda reason: listener.metrics.metrics_port_closed.labels(reason).inc(),
    )
    await web.start(cfg.metrics.address, cfg.metrics.port)
    reload_now = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signals reach only the main thread; embedded in another thread (tests, or a host
    # program) serve() runs without them (uvloop says so with ValueError, asyncio with
    # RuntimeError).
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, shutdown.signalled)
        loop.add_signal_handler(signal.SIGINT, shutdown.signalled)
        loop.add_signal_handler(signal.SIGHUP, reload_now.set)
    for name, eps in listener.endpoints().items():
        log.info("%s listening on %s", name, ", ".join(f"[{h}]:{p}" for h, p in eps))
    # What the files hold now, taken before anyone is told the listener runs: a change made
    # right after `started` must be seen as one.
    seen = watch.fingerprint(source.paths())
    seen_tls = watch.fingerprint(tls_paths(listener.config))
    unreadable = False
    if started is not None:
        started(listener)

    stopping = asyncio.ensure_future(shutdown.stop.wait())
    try:
        while not shutdown.stop.is_set():
            reloading = asyncio.ensure_future(reload_now.wait())
            await asyncio.wait(
                [stopping, reloading], timeout=poll, return_when=asyncio.FIRST_COMPLETED
            )
            reloading.cancel()
            if shutdown.stop.is_set():
                break
            try:
                current = watch.fingerprint(source.paths())
                if current != seen or reload_now.is_set():
                    await _reload(listener, source)
                    reload_now.clear()
                    seen = current
                    seen_tls = watch.fingerprint(tls_paths(listener.config))
                    continue
                current_tls = watch.fingerprint(tls_paths(listener.config))
            except config.ConfigUnreadable as exc:
                # Out of file descriptors (or memory): not a broken file. Nothing changes;
                # the files are looked at again at the next poll.
                if not unreadable:
                    log.warning("cannot read the configuration files now, will retry: %s", exc)
                unreadable = True
                continue
            unreadable = False
            if current_tls != seen_tls:
                seen_tls = current_tls
                listener.reload_tls()
    finally:
        stopping.cancel()
        lame = listener.config.lame_duck_seconds
        if lame > 0 and not shutdown.cut.is_set():
            shutdown.lame_duck = True
            log.info("lame duck for %ss: not ready, still accepting", lame)
            await _until(shutdown.cut, lame)
        closed = await _drain(listener, shutdown.cut)
        await web.close()
        log.info("stopped (%d sessions cut at the end of the drain)", closed)
    return 0


async def _reload(listener: server.Listener, source: Source) -> None:
    """Put the files' configuration in force; a broken one is logged and counted, and the
    last good one stays. Raises ConfigUnreadable (and changes nothing) when the files cannot
    be read now."""
    try:
        await listener.reload(source.load())
    except config.ConfigError as exc:
        listener.reject(str(exc))
    except server.ReloadError:
        pass  # logged and counted by the listener


async def _drain(listener: server.Listener, cut: asyncio.Event) -> int:
    """The listener's drain, cut short when `cut` is set."""
    if cut.is_set():
        log.info("draining: none (cut short)")
        return await listener.drain(0)
    log.info("draining for up to %ss", listener.config.drain_seconds)
    draining = asyncio.ensure_future(listener.drain())
    cutting = asyncio.ensure_future(cut.wait())
    await asyncio.wait([draining, cutting], return_when=asyncio.FIRST_COMPLETED)
    cutting.cancel()
    if draining.done():
        return draining.result()
    # Close what is left now; the first drain then sees its sessions end and returns.
    n = await listener.drain(0)
    await draining
    return n


def run(source: Source) -> int:
    """Blocking entry point with uvloop where available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(source))
    return uvloop.run(serve(source))
