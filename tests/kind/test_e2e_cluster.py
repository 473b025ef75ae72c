"""End to end on a real kind cluster (scripts/kind-demo, then scripts/kind-e2e): what the API
emulator cannot show. Pods become ready, real clients reach the mail servers through the
listeners and the Services, refusals arrive in the protocol's words, Calico enforces the
NetworkPolicy, a group change reaches running pods without a restart, and uninstalling leaves
nothing behind. Skipped, saying why, when no kind cluster is reachable."""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.kind.kindtools import (
    MAIL,
    OPERATOR_NAMESPACE,
    ROOT,
    condition,
    context,
    get,
    helm,
    kubectl,
    until,
)

pytestmark = pytest.mark.kind

HOST = "127.0.0.1"
PORTS = {
    "smtp": 10025,
    "submission": 10587,
    "imaps": 10993,
    "nntp": 10119,
    "webmail-http": 10080,
    "autoconfig-http": 10081,
}
RUNNING = ["smtp", "submission", "imaps", "nntp", "ldaps", "webmail-http", "autoconfig-http"]
LISTENER = "app.kubernetes.io/name=mailwarden-listener"
CLIENT_NS = "mailwarden-e2e"


@pytest.fixture(scope="module", autouse=True)
def cluster() -> str:
    return context()


def listeners_of(msvc: str) -> list[str]:
    """The listener Deployments serving a MailService, as its status records them (one per
    fixed address, shared with the other MailServices on it; its own for ports without one)."""
    status = get("msvc", "-n", MAIL, msvc).get("status") or {}
    return list(status.get("listeners") or [])


def listener_pods(msvc: str) -> list[dict[str, Any]]:
    """The pods serving `msvc`: those of its listeners (none when it is stopped, even if the
    shared pods of its address run for the other MailServices on it)."""
    if (get("msvc", "-n", MAIL, msvc).get("status") or {}).get("state") == "Stopped":
        return []
    names = listeners_of(msvc)
    if not names:
        return []
    selector = f"{LISTENER},mailwarden.io/listener in ({','.join(names)})"
    pods = get("pods", "-n", MAIL, "-l", selector)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def shared_ports(msvc: str) -> list[int]:
    """The ports on the Services of a MailService's listeners (a stopped member's port is
    not there)."""
    out: list[int] = []
    for name in listeners_of(msvc):
        svc = get("service", "-n", MAIL, name)
        out += [int(p["port"]) for p in svc["spec"]["ports"]]
    return sorted(out)


def ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def test_the_operator_and_every_running_listener_become_ready() -> None:
    kubectl(
        "-n", OPERATOR_NAMESPACE, "rollout", "status", "deployment/mailwarden", "--timeout=180s"
    )
    for msvc in RUNNING:
        pods = until(lambda m=msvc: [p for p in listener_pods(m) if ready(p)], f"{msvc} pods")
        assert pods
        spec = pods[0]["spec"]["containers"][0]
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    # The Manual service runs nothing until started: on its shared address, the other
    # services' pods run, without its port.
    assert listener_pods("pop3s") == []
    assert 995 not in shared_ports("smtp")


def test_mail_services_report_ready_for_their_current_generation() -> None:
    for msvc in ("smtp", "submission", "imaps", "webmail-http", "autoconfig-http"):

        def is_ready(name: str = msvc) -> bool:
            obj = get("msvc", "-n", MAIL, name)
            c = condition(obj, "Ready")
            return bool(
                c
                and c["status"] == "True"
                and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
            )

        until(is_ready, f"{msvc} Ready")


def test_a_real_smtp_client_delivers_through_the_mx_listener() -> None:
    with smtplib.SMTP(HOST, PORTS["smtp"], timeout=30) as smtp:
        code, _ = smtp.ehlo("e2e.example.org")
        assert code == 250
        refused = smtp.sendmail(
            "e2e@example.org",
            ["postmaster@example.com"],
            b"Subject: mailwarden e2e\r\n\r\nthrough the listener\r\n",
        )
        assert refused == {}


