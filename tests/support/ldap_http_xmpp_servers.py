"""Real Debian servers for the LDAP, HTTP and XMPP services, on loopback: slapd (OpenLDAP),
nginx and Prosody, with their fixtures (registered in tests/conftest.py).

Each runs in the foreground under its fixture from a private folder, with certificates made
by the test CA, and is stopped by PID at teardown (this init does not reap orphans, so
nothing may daemonise). Waiting is by polling with a deadline."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import subprocess
import textwrap
from collections.abc import Iterator

import pytest

from tests.support import certs
from tests.support.listener import free_port
from tests.support.process import (
    private_dir,
    require,
    stop_process,
    wait_port,
)

HOST = "127.0.0.1"
SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
NGINX = "/usr/sbin/nginx"
PROSODY = "/usr/bin/prosody"

LDAP_SUFFIX = "dc=example,dc=test"
LDAP_ADMIN = f"cn=admin,{LDAP_SUFFIX}"
LDAP_PASSWORD = "directory-secret"
LDAP_USER = f"uid=alice,ou=people,{LDAP_SUFFIX}"

HTTP_BODY = "hello from nginx"
HTTPS_BODY = "hello from nginx over tls"

XMPP_DOMAIN = "example.test"
XMPP_USER = "alice"
XMPP_PASSWORD = "chat-secret"

# The name every backend's certificate carries; the listener checks it on its TLS leg.
BACKEND_NAME = "backend.example.test"


@dataclasses.dataclass
class Daemon:
    """A foreground server process with its folder and log."""

    name: str
    root: pathlib.Path
    argv: list[str]
    log: pathlib.Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        for port in self.ports.values():
            wait_port(HOST, port, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


# -- slapd ---------------------------------------------------------------------------------


def make_slapd(ca: certs.CA) -> Daemon:
    root = private_dir("slapd")
    (root / "data").mkdir()
    cert, key = ca.issue(BACKEND_NAME, HOST).write(root / "tls")
    ports = {"ldap": free_port(), "ldaps": free_port()}
    conf = root / "slapd.conf"
    conf.write_text(
        textwrap.dedent(f"""\
        include /etc/ldap/schema/core.schema
        include /etc/ldap/schema/cosine.schema
        include /etc/ldap/schema/inetorgperson.schema
        pidfile {root}/slapd.pid
        argsfile {root}/slapd.args
        modulepath /usr/lib/ldap
        moduleload back_mdb
        TLSCertificateFile {cert}
        TLSCertificateKeyFile {key}
        database mdb
        maxsize 10485760
        suffix "{LDAP_SUFFIX}"
        rootdn "{LDAP_ADMIN}"
        rootpw {LDAP_PASSWORD}
        directory {root}/data
        access to * by * read
        """)
    )
    ldif = root / "data.ldif"
    ldif.write_text(
        textwrap.dedent(f"""\
        dn: {LDAP_SUFFIX}
        objectClass: dcObject
        objectClass: organization
        o: Example
        dc: example

        dn: ou=people,{LDAP_SUFFIX}
        objectClass: organizationalUnit
        ou: people

        dn: {LDAP_USER}
        objectClass: inetOrgPerson
        uid: alice
        cn: Alice Liddell
        sn: Liddell
        mail: alice@example.test
        """)
    )
    subprocess.run(
        [SLAPADD, "-q", "-f", str(conf), "-l", str(ldif)], check=True, capture_output=True
    )
    urls = f"ldap://{HOST}:{ports['ldap']}/ ldaps://{HOST}:{ports['ldaps']}/"
    return Daemon(
        "slapd", root, [SLAPD, "-d", "0", "-h", urls, "-f", str(conf)], root / "slapd.log", ports
    )


# -- nginx ---------------------------------------------------------------------------------


def make_nginx(ca: certs.CA) -> Daemon:
    root = private_dir("nginx")
    cert, key = ca.issue(BACKEND_NAME, HOST).write(root / "tls")
    ports = {"http": free_port(), "https": free_port()}
    conf = root / "nginx.conf"
    temp = "\n".join(
        f"  {k}_temp_path {root}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(
        f"""\
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 512; }}
http {{
  access_log {root}/access.log;
{temp}
  server {{
    listen {HOST}:{ports["http"]};
    location / {{ default_type text/plain; return 200 "{HTTP_BODY}\\n"; }}
    location /slow {{ default_type text/plain; return 200 "slow\\n"; }}
  }}
  server {{
    listen {HOST}:{ports["https"]} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ default_type text/plain; return 200 "{HTTPS_BODY}\\n"; }}
  }}
}}
"""
    )
    # One process, no daemon: the fixture's PID is the server.
    argv = [NGINX, "-p", str(root), "-c", str(conf), "-g", "daemon off; master_process off;"]
    return Daemon("nginx", root, argv, root / "error.log", ports)


# -- Prosody -------------------------------------------------------------------------------


def make_prosody(ca: certs.CA) -> Daemon:
    root = private_dir("prosody")
    data = root / "data"
    cert, key = ca.issue(XMPP_DOMAIN, BACKEND_NAME, HOST).write(root / "tls")
    # mod_auth_internal_plain's store: data/<host, escaped>/accounts/<user>.dat
    accounts = data / XMPP_DOMAIN.replace(".", "%2e") / "accounts"
    accounts.mkdir(parents=True)
    (accounts / f"{XMPP_USER}.dat").write_text(f'return {{ ["password"] = "{XMPP_PASSWORD}"; }};\n')
    ports = {"c2s": free_port(), "direct_tls": free_port()}
    conf = root / "prosody.cfg.lua"
    conf.write_text(
        textwrap.dedent(f"""\
        run_as_root = true
        pidfile = "{root}/prosody.pid"
        data_path = "{data}"
        log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{root}/prosody.log" }} }}
        plugin_paths = {{}}
        modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping" }}
        modules_disabled = {{ "s2s", "offline", "c2s_limits" }}
        interfaces = {{ "{HOST}" }}
        c2s_ports = {{ {ports["c2s"]} }}
        c2s_direct_tls_ports = {{ {ports["direct_tls"]} }}
        s2s_ports = {{}}
        http_ports = {{}}
        https_ports = {{}}
        authentication = "internal_plain"
        c2s_require_encryption = false
        allow_unencrypted_plain_auth = true
        use_dane = false
        ssl = {{ certificate = "{cert}", key = "{key}" }}
        c2s_direct_tls_ssl = {{ certificate = "{cert}", key = "{key}" }}
        VirtualHost "{XMPP_DOMAIN}"
            ssl = {{ certificate = "{cert}", key = "{key}" }}
        """)
    )
    argv = [PROSODY, "-F", "--config", str(conf)]
    return Daemon("prosody", root, argv, root / "prosody.log", ports)


# -- fixtures ------------------------------------------------------------------------------


def _serve(daemon: Daemon) -> Iterator[Daemon]:
    try:
        daemon.start()
    except BaseException:
        daemon.stop()
        raise
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def slapd(test_ca: certs.CA) -> Iterator[Daemon]:
    require(SLAPD, SLAPADD)
    yield from _serve(make_slapd(test_ca))


@pytest.fixture(scope="session")
def nginx(test_ca: certs.CA) -> Iterator[Daemon]:
    require(NGINX)
    yield from _serve(make_nginx(test_ca))


@pytest.fixture(scope="session")
def prosody(test_ca: certs.CA) -> Iterator[Daemon]:
    require(PROSODY)
    yield from _serve(make_prosody(test_ca))
