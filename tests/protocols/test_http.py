"""HTTP and HTTPS through the listener, in front of a real nginx, with the httpx client."""

from __future__ import annotations

import httpx
import pytest

from mailwarden.listener.protocols import http
from tests.support import ldap_http_xmpp_servers as srv
from tests.support import wire
from tests.support.listener import free_port, service, wait_until

pytestmark = pytest.mark.servers


def client(tls: wire.ListenerTLS | None = None, source: str = wire.HOST) -> httpx.Client:
    transport = httpx.HTTPTransport(
        local_address=source, verify=tls.client() if tls else True, retries=0
    )
    return httpx.Client(transport=transport, timeout=10)


def url(port: int, tls: wire.ListenerTLS | None = None) -> str:
    # The listener's certificate names localhost; httpx checks it.
    return f"https://localhost:{port}/" if tls else f"http://{wire.HOST}:{port}/"


def test_an_admitted_http_client_gets_nginxs_answer(run_listener, nginx):
    lt = run_listener(service(kind="HTTP", backend_port=nginx.ports["http"]))
    with client() as c:
        r = c.get(url(wire.port_of(lt)))
    assert r.status_code == 200
    assert r.text == srv.HTTP_BODY + "\n"


def test_https_terminates_tls_and_relays_to_plain_nginx(run_listener, nginx, listener_tls):
    lt = run_listener(
        service(kind="HTTPS", backend_port=nginx.ports["http"], tls=listener_tls.files)
    )
    with client(listener_tls) as c:
        r = c.get(url(wire.port_of(lt), listener_tls))
    assert (r.status_code, r.text) == (200, srv.HTTP_BODY + "\n")


def test_https_relays_to_nginx_over_a_verified_tls_backend_leg(run_listener, nginx, listener_tls):
    lt = run_listener(
        service(
            kind="HTTPS",
            backend_port=nginx.ports["https"],
            tls=listener_tls.files,
            backend={
                "tls": {
                    "enabled": True,
                    "server_name": srv.BACKEND_NAME,
                    "ca_file": listener_tls.ca_file,
                }
            },
        )
    )
    with client(listener_tls) as c:
        r = c.get(url(wire.port_of(lt), listener_tls))
    assert (r.status_code, r.text) == (200, srv.HTTPS_BODY + "\n")


def test_https_relays_to_an_unverified_tls_backend_when_told_not_to_verify(
    run_listener, nginx, listener_tls
):
    lt = run_listener(
        service(
            kind="HTTPS",
            backend_port=nginx.ports["https"],
            tls=listener_tls.files,
            backend={"tls": {"enabled": True, "verify": False}},
        )
    )
    with client(listener_tls) as c:
        r = c.get(url(wire.port_of(lt), listener_tls))
    assert (r.status_code, r.text) == (200, srv.HTTPS_BODY + "\n")


@pytest.mark.parametrize("kind", ["HTTP", "HTTPS"])
def test_an_http_client_over_the_cap_gets_503_with_retry_after(
    run_listener, nginx, listener_tls, kind
):
    tls = listener_tls if kind == "HTTPS" else None
    lt = run_listener(
        service(
            kind=kind,
            backend_port=nginx.ports["http"],
            max_connections=1,
            tls=tls.files if tls else None,
        )
    )
    port = wire.port_of(lt)
    with client(tls) as holder:
        assert holder.get(url(port, tls)).status_code == 200  # kept alive: holds the one slot
        wait_until(lambda: lt.active("test/svc") == 1, what="one admitted session")
        with client(tls) as c:
            r = c.get(url(port, tls))
            h = c.head(url(port, tls))
        assert r.status_code == 503
        assert r.headers["retry-after"] == str(http.RETRY_AFTER)
        assert r.headers["connection"] == "close"
        assert "too many connections" in r.text.lower()
        assert h.status_code == 503 and h.content == b""
        assert holder.get(url(port, tls)).status_code == 200


@pytest.mark.parametrize("kind", ["HTTP", "HTTPS"])
def test_a_denied_http_client_gets_403(run_listener, listener_tls, kind):
    tls = listener_tls if kind == "HTTPS" else None
    lt = run_listener(service(kind=kind, allow=wire.ALLOWED, tls=tls.files if tls else None))
    with client(tls, source=wire.DENIED_SOURCE) as c:
        r = c.post(url(wire.port_of(lt), tls), content=b"x=1")
    assert r.status_code == 403
    assert r.http_version == "HTTP/1.1"
    assert "not allowed" in r.text
    assert lt.metric("mailwarden_connections_total", service="test/svc", outcome="denied") == 1


def test_an_http_client_whose_backend_is_down_gets_502(run_listener):
    lt = run_listener(service(kind="HTTP", backend_port=free_port()))
    with client() as c:
        r = c.get(url(wire.port_of(lt)))
    assert r.status_code == 502


def test_a_refused_client_with_an_oversized_request_head_gets_431(run_listener):
    lt = run_listener(service(kind="HTTP", allow=wire.ALLOWED))
    sock = wire.connect(wire.port_of(lt), source=wire.DENIED_SOURCE)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (http.HEAD_LIMIT + 10))
    reply = wire.read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_a_refused_client_sending_something_other_than_http_gets_400(run_listener):
    lt = run_listener(service(kind="HTTP", allow=wire.ALLOWED))
    sock = wire.connect(wire.port_of(lt), source=wire.DENIED_SOURCE)
    sock.sendall(b"\x16\x03\x01\x02\x00")  # a TLS ClientHello on the plain port
    assert wire.read_until_closed(sock).startswith(b"HTTP/1.1 400 Bad Request\r\n")
