"""The kind setup, checked without a cluster: the cluster config, the demo overlay of the
examples and the scripts agree with each other and with the operator's labels."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import socket
import subprocess
import textwrap
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubeemu import crdcheck
from mailwarden.operator import listeners, manifests, models
from tests.deploy.tools import KUBERNETES_VERSION, ROOT, binary, render
from tests.kind import test_e2e_cluster
from tests.support.listener import free_port
from tests.support.mail_servers import DOVECOT
from tests.support.process import private_dir, require, stop_process, wait_port

KIND_CONFIG = ROOT / "kind-config.yaml"
OVERLAY = ROOT / "deploy" / "kind"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return dict(yaml.safe_load(KIND_CONFIG.read_text()))


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(binary("kubectl")), "kustomize", str(OVERLAY)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def parsed(overlay: list[dict[str, Any]], tmp_path: pathlib.Path) -> manifests.Manifests:
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump_all(overlay))
    return manifests.load([path], "mail")


def test_kind_node_image_is_pinned_by_digest_and_kindnet_is_replaced(
    config: dict[str, Any],
) -> None:
    (node,) = config["nodes"]
    assert re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", node["image"])
    assert config["networking"]["disableDefaultCNI"] is True
    demo = (ROOT / "scripts" / "kind-demo").read_text()
    assert "calico" in demo.lower() and "kind-config.yaml" in demo


def test_every_demo_nodeport_is_mapped_to_the_host_port_the_e2e_tests_use(
    config: dict[str, Any], overlay: list[dict[str, Any]]
) -> None:
    mappings = {m["containerPort"]: m["hostPort"] for m in config["nodes"][0]["extraPortMappings"]}
    nodeports = [
        o for o in overlay if o["kind"] == "Service" and o["spec"].get("type") == "NodePort"
    ]
    assert len(nodeports) == 7
    for svc in nodeports:
        (port,) = svc["spec"]["ports"]
        assert port["nodePort"] in mappings, f"{svc['metadata']['name']}: nodePort not mapped"
        assert svc["spec"]["externalTrafficPolicy"] == "Local"
        served = [m for m in test_e2e_cluster.PORTS if svc["metadata"]["name"] == f"demo-{m}"]
        for msvc in served:
            assert mappings[port["nodePort"]] == test_e2e_cluster.PORTS[msvc]


def test_demo_nodeports_select_listener_pods_of_existing_mail_services_on_their_ports(
    overlay: list[dict[str, Any]], tmp_path: pathlib.Path
) -> None:
    found = parsed(overlay, tmp_path)
    services = {s.metadata.name: s for s in found.services}
    for svc in (
        o for o in overlay if o["kind"] == "Service" and o["spec"].get("type") == "NodePort"
    ):
        selector = svc["spec"]["selector"]
        assert selector["app.kubernetes.io/name"] == "mailwarden-listener"
        # The listener named is the one serving demo-<msvc>'s MailService (contract C5),
        # and that MailService listens on the port.
        msvc = services[svc["metadata"]["name"].removeprefix("demo-")]
        assert selector["mailwarden.io/listener"] in listeners.deployments(msvc)
        (port,) = svc["spec"]["ports"]
        assert port["targetPort"] in [p for _, p in msvc.spec.endpoints()]


def test_demo_overlay_points_every_service_at_a_backend_that_exists_without_proxy_headers(
    overlay: list[dict[str, Any]], tmp_path: pathlib.Path
) -> None:
    found = parsed(overlay, tmp_path)
    backends = {
        (o["metadata"]["name"], p["port"])
        for o in overlay
        if o["kind"] == "Service" and o["spec"].get("type", "ClusterIP") == "ClusterIP"
        for p in o["spec"]["ports"]
    }
    for msvc in found.services:
        backend = msvc.spec.backend
        assert backend.proxy_protocol == "None", msvc.metadata.name
        # MetalLB serves the LoadBalancer Services of the services with a fixed address.
        fixed = any(a is not None for a, _ in msvc.spec.endpoints())
        assert msvc.spec.expose.type == ("LoadBalancer" if fixed else "ClusterIP")
        host = backend.host.removesuffix(".mail.svc.cluster.local")
        if msvc.spec.service != "NNTP":  # no news server image: the demo shows "400"
            assert (host, backend.port) in backends, (
                f"{msvc.metadata.name}: no {host}:{backend.port}"
            )


def test_demo_overlay_objects_are_valid_kubernetes_objects(overlay: list[dict[str, Any]]) -> None:
    crds = {}
    for path in sorted((ROOT / "deploy" / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        crds[crd["spec"]["names"]["kind"]] = crd
    for obj in overlay:
        if obj["apiVersion"] == models.API_VERSION:
            _, errors = crdcheck.validate(crds[obj["kind"]], obj)
            assert errors == [], f"{obj['kind']} {obj['metadata']['name']}: {errors}"
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("script", ["kind-demo", "kind-e2e", "fetch-k8s-tools", "sync-chart-crds"])
def test_scripts_are_valid_bash(script: str) -> None:
    path = ROOT / "scripts" / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_kind_e2e_runs_the_kind_marked_tests_against_the_demo_context() -> None:
    text = (ROOT / "scripts" / "kind-e2e").read_text()
    assert "-m kind" in text and "MAILWARDEN_KIND_CONTEXT" in text


def test_the_demo_s_helm_settings_pass_the_chart_s_schema() -> None:
    demo = (ROOT / "scripts" / "kind-demo").read_text()
    sets = re.findall(r"--set ([\w.]+)=", demo)
    assert "listener.image.repository" in sets
    values = {
        "image.repository": "mailwarden",
        "image.tag": "0.1.0",
        "listener.image.repository": "mailwarden-listener",
        "listener.image.tag": "0.1.0",
        "image.pullPolicy": "IfNotPresent",
    }
    assert set(sets) == set(values)
    objs = render(sets=tuple(f"{k}={v}" for k, v in values.items()))
    (deployment,) = [o for o in objs if o["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "mailwarden:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MAILWARDEN_LISTENER_IMAGE"] == "mailwarden-listener:0.1.0"


# -- MetalLB (scripts/kind-demo) --------------------------------------------------------------

DEMO = ROOT / "scripts" / "kind-demo"


def demo_pins() -> dict[str, str]:
    return dict(re.findall(r"^(METALLB_\w+)=(\S+)$", DEMO.read_text(), re.M))


def test_metallb_comes_from_its_release_manifest_pinned_by_version_checksum_and_digests() -> None:
    pins = demo_pins()
    assert re.fullmatch(r"v\d+\.\d+\.\d+", pins["METALLB_VERSION"])
    assert re.fullmatch(r"[0-9a-f]{64}", pins["METALLB_MANIFEST_SHA256"])
    for image in ("CONTROLLER", "SPEAKER"):
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", pins[f"METALLB_{image}_DIGEST"])
    assert pins["METALLB_CONTROLLER_DIGEST"] != pins["METALLB_SPEAKER_DIGEST"]
    assert pins["METALLB_MANIFEST_URL"] == (
        "https://raw.githubusercontent.com/metallb/metallb/$METALLB_VERSION"
        "/config/manifests/metallb-native.yaml"
    )
    text = DEMO.read_text()
    checked = text.index("sha256sum -c --quiet -")
    pinned = [
        text.index(f"quay.io/metallb/{image}:$METALLB_VERSION@$METALLB_{image.upper()}_DIGEST")
        for image in ("controller", "speaker")
    ]
    applied = text.index('apply --server-side --force-conflicts -f "$tmp/metallb-native.yaml"')
    # Checked, then pinned by digest (and that checked), then applied.
    assert checked < min(pinned) and max(pinned) < text.index('grep -c "@sha256:"') < applied


def test_the_pin_rewrite_turns_both_release_images_into_digest_references(tmp_path) -> None:
    """The script's own sed lines, run over the two image lines of a release manifest."""
    pins = demo_pins()
    version = pins["METALLB_VERSION"]
    manifest = tmp_path / "metallb-native.yaml"
    manifest.write_text(
        f"        image: quay.io/metallb/controller:{version}\n"
        f"        image: quay.io/metallb/speaker:{version}\n"
    )
    block = re.search(
        r"^sed -i \\\n(.*?)\n  \"\$tmp/metallb-native.yaml\"$", DEMO.read_text(), re.M | re.S
    )
    assert block is not None
    expressions = block.group(1).replace("\\\n", " ").rstrip(" \\")
    script = f"sed -i {expressions} {manifest}"
    env = {k: v for k, v in pins.items() if k != "METALLB_MANIFEST_URL"}
    subprocess.run(["bash", "-c", script], check=True, env=env)
    assert manifest.read_text() == (
        f"        image: quay.io/metallb/controller:{version}@{pins['METALLB_CONTROLLER_DIGEST']}\n"
        f"        image: quay.io/metallb/speaker:{version}@{pins['METALLB_SPEAKER_DIGEST']}\n"
    )