def test_a_real_imap_client_logs_in_over_implicit_tls_through_the_listener() -> None:
    context_ = ssl.create_default_context()
    context_.check_hostname = False
    context_.verify_mode = ssl.CERT_NONE
    with imaplib.IMAP4_SSL(HOST, PORTS["imaps"], ssl_context=context_, timeout=30) as imap:
        assert imap.welcome.startswith(b"* OK")
        status, _ = imap.login("demo", "pass")
        assert status == "OK"


@pytest.mark.parametrize("msvc", ["webmail-http", "autoconfig-http"])
def test_both_http_services_answer_on_port_80_of_their_own_listeners(msvc: str) -> None:
    response = httpx.get(f"http://{HOST}:{PORTS[msvc]}/", timeout=30)
    assert response.status_code == 200
    assert "nginx" in response.text.lower()


def test_nntp_without_a_news_server_answers_400_backend_unavailable() -> None:
    with socket.create_connection((HOST, PORTS["nntp"]), timeout=30) as sock:
        line = sock.makefile("rb").readline()
    assert line.startswith(b"400 ")


@contextlib.contextmanager
def patched_access(msvc: str, access: dict[str, Any]) -> Iterator[None]:
    before = get("msvc", "-n", MAIL, msvc)["spec"].get("access", {})
    kubectl(
        "-n",
        MAIL,
        "patch",
        "msvc",
        msvc,
        "--type",
        "merge",
        "-p",
        json.dumps({"spec": {"access": access}}),
    )
    try:
        yield
    finally:
        kubectl(
            "-n",
            MAIL,
            "patch",
            "msvc",
            msvc,
            "--type",
            "merge",
            "-p",
            json.dumps({"spec": {"access": before}}),
        )


def test_a_client_over_the_cap_gets_smtp_421_too_many_connections() -> None:
    with patched_access("smtp", {"maxConnections": 1, "maxConnectionsPerAddress": 0}):
        first = until(lambda: smtplib.SMTP(HOST, PORTS["smtp"], timeout=30), "first session")
        try:

            def refused() -> bytes | None:
                with socket.create_connection((HOST, PORTS["smtp"]), timeout=30) as sock:
                    line = sock.makefile("rb").readline()
                return line if line.startswith(b"421 4.7.0") else None

            line = until(refused, "the cap to reach the pod", timeout=60)
            assert b"too many connections" in line.lower()
        finally:
            first.close()


@pytest.fixture(scope="module")
def client_pod() -> Iterator[str]:
    """A pod outside the office (a pod address, 10.244.x.x) to connect from inside."""
    until(lambda: not kubectl("get", "namespace", CLIENT_NS, check=False), "a gone namespace")
    kubectl("create", "namespace", CLIENT_NS)
    image = get("deployment", "-n", OPERATOR_NAMESPACE, "mailwarden")["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    kubectl(
        "-n",
        CLIENT_NS,
        "run",
        "client",
        f"--image={image}",
        "--restart=Never",
        "--command",
        "--",
        "sleep",
        "3600",
        check=False,
    )
    kubectl("-n", CLIENT_NS, "wait", "pod/client", "--for=condition=Ready", "--timeout=120s")
    yield get("pod", "-n", CLIENT_NS, "client")["status"]["podIP"]
    # Waited for, so that the next run of the suite can create it again.
    kubectl("delete", "namespace", CLIENT_NS, "--wait=true", "--timeout=180s")


def connect_from_pod(target: str, port: int) -> str:
    """The first line the service sends, or TIMEOUT when nothing arrives (dropped)."""
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    s=socket.create_connection(({target!r},{port}),timeout=5)\n"
        "    print(s.makefile('rb').readline().decode().strip())\n"
        "except OSError as e:\n"
        "    print('TIMEOUT' if isinstance(e, TimeoutError) else 'ERROR '+str(e))\n"
    )
    return kubectl("-n", CLIENT_NS, "exec", "client", "--", "python", "-c", code).strip()


