"""The load generator: one scenario per process, raw asyncio Protocols on uvloop, loopback
only, every loop bounded in count and time.

It talks to the orchestrator in JSON lines on stdout (`{"event": ...}`); where the
orchestrator must measure something in the middle of a scenario (RSS with every session held),
the load generator waits for a line on stdin before going on.

    python -m bench.loadgen sessions --port P --concurrency 32 --seconds 3
    python -m bench.loadgen held --port P --count 9000
    python -m bench.loadgen stream --port P --streams 1 --bytes 1073741824
    python -m bench.loadgen held-traffic --port P --count 100 --interval 0.05
    python -m bench.loadgen flood --port P --attempts 20000 --concurrency 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop

from bench.backend import raise_nofile

HOST = "127.0.0.1"
EHLO = b"EHLO bench.test\r\n"
NOOP = b"NOOP\r\n"
QUIT = b"QUIT\r\n"
SESSION_TIMEOUT = 5.0


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def wait_for_orchestrator() -> None:
    """Block until the orchestrator says go (one line on stdin); EOF counts as go."""
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- short sessions ---------------------------------------------------------------------------


class ShortSession(asyncio.Protocol):
    """Greeting, EHLO, QUIT; resolves `done` with True when the 221 arrives."""

    __slots__ = ("buf", "done", "step", "timer", "transport")

    def __init__(self, done: asyncio.Future[bool]) -> None:
        self.done = done
        self.step = 0
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer = asyncio.get_running_loop().call_later(SESSION_TIMEOUT, self._timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while (end := buf.find(b"\n")) >= 0:
            line, buf = buf[:end], buf[end + 1 :]
            if self.step == 0 and line.startswith(b"220"):
                self.transport.write(EHLO)  # type: ignore[union-attr]
            elif self.step == 1 and line.startswith(b"250"):
                self.transport.write(QUIT)  # type: ignore[union-attr]
            elif self.step == 2 and line.startswith(b"221"):
                self._resolve(True)
                return
            else:
                self._resolve(False)
                self.transport.abort()  # type: ignore[union-attr]
                return
            self.step += 1
        self.buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        self._resolve(False)

    def _resolve(self, ok: bool) -> None:
        self.timer.cancel()
        if not self.done.done():
            self.done.set_result(ok)

    def _timeout(self) -> None:
        self._resolve(False)
        if self.transport is not None:
            self.transport.abort()


async def one_session(loop: asyncio.AbstractEventLoop, port: int) -> bool:
    done: asyncio.Future[bool] = loop.create_future()
    try:
        await loop.create_connection(lambda: ShortSession(done), HOST, port)
    except OSError:
        return False
    return await done


async def sessions(port: int, concurrency: int, seconds: float, warmup: float) -> None:
    loop = asyncio.get_running_loop()
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds
    latencies: list[float] = []
    failures = 0
    started = False

    async def worker() -> None:
        nonlocal failures, started
        now = time.perf_counter()
        while now < t_end:
            ok = await one_session(loop, port)
            after = time.perf_counter()
            if after >= t_start and not started:
                started = True
                emit("start")
            if t_start <= now and after <= t_end:
                if ok:
                    latencies.append(after - now)
                else:
                    failures += 1
            now = after

    await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(concurrency))), warmup + seconds + 30
    )
    emit(
        "end",
        sessions=len(latencies),
        failures=failures,
        seconds=seconds,
        rate=len(latencies) / seconds,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
    )


# -- held sessions ----------------------------------------------------------------------------


class Held(asyncio.Protocol):
    """A session that got its greeting and then sits idle; later it can be asked to prove
    it is still relayed (NOOP -> 250) or to run request/response with latencies."""

    __slots__ = ("buf", "lost", "transport", "waiter")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        end = buf.find(b"\n")
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 1 :]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(buf[: end + 1])

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(b"")

    async def request(self, line: bytes) -> bytes:
        if self.lost or self.transport is None:
            return b""
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(line)
        try:
            return await asyncio.wait_for(self.waiter, SESSION_TIMEOUT)
        except TimeoutError:
            return b""


async def open_held(port: int, deadline: float) -> Held | None:
    loop = asyncio.get_running_loop()
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(Held, HOST, port), max(0.1, deadline - time.monotonic())
        )
    except (OSError, TimeoutError):
        return None
    assert proto.waiter is not None
    try:
        line = await asyncio.wait_for(proto.waiter, max(0.1, deadline - time.monotonic()))
    except TimeoutError:
        line = b""
    if not line.startswith(b"220"):
        if proto.transport is not None:
            proto.transport.abort()
        return None
    return proto


async def open_many(port: int, count: int, parallel: int, seconds: float) -> list[Held]:
    deadline = time.monotonic() + seconds
    held: list[Held] = []
    sem = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with sem:
            if time.monotonic() < deadline:
                h = await open_held(port, deadline)
                if h is not None:
                    held.append(h)

    await asyncio.gather(*(one() for _ in range(count)))
    return held


async def held(port: int, count: int, parallel: int, seconds: float) -> None:
    warm = await open_many(port, min(100, count), parallel, seconds)
    for h in warm:
        assert h.transport is not None
        h.transport.abort()
    await asyncio.sleep(0.2)  # let the front end see the warm-up sessions go
    emit("baseline")
    await wait_for_orchestrator()
    t0 = time.monotonic()
    sessions = await open_many(port, count, parallel, seconds)
    emit("held", held=len(sessions), wanted=count, open_seconds=time.monotonic() - t0)
    await wait_for_orchestrator()
    answers = await asyncio.gather(*(h.request(NOOP) for h in sessions))
    alive = sum(1 for a in answers if a.startswith(b"250"))
    for h in sessions:
        if h.transport is not None:
            h.transport.abort()
    emit("end", held=len(sessions), alive=alive, wanted=count)


# -- throughput -------------------------------------------------------------------------------


class Sink(asyncio.Protocol):
    __slots__ = ("done", "got", "want")

    def __init__(self, want: int, done: asyncio.Future[int]) -> None:
        self.want = want
        self.got = 0
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"%d\n" % self.want)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.got += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.got)


async def stream(port: int, streams: int, nbytes: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[int]] = [loop.create_future() for _ in range(streams)]
    emit("start")
    t0 = time.perf_counter()
    for fut in futures:
        await loop.create_connection(
            lambda fut=fut: Sink(nbytes, fut),  # type: ignore[misc]
            HOST,
            port,
        )
    got = await asyncio.wait_for(asyncio.gather(*futures), seconds)
    elapsed = time.perf_counter() - t0
    total = sum(got)
    emit(
        "end",
        bytes=total,
        complete=total == nbytes * streams,
        seconds=elapsed,
        mb_per_s=total / elapsed / 1e6,
    )


# -- flood ------------------------------------------------------------------------------------


async def held_traffic(port: int, count: int, interval: float, seconds: float) -> None:
    """`count` admitted sessions, each sending NOOP every `interval`; every latency is kept
    with its (system-wide monotonic) time, so the orchestrator can split it by flood window."""
    sessions = await open_many(port, count, 50, 10.0)
    emit("ready", held=len(sessions), wanted=count)
    samples: list[tuple[float, float]] = []
    failures = 0
    stop = asyncio.Event()
    deadline = time.monotonic() + seconds

    async def loop_one(h: Held, offset: float) -> None:
        nonlocal failures
        await asyncio.sleep(offset)
        next_at = time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic()
            answer = await h.request(NOOP)
            t1 = time.monotonic()
            if answer.startswith(b"250"):
                samples.append((t0, t1 - t0))
            else:
                failures += 1
                return
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    tasks = [
        asyncio.ensure_future(loop_one(h, interval * i / max(1, len(sessions))))
        for i, h in enumerate(sessions)
    ]
    await wait_for_orchestrator()
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), SESSION_TIMEOUT + 5)
    answers = await asyncio.gather(*(h.request(NOOP) for h in sessions))
    alive = sum(1 for a in answers if a.startswith(b"250"))
    for h in sessions:
        if h.transport is not None:
            h.transport.abort()
    emit(
        "end",
        held=len(sessions),
        alive=alive,
        failures=failures,
        samples=[(round(t, 6), round(lat, 7)) for t, lat in samples],
    )


class Probe(asyncio.Protocol):
    """An over-cap attempt: collects what the front end says until it closes."""

    __slots__ = ("data", "done", "transport")

    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self.done = done
        self.data = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.data.startswith(b"220") and self.transport is not None:
            # Admitted although over the cap: leave at once so the count stays right.
            self.transport.write(QUIT)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.data)


async def flood(port: int, attempts: int, concurrency: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    counts = {"refused": 0, "admitted": 0, "no_reply": 0, "other": 0, "connect_error": 0}
    remaining = attempts
    first_line = b""

    async def worker() -> None:
        nonlocal remaining, first_line
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            done: asyncio.Future[bytes] = loop.create_future()
            try:
                await loop.create_connection(lambda done=done: Probe(done), HOST, port)  # type: ignore[misc]
            except OSError:
                counts["connect_error"] += 1
                continue
            try:
                data = await asyncio.wait_for(done, SESSION_TIMEOUT)
            except TimeoutError:
                data = b""
            if data.startswith(b"421"):
                counts["refused"] += 1
                first_line = first_line or data.split(b"\r\n", 1)[0]
            elif data.startswith(b"220"):
                counts["admitted"] += 1
            elif not data:
                counts["no_reply"] += 1
            else:
                counts["other"] += 1

    emit("start", t=time.monotonic())
    t0 = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(concurrency))), seconds + SESSION_TIMEOUT + 5
    )
    elapsed = time.perf_counter() - t0
    emit(
        "end",
        t=time.monotonic(),
        seconds=elapsed,
        attempts=attempts - max(0, remaining),
        rate=counts["refused"] / elapsed,
        refusal_line=first_line.decode("ascii", "replace"),
        **counts,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="scenario", required=True)
    s = sub.add_parser("sessions")
    s.add_argument("--concurrency", type=int, default=32)
    s.add_argument("--seconds", type=float, default=3.0)
    s.add_argument("--warmup", type=float, default=0.5)
    s = sub.add_parser("held")
    s.add_argument("--count", type=int, default=9000)
    s.add_argument("--parallel", type=int, default=200)
    s.add_argument("--seconds", type=float, default=60.0)
    s = sub.add_parser("stream")
    s.add_argument("--streams", type=int, default=1)
    s.add_argument("--bytes", type=int, default=1 << 30)
    s.add_argument("--seconds", type=float, default=60.0)
    s = sub.add_parser("held-traffic")
    s.add_argument("--count", type=int, default=100)
    s.add_argument("--interval", type=float, default=0.05)
    s.add_argument("--seconds", type=float, default=120.0)
    s = sub.add_parser("flood")
    s.add_argument("--attempts", type=int, default=20000)
    s.add_argument("--concurrency", type=int, default=200)
    s.add_argument("--seconds", type=float, default=30.0)
    for s in sub.choices.values():
        s.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    raise_nofile()
    run: Callable[[], Any]
    if args.scenario == "sessions":
        run = lambda: sessions(args.port, args.concurrency, args.seconds, args.warmup)  # noqa: E731
    elif args.scenario == "held":
        run = lambda: held(args.port, args.count, args.parallel, args.seconds)  # noqa: E731
    elif args.scenario == "stream":
        run = lambda: stream(args.port, args.streams, args.bytes, args.seconds)  # noqa: E731
    elif args.scenario == "held-traffic":
        run = lambda: held_traffic(args.port, args.count, args.interval, args.seconds)  # noqa: E731
    else:
        run = lambda: flood(args.port, args.attempts, args.concurrency, args.seconds)  # noqa: E731
    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