def pool_for(subnet: str) -> list[str]:
    """What the script's pool computation prints for a kind network subnet."""
    program = re.search(r"<<'PY'\n(.*?)\nPY\n", DEMO.read_text(), re.S)
    assert program is not None
    out = subprocess.run(
        ["python3", "-", subnet], input=program.group(1), capture_output=True, text=True, check=True
    )
    return out.stdout.split()


@pytest.mark.parametrize("subnet", ["172.18.0.0/16", "172.19.0.0/16", "192.168.97.0/24"])
def test_the_address_pool_is_the_top_of_the_kind_network_and_holds_the_demo_addresses(
    subnet: str,
) -> None:
    import ipaddress

    pool, *addresses = pool_for(subnet)
    first, last = (ipaddress.ip_address(a) for a in pool.split("-"))
    net = ipaddress.ip_network(subnet)
    assert first in net and last in net
    assert last < net.broadcast_address and int(last) - int(first) == 29
    assert len(set(addresses)) == 4
    assert all(first <= ipaddress.ip_address(a) <= last for a in addresses)
    text = DEMO.read_text()
    assert "kind: IPAddressPool" in text and "kind: L2Advertisement" in text
    assert text.count("apiVersion: metallb.io/v1beta1") == 2


def test_every_fixed_address_of_the_overlay_is_mapped_onto_the_pool(
    overlay: list[dict[str, Any]], tmp_path: pathlib.Path
) -> None:
    mapped = dict(
        (a.replace("\\\\.", "."), var)
        for a, var in re.findall(r'-e "s/\\\\b([0-9.\\\\]+)\\\\b/\$(\w+)/g"', DEMO.read_text())
    )
    found = parsed(overlay, tmp_path)
    by_address: dict[str, set[tuple[str, int]]] = {}
    for msvc in found.services:
        for address, port in msvc.spec.endpoints():
            if address is not None:
                assert address in mapped, f"{msvc.metadata.name}: {address} is not mapped"
                by_address.setdefault(mapped[address], set()).add((msvc.metadata.name, port))
    # Several services on one address, and port 80 on two addresses: what the e2e checks.
    assert {p for _, p in by_address["MAIL_IP"]} >= {25, 587, 993}
    assert ("webmail-http", 80) in by_address["WEB_IP"]
    assert ("autoconfig-http", 80) in by_address["AUTOCONFIG_IP"]