def cluster_ip(msvc: str) -> str:
    services = get("services", "-n", MAIL, "-l", f"mailwarden.io/mailservice={msvc}")["items"]
    (svc,) = [
        s for s in services if s["metadata"]["labels"].get("mailwarden.io/mailservice") == msvc
    ]
    return str(svc["spec"]["clusterIP"])


def test_network_policy_drops_a_denied_address_before_it_reaches_the_listener(
    client_pod: str,
) -> None:
    # Open to all: the pod is greeted.
    assert connect_from_pod(cluster_ip("smtp"), 25).startswith("220")
    # Office only, and the pod is not in the office: Calico drops the SYN, no reply at all.
    assert connect_from_pod(cluster_ip("submission"), 587) == "TIMEOUT"


def test_a_group_change_reaches_running_pods_without_restarting_them(client_pod: str) -> None:
    before = {
        p["metadata"]["uid"]: p["status"]["containerStatuses"][0]["restartCount"]
        for p in listener_pods("submission")
    }
    vpn = get("ipg", "-n", MAIL, "vpn")
    items = vpn["spec"]["items"]
    extra = {"host": client_pod, "description": "e2e client"}
    patch = json.dumps({"spec": {"items": [*items, extra]}})
    kubectl("-n", MAIL, "patch", "ipg", "vpn", "--type", "merge", "-p", patch)
    try:
        greeting = until(
            lambda: (g := connect_from_pod(cluster_ip("submission"), 587)).startswith("220") and g,
            "the group change to reach the listener",
            timeout=60,
        )
        assert greeting.startswith("220")
        after = {
            p["metadata"]["uid"]: p["status"]["containerStatuses"][0]["restartCount"]
            for p in listener_pods("submission")
        }
        assert after == before, "listener pods were replaced or restarted"
    finally:
        kubectl(
            "-n",
            MAIL,
            "patch",
            "ipg",
            "vpn",
            "--type",
            "merge",
            "-p",
            json.dumps({"spec": {"items": items}}),
        )


def test_starting_the_manual_service_runs_it_and_stopping_it_removes_its_pods() -> None:
    kubectl("-n", MAIL, "annotate", "msvc", "pop3s", "mailwarden.io/state=Running", "--overwrite")
    try:
        until(lambda: [p for p in listener_pods("pop3s") if ready(p)], "pop3s pods")
        until(lambda: 995 in shared_ports("pop3s"), "995 on the shared Service")
    finally:
        kubectl(
            "-n", MAIL, "annotate", "msvc", "pop3s", "mailwarden.io/state=Stopped", "--overwrite"
        )
    until(lambda: listener_pods("pop3s") == [], "pop3s to stop")
    until(lambda: 995 not in shared_ports("smtp"), "995 off the shared Service")


CHILD_KINDS = "deployments,services,configmaps,networkpolicies"
MANAGED = "app.kubernetes.io/managed-by=mailwarden-operator"


# -- through MetalLB: the LoadBalancer addresses (scripts/kind-demo maps the examples' 192.0.2.x
# addresses onto a pool on the kind Docker network, which this machine reaches on Linux) --


def load_balancer_ports() -> dict[str, set[int]]:
    """Address -> the ports its LoadBalancer Services in `mail` carry, as assigned."""
    out: dict[str, set[int]] = {}
    for svc in get("services", "-n", MAIL)["items"]:
        if svc["spec"].get("type") != "LoadBalancer":
            continue
        for ingress in svc.get("status", {}).get("loadBalancer", {}).get("ingress", []):
            if "ip" in ingress:
                out.setdefault(ingress["ip"], set()).update(p["port"] for p in svc["spec"]["ports"])
    return out


