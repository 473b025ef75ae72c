"""The benchmark's backend: an SMTP-like server and a byte source, as small uvloop Protocols
in their own process so that neither front end is measured against a slow backend.

- SMTP port: `220` greeting, `250` to any command line, `221` then close on QUIT.
- Source port: reads one line with a byte count, sends that many bytes, then closes.

Run: python -m bench.backend --smtp-port P --source-port Q (prints "ready" when bound)."""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys

import uvloop

GREETING = b"220 bench.test ESMTP ready\r\n"
OK = b"250 2.0.0 ok\r\n"
BYE = b"221 2.0.0 bye\r\n"
CHUNK = bytes(256 * 1024)


class SMTPLike(asyncio.Protocol):
    __slots__ = ("buf", "transport")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        while True:
            end = buf.find(b"\n")
            if end < 0:
                break
            line, buf = buf[: end + 1], buf[end + 1 :]
            if line[:4].upper() == b"QUIT":
                out.append(BYE)
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            out.append(OK)
        self.buf = buf[-1024:]
        if out:
            self.transport.write(b"".join(out))

    def eof_received(self) -> bool:
        return False


class Source(asyncio.Protocol):
    """Sends the requested number of bytes, pacing itself with the transport's flow control."""

    __slots__ = ("left", "paused", "transport")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.left = -1
        self.paused = False

    def data_received(self, data: bytes) -> None:
        if self.left < 0 and data.endswith(b"\n"):
            self.left = int(data.strip())
            self._pump()

    def _pump(self) -> None:
        t = self.transport
        while self.left > 0 and not self.paused and not t.is_closing():
            n = min(self.left, len(CHUNK))
            t.write(CHUNK if n == len(CHUNK) else CHUNK[:n])
            self.left -= n
        if self.left == 0:
            self.left = -2
            t.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(smtp_port: int, source_port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    servers = [
        await loop.create_server(SMTPLike, "127.0.0.1", smtp_port, backlog=4096),
        await loop.create_server(Source, "127.0.0.1", source_port, backlog=4096),
    ]
    print("ready", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--smtp-port", type=int, required=True)
    p.add_argument("--source-port", type=int, required=True)
    args = p.parse_args(argv)
    raise_nofile()
    uvloop.run(serve(args.smtp_port, args.source_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