# -- Dovecot of the demo ----------------------------------------------------------------------


def dovecot_plaintext_conf(overlay: list[dict[str, Any]]) -> str:
    (deployment,) = [
        o for o in overlay if o["kind"] == "Deployment" and o["metadata"]["name"] == "demo-dovecot"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (mount,) = pod["containers"][0]["volumeMounts"]
    assert mount["mountPath"] == "/etc/dovecot/conf.d"  # the image's `!include_try` folder
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (cm,) = [
        o
        for o in overlay
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"]
    ]
    return str(cm["data"]["plaintext.conf"])


def test_the_demo_dovecot_accepts_plaintext_login_from_pod_addresses(
    overlay: list[dict[str, Any]],
) -> None:
    assert re.search(r"^disable_plaintext_auth = no$", dovecot_plaintext_conf(overlay), re.M)


def _dovecot_login_from_a_pod_like_address(conf_d: str | None) -> bytes:
    """Debian's Dovecot 2.3 with a configuration shaped like the demo image's (a static
    password, no TLS on 143, `!include_try conf.d/*.conf` last), and `conf_d` as the one
    file in conf.d: the reply to a plaintext LOGIN from 127.0.0.2, which Dovecot, listening
    on 127.0.0.1, treats as a remote, insecure client (as it treats the listener pod)."""
    require(DOVECOT)
    d = private_dir("kind-dovecot")
    for sub in ("base", "state", "conf.d", "mail"):
        (d / sub).mkdir()
    os.chown(d / "mail", 65534, 65534)
    port = free_port()
    if conf_d is not None:
        (d / "conf.d" / "plaintext.conf").write_text(conf_d)
    (d / "dovecot.conf").write_text(
        textwrap.dedent(
            f"""\
            protocols = imap
            listen = 127.0.0.1
            base_dir = {d}/base
            state_dir = {d}/state
            log_path = {d}/dovecot.log
            ssl = no
            auth_failure_delay = 0
            first_valid_uid = 1
            mail_location = maildir:{d}/mail/%n
            default_login_user = dovenull
            default_internal_user = dovecot
            passdb {{
              driver = static
              args = password=pass
            }}
            userdb {{
              driver = static
              args = uid=65534 gid=65534 home={d}/mail/%n
            }}
            service imap-login {{
              inet_listener imap {{
                port = {port}
              }}
            }}
            !include_try {d}/conf.d/*.conf
            """
        )
    )
    proc = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(d / "dovecot.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_port("127.0.0.1", port, proc, d / "dovecot.log")
        with socket.socket() as s:
            s.settimeout(10)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
            f = s.makefile("rwb")
            assert f.readline().startswith(b"* OK")
            f.write(b"a1 LOGIN demo pass\r\n")
            f.flush()
            while True:
                line = f.readline()
                if not line or line.startswith(b"a1 "):
                    return line
    finally:
        stop_process(proc)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.servers
def test_with_the_demo_conf_d_file_dovecot_takes_plaintext_login_from_a_remote_address(
    overlay: list[dict[str, Any]],
) -> None:
    refused = _dovecot_login_from_a_pod_like_address(None)
    assert refused.startswith(b"a1 NO") and b"PRIVACYREQUIRED" in refused  # the fault
    accepted = _dovecot_login_from_a_pod_like_address(dovecot_plaintext_conf(overlay))
    assert accepted.startswith(b"a1 OK"), accepted