def first_line(address: str, port: int, *, tls: bool = False) -> bytes:
    sock = socket.create_connection((address, port), timeout=10)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock)
    with sock:
        return sock.makefile("rb").readline()


def mail_address() -> str:
    """The one address that carries SMTP, Submission and IMAPS."""
    found = until(
        lambda: [a for a, ports in load_balancer_ports().items() if {25, 587, 993} <= ports],
        "MetalLB to assign the shared mail address",
    )
    (address,) = found
    return address


def test_several_services_answer_on_one_load_balancer_address() -> None:
    address = mail_address()
    assert first_line(address, 25).startswith(b"220 ")
    assert first_line(address, 587).startswith(b"220 ")  # this machine is in `vpn`
    assert first_line(address, 993, tls=True).startswith(b"* OK")


def test_the_same_port_answers_on_two_load_balancer_addresses() -> None:
    def two() -> list[str] | None:
        found = [a for a, ports in load_balancer_ports().items() if 80 in ports]
        return found if len(found) >= 2 else None

    addresses = until(two, "two addresses with port 80")
    for address in addresses:
        response = httpx.get(f"http://{address}/", timeout=30)
        assert response.status_code == 200
        assert "nginx" in response.text.lower()


def source_address_towards(address: str) -> str:
    """The address this machine's packets to `address` carry (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, 9))
        return str(s.getsockname()[0])


def test_the_listener_sees_the_client_s_real_address() -> None:
    """Submission admits only the office, here only this machine's own address. Were the
    client's address replaced on the way (a node's address through SNAT, with
    externalTrafficPolicy Cluster), the listener and the NetworkPolicy would refuse it."""
    address = mail_address()
    me = source_address_towards(address)
    items = get("ipg", "-n", MAIL, "vpn")["spec"]["items"]

    def vpn(*hosts: str) -> None:
        entries = [{"host": h, "description": "e2e"} for h in hosts]
        patch = json.dumps({"spec": {"items": entries}})
        kubectl("-n", MAIL, "patch", "ipg", "vpn", "--type", "merge", "-p", patch)

    def greeting() -> bytes:
        try:
            return first_line(address, 587)
        except OSError:
            return b""  # dropped by the NetworkPolicy, or closed

    try:
        vpn("192.0.2.1")  # someone else: this machine is out
        until(lambda: not greeting().startswith(b"220"), "this machine to be refused", 90)
        vpn(me)  # exactly this machine's address: in
        until(lambda: greeting().startswith(b"220"), f"{me} to be admitted", 90)
    finally:
        kubectl(
            "-n", MAIL, "patch", "ipg", "vpn", "--type", "merge", "-p",
            json.dumps({"spec": {"items": items}}),
        )  # fmt: skip


def test_a_rolling_restart_refuses_no_connection() -> None:
    """Issue 9, rollouts: the new pod is ready before the old one stops (maxUnavailable 0),
    and the old one is a lame duck first (/readyz 503 while it still accepts), so that the
    EndpointSlice and MetalLB move new clients on before its port closes. A client
    connecting every 0.1 s throughout the restart is greeted every time."""
    address = mail_address()
    before = {p["metadata"]["uid"] for p in listener_pods("smtp")}
    assert before
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    kubectl(
        "-n", MAIL, "annotate", "msvc", "smtp", f"mailwarden.io/restartedAt={stamp}",
        "--overwrite",
    )  # fmt: skip
    tries, failures = 0, []
    deadline = time.monotonic() + 300

    def replaced() -> bool:
        now = {p["metadata"]["uid"] for p in listener_pods("smtp") if ready(p)}
        return bool(now) and not (now & before) and len(listener_pods("smtp")) == len(now)

    settled_at = None
    while time.monotonic() < deadline:
        tries += 1
        try:
            line = first_line(address, 25)
            if not line.startswith(b"220 "):
                failures.append(line)
        except OSError as exc:
            failures.append(repr(exc).encode())
        if settled_at is None and tries % 20 == 0 and replaced():
            settled_at = time.monotonic()
        if settled_at is not None and time.monotonic() - settled_at > 10:
            break  # ten more seconds after the old pods are gone
        time.sleep(0.1)
    assert settled_at is not None, "the restart did not finish in 300 s"
    assert failures == [], f"{len(failures)} of {tries} connections failed: {failures[:5]}"


# What the demo put in namespace `mail` around the examples stays there: the `mail-tls` Secret
# (made by scripts/kind-demo), the demo backends, and the `vpn` group's patch (saved and put
# back). Deleting the namespace, as `kubectl delete -k deploy/kind` did, took them with it, so
# the suite could not run a second time.
USER_KINDS = "mailservices.mailwarden.io,ipaddressgroups.mailwarden.io"
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


def users_resources() -> list[dict[str, Any]]:
    """The MailServices and IPAddressGroups of `mail` as a user would apply them again."""
    out = []
    for obj in get(USER_KINDS, "-n", MAIL)["items"]:
        meta = {k: v for k, v in obj["metadata"].items() if k not in SERVER_FIELDS}
        meta.pop("finalizers", None)
        annotations = dict(meta.get("annotations") or {})
        annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
        meta["annotations"] = annotations
        out.append(
            {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "metadata": meta,
                "spec": obj["spec"],
            }
        )
    return out


def install_chart() -> None:
    """The chart as scripts/kind-demo installs it (same images, tags and pull policy)."""
    tag = os.environ.get("MAILWARDEN_LISTENER_IMAGE", "mailwarden-listener:0.1.0").rsplit(":")[-1]
    helm(
        "upgrade",
        "--install",
        "mailwarden",
        str(ROOT / "deploy" / "helm" / "mailwarden"),
        "--namespace",
        OPERATOR_NAMESPACE,
        *("--set", "image.repository=mailwarden", "--set", f"image.tag={tag}"),
        *("--set", "listener.image.repository=mailwarden-listener"),
        *("--set", f"listener.image.tag={tag}", "--set", "image.pullPolicy=IfNotPresent"),
        "--wait",
        "--timeout",
        "5m",
    )


def test_uninstall_leaves_no_orphans_and_keeps_the_crds() -> None:
    # Last in this file: it takes the demo's mail services down, then puts them back as they
    # were (the namespace, its Secret and the backends stay).
    saved = users_resources()
    assert {o["metadata"]["name"] for o in saved} >= {"smtp", "vpn"}
    kubectl("-n", MAIL, "delete", USER_KINDS, "--all", "--wait=true", "--timeout=300s")
    until(lambda: get(CHILD_KINDS, "-A", "-l", MANAGED)["items"] == [], "children to go")
    helm("uninstall", "mailwarden", "--namespace", OPERATOR_NAMESPACE, "--wait")
    until(lambda: get("all", "-n", OPERATOR_NAMESPACE)["items"] == [], "the operator to go")
    leftovers = [
        o["metadata"]["name"]
        for o in get(
            "clusterroles,clusterrolebindings", "-l", "app.kubernetes.io/instance=mailwarden"
        )["items"]
    ]
    assert leftovers == []
    # The CRDs stay (crds.keep), and with them the users' resources would have stayed.
    crds = {c["metadata"]["name"] for c in get("crds")["items"]}
    assert {"mailservices.mailwarden.io", "ipaddressgroups.mailwarden.io"} <= crds
    # What the demo made around the examples is untouched.
    assert get("secret", "-n", MAIL, "mail-tls")["type"] == "kubernetes.io/tls"
    # Back as it was: the same chart, the same resources (the `vpn` patch included).
    install_chart()
    kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": saved})
    )
    until(lambda: [p for p in listener_pods("smtp") if ready(p)], "smtp pods again")
    vpn = get("ipg", "-n", MAIL, "vpn")
    assert vpn["spec"] == next(o["spec"] for o in saved if o["metadata"]["name"] == "vpn")
