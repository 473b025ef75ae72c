"""A new certificate in the mounted files is used for new sessions without a restart, under
load; sessions opened before the swap go on; a broken pair is refused and the old one stays."""

from __future__ import annotations

import pathlib
import threading
import time

import pytest

from mailwarden.listener import config as lc
from tests.support import certs, wire
from tests.support import ldap_http_xmpp_servers as srv
from tests.support.listener import free_port, service, wait_until
from tests.support.serve_thread import ServeThread

pytestmark = pytest.mark.servers

# Bounds of the load: at most this many requests per worker, for at most this long.
WORKERS = 4
REQUESTS_PER_WORKER = 400
LOAD_SECONDS = 20.0

GET = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


def write_config(path: pathlib.Path, *services: lc.ServiceConfig) -> None:
    cfg = lc.ListenerConfig(
        services=services, metrics=lc.Metrics(address=wire.HOST, port=free_port())
    )
    path.write_text(lc.dumps(cfg))


def served_serial(port: int, tls: wire.ListenerTLS) -> int:
    with wire.connect_tls(port, tls.client(), server_name="localhost") as sock:
        return certs.served_serial(sock.getpeercert(binary_form=True))


def http_get(sock) -> bytes:
    sock.sendall(GET)
    head = wire.read_until(sock, b"\r\n\r\n")
    # nginx answers with Content-Length; the body is short and arrives with the head or soon.
    body_len = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    body = head.split(b"\r\n\r\n", 1)[1]
    while len(body) < body_len:
        body += sock.recv(65536)
    return head.split(b"\r\n", 1)[0] + b" " + body


class Load:
    """Workers that open a new TLS session per request until stopped (bounded)."""

    def __init__(self, port: int, tls: wire.ListenerTLS) -> None:
        self.port, self.tls = port, tls
        self.ok = 0
        self.failures: list[str] = []
        self.serials: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work) for _ in range(WORKERS)]

    def _work(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        for _ in range(REQUESTS_PER_WORKER):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                with wire.connect_tls(self.port, self.tls.client(), server_name="localhost") as s:
                    serial = certs.served_serial(s.getpeercert(binary_form=True))
                    reply = http_get(s)
                assert reply.startswith(b"HTTP/1.1 200"), reply
                with self._lock:
                    self.ok += 1
                    self.serials.add(serial)
            except Exception as exc:  # counted and reported by the test
                with self._lock:
                    self.failures.append(repr(exc))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(LOAD_SECONDS + 10)


def test_a_rotated_certificate_is_served_to_new_sessions_while_old_sessions_go_on(
    tmp_path, test_ca, nginx
):
    tls = wire.make_listener_tls(test_ca, tmp_path / "tls")
    cfg_path = tmp_path / "listener.yaml"
    write_config(cfg_path, service(kind="HTTPS", backend_port=nginx.ports["http"], tls=tls.files))
    serving = ServeThread(cfg_path).start()
    try:
        port = serving.listener.endpoints()["test/svc"][0][1]
        old_serial = served_serial(port, tls)
        before = wire.connect_tls(port, tls.client(), server_name="localhost")
        assert http_get(before).startswith(b"HTTP/1.1 200")
        with Load(port, tls) as load:
            wait_until(lambda: load.ok >= 20, what="load before the swap")
            new = test_ca.issue(*wire.LISTENER_NAMES)
            new.write(tls.folder)
            wait_until(
                lambda: served_serial(port, tls) == new.serial, what="the new certificate served"
            )
            ok_at_swap = load.ok
            wait_until(lambda: load.ok >= ok_at_swap + 20, what="load after the swap")
        assert load.failures == []
        assert load.serials == {old_serial, new.serial}
        # The session opened before the swap still works, on its old certificate.
        assert certs.served_serial(before.getpeercert(binary_form=True)) == old_serial
        assert http_get(before) == b"HTTP/1.1 200 OK " + srv.HTTP_BODY.encode() + b"\n"
        before.close()
        assert (
            serving.metric("mailwarden_tls_reloads_total", service="test/svc", result="success")
            == 1
        )

        # A broken pair (the new certificate with someone else's key) is refused.
        other = test_ca.issue("other.example.test")
        certs.write_pair(tls.folder, new.cert_pem, other.key_pem)
        wait_until(
            lambda: (
                serving.metric("mailwarden_tls_reloads_total", service="test/svc", result="failure")
                == 1
            ),
            what="the broken pair refused",
        )
        assert served_serial(port, tls) == new.serial
    finally:
        assert serving.stop() == 0
