"""The quick-start demo (run it with scripts/demo): a real SMTP server (aiosmtpd), the
listeners of the manifests in this folder in front of it (`mailwarden listen -f`), then an
admitted session, refusals and the metrics. Everything it starts, it stops."""

from __future__ import annotations

import pathlib
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller

HERE = pathlib.Path(__file__).resolve().parent
MAILWARDEN = pathlib.Path(sys.executable).with_name("mailwarden")
LISTENER = ("127.0.0.10", 10587)  # submission.yaml
BACKEND = ("127.0.0.1", 10025)  # submission.yaml's backend
METRICS = ("127.0.0.1", 19090)
DEADLINE = 20.0


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say()
    say(f"== {title}")


def wait_for(what: str, predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def port_free(address: tuple[str, int]) -> bool:
    with socket.socket() as s:
        # Connections of a previous run may linger in TIME_WAIT; the servers reuse the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError:
            return False
        return True


def answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def client(source: str) -> socket.socket:
    s = socket.socket()
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(LISTENER)
    return s


def line(s: socket.socket) -> bytes:
    out = bytearray()
    while not out.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def show(direction: str, data: bytes) -> None:
    for ln in data.decode(errors="replace").splitlines():
        say(f"   {direction} {ln}")


class Inbox:
    """aiosmtpd handler: keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Message accepted for delivery"


def main() -> int:
    for address in (LISTENER, BACKEND, METRICS):
        if not port_free(address):
            say(f"demo: {address[0]}:{address[1]} is in use; stop what holds it and try again")
            return 1
    inbox = Inbox()
    backend = Controller(inbox, hostname=BACKEND[0], port=BACKEND[1], server_hostname="backend")
    listener: subprocess.Popen[bytes] | None = None
    try:
        step("1. A real SMTP server (aiosmtpd) on 127.0.0.1:10025 plays the mail server")
        backend.start()
        step("2. mailwarden listen -f examples/demo/ puts the Submission listener in front of it")
        for f in sorted(HERE.glob("*.yaml")):
            say(f"   manifest {f.relative_to(HERE.parent.parent)}")
        listener = subprocess.Popen(
            [
                str(MAILWARDEN),
                "listen",
                "-f",
                str(HERE),
                "--metrics-address",
                METRICS[0],
                "--metrics-port",
                str(METRICS[1]),
                "--drain-seconds",
                "2",
            ],
        )
        wait_for("the listener", lambda: answers(LISTENER) and answers(METRICS))
        say(f"   listening on {LISTENER[0]}:{LISTENER[1]}, metrics on :{METRICS[1]}")

        step("3. An allowed client (127.0.0.1 is in demo-clients) sends a message through")
        with smtplib.SMTP(LISTENER[0], LISTENER[1], timeout=10) as smtp:
            code, banner = smtp.ehlo("demo.example")
            say(f"   <- {code} {banner.decode().splitlines()[0]}   (the backend's own reply)")
            smtp.sendmail(
                "alice@demo.example",
                ["bob@demo.example"],
                "Subject: hello through mailwarden\r\n\r\nIt works.\r\n",
            )
        wait_for("the message at the backend", lambda: bool(inbox.messages))
        sender, rcpts, content = inbox.messages[0]
        subject = next(ln for ln in content.decode().splitlines() if ln.startswith("Subject:"))
        say(f"   the SMTP server received: from {sender} to {', '.join(rcpts)}, {subject!r}")

        step("4. A client from 127.0.0.66 (not in the group) is refused in SMTP's words")
        with client("127.0.0.66") as s:
            show("<-", line(s))
            for command in (b"EHLO intruder.example\r\n", b"MAIL FROM:<x@example.org>\r\n"):
                show("->", command)
                s.sendall(command)
                show("<-", line(s))
            show("->", b"QUIT\r\n")
            s.sendall(b"QUIT\r\n")
            show("<-", line(s))

        step("5. maxConnectionsPerAddress: 2 -- a third session from 127.0.0.21 is refused")
        held = [client("127.0.0.21"), client("127.0.0.21")]
        for s in held:
            show("<-", line(s))
        with client("127.0.0.21") as s:
            show("<-", line(s))
        step("6. maxConnections: 3 -- 127.0.0.22 takes the last slot, 127.0.0.23 is refused")
        held.append(client("127.0.0.22"))
        show("<-", line(held[-1]))
        with client("127.0.0.23") as s:
            show("<-", line(s))
        for s in held:
            s.sendall(b"QUIT\r\n")
            line(s)
            s.close()

        step("7. The metrics (http://127.0.0.1:19090/metrics), this service's lines")
        wait_for("the sessions to end", lambda: _active() == 0)
        with urllib.request.urlopen(f"http://{METRICS[0]}:{METRICS[1]}/metrics") as r:
            text = r.read().decode()
        for ln in text.splitlines():
            if ln.startswith(
                (
                    "mailwarden_connections_total",
                    "mailwarden_connections_active",
                    "mailwarden_relayed_bytes_total",
                    "mailwarden_connection_cap",
                    "mailwarden_config_reloads_total",
                )
            ) and not ln.endswith(" 0.0"):
                say(f"   {ln}")
        step("8. Stopping: SIGTERM lets the listener drain, then the SMTP server stops")
        return 0
    finally:
        if listener is not None and listener.poll() is None:
            listener.send_signal(signal.SIGTERM)
            try:
                listener.wait(15)
            except subprocess.TimeoutExpired:
                listener.kill()
                listener.wait()
        if backend.loop.is_running():
            backend.stop()
        say("   done: nothing left running")


def _active() -> float:
    with urllib.request.urlopen(f"http://{METRICS[0]}:{METRICS[1]}/metrics") as r:
        for ln in r.read().decode().splitlines():
            if ln.startswith("mailwarden_connections_active{"):
                return float(ln.rsplit(" ", 1)[1])
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
