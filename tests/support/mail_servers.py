"""Real Debian mail servers on loopback for the tests: Postfix, Dovecot and INN.

Each one runs in the foreground under the fixture, from a private configuration and state
folder, and is stopped by PID at teardown (this init does not reap orphans, so nothing may
daemonise). Waiting is by polling with a deadline; a server that does not come up fails the
fixture with its log attached.

Postfix delivers mail for `test.example` into maildirs that Dovecot serves over IMAP and POP3,
so a message sent through the listener to Postfix can be read back through Dovecot. Both
servers also listen on a second port that expects a PROXY header, and both log the client
address they were given, so tests can show the original address survives the relay.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator

import pytest

from tests.support.listener import free_port
from tests.support.process import (
    ServerFailed,
    private_dir,
    require,
    stop_process,
    wait_log,
    wait_port,
)

HOST = "127.0.0.1"
MAIL_DOMAIN = "test.example"
MAIL_USER = "alice"
MAIL_PASSWORD = "wonderland"
NEWS_USER = "reader"
NEWS_PASSWORD = "newsprint"
NEWS_GROUP = "test.news"
NEWS_MESSAGE_ID = "<first-article@test.example>"
NEWS_BODY = "The first article of the test group."
# The one address allowed to feed articles into INN (incoming.conf); readers come from
# anywhere else on loopback.
NEWS_FEEDER = "127.0.0.2"
# Mail and news files belong to this user so that Dovecot (which will not serve mail as
# root) and Postfix's virtual delivery agree on ownership.
MAIL_UID = MAIL_GID = 65534

POSTFIX = "/usr/sbin/postfix"
DOVECOT = "/usr/sbin/dovecot"
INN_BIN = pathlib.Path("/usr/lib/news/bin")


def _backdate(*paths: pathlib.Path) -> None:
    # Postfix re-reads (with sleeps) a main.cf written less than a second before start.
    past = time.time() - 60
    for p in paths:
        os.utime(p, (past, past))


# -- the mail store shared by Postfix and Dovecot ------------------------------------------


@dataclasses.dataclass
class MailStore:
    root: pathlib.Path

    def maildir(self, user: str = MAIL_USER) -> pathlib.Path:
        return self.root / user

    def messages(self, user: str = MAIL_USER) -> list[bytes]:
        out = []
        for sub in ("new", "cur"):
            folder = self.maildir(user) / sub
            if folder.is_dir():
                out += [p.read_bytes() for p in sorted(folder.iterdir())]
        return out


def make_mail_store() -> MailStore:
    root = private_dir("mail")
    os.chown(root, MAIL_UID, MAIL_GID)
    return MailStore(root)


# -- Postfix ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Postfix:
    dir: pathlib.Path
    port: int  # plain SMTP
    proxy_port: int  # SMTP behind a PROXY header (smtpd_upstream_proxy_protocol = haproxy)
    log: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> pathlib.Path:
        return self.dir / "conf"

    def start(self) -> Postfix:
        require(POSTFIX)
        self.proc = subprocess.Popen(
            [POSTFIX, "-c", str(self.conf), "start-fg"],
            stdin=subprocess.DEVNULL,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_port(HOST, self.port, self.proc, self.log)
            wait_port(HOST, self.proxy_port, self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        # Killing start-fg would leave the master running; ask Postfix itself.
        subprocess.run(
            [POSTFIX, "-c", str(self.conf), "stop"],
            check=False,
            capture_output=True,
            timeout=30,
        )
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        return wait_log(self.log, pattern, timeout)


def make_postfix(store: MailStore) -> Postfix:
    d = private_dir("postfix")
    conf, queue, data = d / "conf", d / "queue", d / "data"
    for p in (conf, queue, data):
        p.mkdir()
    shutil.chown(data, "postfix")
    pf = Postfix(d, free_port(), free_port(), d / "postfix.log")
    (conf / "main.cf").write_text(
        textwrap.dedent(
            f"""\
            compatibility_level = 3.6
            queue_directory = {queue}
            data_directory = {data}
            mail_owner = postfix
            setgid_group = postdrop
            myhostname = mx.{MAIL_DOMAIN}
            mydomain = {MAIL_DOMAIN}
            mydestination =
            inet_interfaces = {HOST}
            inet_protocols = ipv4
            alias_maps =
            alias_database =
            local_recipient_maps =
            smtpd_peername_lookup = no
            smtpd_banner = $myhostname ESMTP Postfix
            biff = no
            smtputf8_enable = no
            # start-fg logs to its standard output, which the fixture keeps in a file.
            maillog_file = /dev/stdout
            virtual_mailbox_domains = {MAIL_DOMAIN}
            virtual_mailbox_base = {store.root}
            virtual_mailbox_maps = inline:{{ {{{MAIL_USER}@{MAIL_DOMAIN} = {MAIL_USER}/}} }}
            virtual_uid_maps = static:{MAIL_UID}
            virtual_gid_maps = static:{MAIL_GID}
            virtual_minimum_uid = 1
            """
        )
    )
    services = [
        ("pickup", "unix", "n", "60", "1", "pickup"),
        ("cleanup", "unix", "n", "-", "0", "cleanup"),
        ("qmgr", "unix", "n", "300", "1", "qmgr"),
        ("rewrite", "unix", "-", "-", "-", "trivial-rewrite"),
        ("bounce", "unix", "-", "-", "0", "bounce"),
        ("defer", "unix", "-", "-", "0", "bounce"),
        ("trace", "unix", "-", "-", "0", "bounce"),
        ("verify", "unix", "-", "-", "1", "verify"),
        ("flush", "unix", "n", "1000?", "0", "flush"),
        ("proxymap", "unix", "-", "-", "-", "proxymap"),
        ("smtp", "unix", "-", "-", "-", "smtp"),
        ("relay", "unix", "-", "-", "-", "smtp"),
        ("showq", "unix", "n", "-", "-", "showq"),
        ("error", "unix", "-", "-", "-", "error"),
        ("retry", "unix", "-", "-", "-", "error"),
        ("discard", "unix", "-", "-", "-", "discard"),
        ("virtual", "unix", "-", "-", "-", "virtual"),
        ("anvil", "unix", "-", "-", "1", "anvil"),
        ("scache", "unix", "-", "-", "1", "scache"),
        ("postlog", "unix-dgram", "n", "-", "1", "postlogd"),
    ]
    lines = [
        f"{HOST}:{pf.port} inet n - n - - smtpd",
        f"{HOST}:{pf.proxy_port} inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy",
    ]
    # Unprivileged ("-") where Postfix expects it; never chrooted: the folders are private.
    privileged = {"virtual": "n"}
    for name, kind, private, wakeup, limit, command in services:
        unpriv = privileged.get(name, "-")
        lines.append(f"{name} {kind} {private} {unpriv} n {wakeup} {limit} {command}")
    (conf / "master.cf").write_text("\n".join(lines) + "\n")
    _backdate(conf / "main.cf", conf / "master.cf")
    return pf


# -- Dovecot ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Dovecot:
    dir: pathlib.Path
    imap_port: int
    imap_proxy_port: int  # haproxy = yes
    pop3_port: int
    pop3_proxy_port: int
    log: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Dovecot:
        require(DOVECOT)
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
            stdin=subprocess.DEVNULL,
            stdout=(self.dir / "stdout.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            for port in (self.imap_port, self.imap_proxy_port, self.pop3_port):
                wait_port(HOST, port, self.proc, self.log)
            wait_port(HOST, self.pop3_proxy_port, self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        return wait_log(self.log, pattern, timeout)


def make_dovecot(store: MailStore) -> Dovecot:
    d = private_dir("dovecot")
    (d / "base").mkdir()
    (d / "state").mkdir()
    dv = Dovecot(d, free_port(), free_port(), free_port(), free_port(), d / "dovecot.log")
    (d / "passwd").write_text(
        f"{MAIL_USER}:{{PLAIN}}{MAIL_PASSWORD}:{MAIL_UID}:{MAIL_GID}::{store.maildir()}::\n"
    )
    (d / "dovecot.conf").write_text(
        textwrap.dedent(
            f"""\
            protocols = imap pop3
            listen = {HOST}
            base_dir = {d}/base
            state_dir = {d}/state
            log_path = {dv.log}
            info_log_path = {dv.log}
            ssl = no
            disable_plaintext_auth = no
            auth_mechanisms = plain login
            # Tests fail logins on purpose; no delay, no penalty per address.
            auth_failure_delay = 0
            first_valid_uid = 1
            mail_location = maildir:{store.root}/%n
            default_login_user = dovenull
            default_internal_user = dovecot
            haproxy_trusted_networks = 127.0.0.0/8 ::1
            passdb {{
              driver = passwd-file
              args = scheme=PLAIN username_format=%n {d}/passwd
            }}
            userdb {{
              driver = passwd-file
              args = username_format=%n {d}/passwd
            }}
            service imap-login {{
              inet_listener imap {{
                port = {dv.imap_port}
              }}
              inet_listener imap_proxy {{
                port = {dv.imap_proxy_port}
                haproxy = yes
              }}
            }}
            service pop3-login {{
              inet_listener pop3 {{
                port = {dv.pop3_port}
              }}
              inet_listener pop3_proxy {{
                port = {dv.pop3_proxy_port}
                haproxy = yes
              }}
            }}
            service anvil {{
              unix_listener anvil-auth-penalty {{
                mode = 0
              }}
            }}
            """
        )
    )
    return dv


# -- INN -------------------------------------------------------------------------------------


@dataclasses.dataclass
class INN:
    """innd serves anonymous readers (it hands them to nnrpd) on `port`; a standalone nnrpd
    with a readers.conf that demands AUTHINFO (ckpasswd against a password file) serves
    `auth_port`. Both read the same spool, which holds one article in `test.news`."""

    dir: pathlib.Path
    port: int
    auth_port: int
    log: pathlib.Path
    innd: subprocess.Popen[bytes] | None = None
    nnrpd: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "INNCONF": str(self.dir / "etc" / "inn.conf")}

    def start(self) -> INN:
        require(INN_BIN / "innd", INN_BIN / "nnrpd", INN_BIN / "ctlinnd", INN_BIN / "makedbz")
        subprocess.run(
            [str(INN_BIN / "makedbz"), "-i", "-o", "-f", str(self.dir / "db" / "history")],
            env=self.env,
            check=True,
            capture_output=True,
            user="news",
            group="news",
            extra_groups=[],
        )
        out = self.log.open("ab")
        try:
            self.innd = subprocess.Popen(
                [str(INN_BIN / "innd"), "-f"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            wait_port(HOST, self.port, self.innd, self.log)
            self.nnrpd = subprocess.Popen(
                [
                    str(INN_BIN / "nnrpd"),
                    *("-D", "-f", "-n", "-b", HOST, "-p", str(self.auth_port)),
                    *("-c", str(self.dir / "etc" / "readers-auth.conf")),
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user="news",
                group="news",
                extra_groups=[],
            )
            wait_port(HOST, self.auth_port, self.nnrpd, self.log)
            self._feed_article()
        except BaseException:
            self.stop()
            raise
        return self

    def _feed_article(self) -> None:
        article = (
            "Path: feeder.test.example!not-for-mail\r\n"
            "From: Tester <tester@test.example>\r\n"
            f"Newsgroups: {NEWS_GROUP}\r\n"
            "Subject: Hello readers\r\n"
            f"Message-ID: {NEWS_MESSAGE_ID}\r\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
            "\r\n"
            f"{NEWS_BODY}\r\n"
            ".\r\n"
        ).encode()
        with socket.socket() as s:
            s.settimeout(10)
            s.bind((NEWS_FEEDER, 0))
            s.connect((HOST, self.port))
            f = s.makefile("rb")
            replies = [f.readline()]
            s.sendall(f"IHAVE {NEWS_MESSAGE_ID}\r\n".encode())
            replies.append(f.readline())
            s.sendall(article)
            replies.append(f.readline())
            s.sendall(b"QUIT\r\n")
            replies.append(f.readline())
        if not replies[2].startswith(b"235"):
            raise ServerFailed(f"INN did not take the test article: {replies!r}")

    def stop(self) -> None:
        if self.nnrpd is not None:
            stop_process(self.nnrpd)
        if self.innd is not None and self.innd.poll() is None:
            # innd ignores SIGTERM for a long time; ctlinnd is its way out.
            subprocess.run(
                [str(INN_BIN / "ctlinnd"), "-t", "5", "shutdown", "tests done"],
                env=self.env,
                check=False,
                capture_output=True,
                timeout=30,
            )
            try:
                self.innd.wait(10)
            except subprocess.TimeoutExpired:
                stop_process(self.innd)


def make_inn() -> INN:
    d = private_dir("inn")
    for sub in ("etc", "db", "run", "log", "tmp", "http"):
        (d / sub).mkdir()
    for sub in ("articles", "overview", "outgoing", "incoming", "archive"):
        (d / "spool" / sub).mkdir(parents=True)
    inn = INN(d, free_port(), free_port(), d / "log" / "inn.log")
    etc = d / "etc"
    (etc / "inn.conf").write_text(
        textwrap.dedent(
            f"""\
            domain: {MAIL_DOMAIN}
            pathhost: news.{MAIL_DOMAIN}
            organization: "mailwarden tests"
            mta: "/bin/true %s"
            ovmethod: tradindexed
            hismethod: hisv6
            enableoverview: true
            storeonxref: true
            wireformat: true
            useoverchan: false
            xrefslave: false
            nnrpdcheckart: true
            noreader: false
            readerswhenstopped: false
            pgpverify: false
            doinnwatch: false
            status: 0
            timer: 0
            logipaddr: true
            port: {inn.port}
            bindaddress: {HOST}
            pathnews: /usr/lib/news
            pathbin: {INN_BIN}
            pathcontrol: {INN_BIN}/control
            pathfilter: {etc}/filter
            pathdb: {d}/db
            pathetc: {etc}
            pathrun: {d}/run
            pathlog: {d}/log
            pathhttp: {d}/http
            pathspool: {d}/spool
            patharticles: {d}/spool/articles
            pathoverview: {d}/spool/overview
            pathoutgoing: {d}/spool/outgoing
            pathincoming: {d}/spool/incoming
            patharchive: {d}/spool/archive
            pathtmp: {d}/tmp
            """
        )
    )
    (etc / "storage.conf").write_text("method tradspool {\n    newsgroups: *\n    class: 0\n}\n")
    (etc / "expire.ctl").write_text("/remember/:11\n*:A:never:never:never\n")
    (etc / "incoming.conf").write_text(f'peer ME {{\n  hostname: "{NEWS_FEEDER}"\n}}\n')
    (etc / "newsfeeds").write_text("ME:*::\n")
    # Anonymous reading, and AUTHINFO checked against the same password file.
    (etc / "readers.conf").write_text(
        textwrap.dedent(
            f"""\
            auth "anyone" {{
                hosts: "*"
                auth: "ckpasswd -f {etc}/nntp.passwd"
                default: "<anonymous>"
            }}
            access "anyone" {{
                users: "*"
                newsgroups: "*"
                access: R
            }}
            """
        )
    )
    (etc / "readers-auth.conf").write_text(
        textwrap.dedent(
            f"""\
            auth "readers" {{
                hosts: "*"
                auth: "ckpasswd -f {etc}/nntp.passwd"
            }}
            access "readers" {{
                users: "*"
                newsgroups: "*"
                access: R
            }}
            """
        )
    )
    hashed = subprocess.run(
        ["openssl", "passwd", "-6", NEWS_PASSWORD], check=True, capture_output=True, text=True
    ).stdout.strip()
    (etc / "nntp.passwd").write_text(f"{NEWS_USER}:{hashed}\n")
    (d / "db" / "active").write_text(
        f"{NEWS_GROUP} 0000000000 0000000001 y\n"
        "control 0000000000 0000000001 n\n"
        "control.cancel 0000000000 0000000001 n\n"
        "junk 0000000000 0000000001 n\n"
    )
    (d / "db" / "newsgroups").write_text(f"{NEWS_GROUP}\tThe group of the tests.\n")
    (d / "db" / "active.times").write_text("")
    (d / "db" / "history").write_text("")
    for path in [d, *d.rglob("*")]:
        shutil.chown(path, "news", "news")
    return inn


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mail_store() -> Iterator[MailStore]:
    store = make_mail_store()
    yield store
    shutil.rmtree(store.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postfix(mail_store: MailStore) -> Iterator[Postfix]:
    require(POSTFIX)
    pf = make_postfix(mail_store).start()
    yield pf
    pf.stop()
    shutil.rmtree(pf.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(mail_store: MailStore) -> Iterator[Dovecot]:
    require(DOVECOT)
    dv = make_dovecot(mail_store).start()
    yield dv
    dv.stop()
    shutil.rmtree(dv.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def inn() -> Iterator[INN]:
    require(INN_BIN / "innd")
    server = make_inn().start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)
