"""Where the operator connects and how it authenticates, without the official client: the
pod's service account, or a kubeconfig context as kubectl reads it."""

from __future__ import annotations

import base64
import pathlib
import stat

import pytest
import yaml

from mailwarden.operator import credentials

PEM = base64.b64encode(b"PEM").decode()
PLUGIN = {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}


def _kubeconfig(tmp_path: pathlib.Path, users: list[dict[str, object]]) -> pathlib.Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "dev",
        "clusters": [
            {"name": "kind", "cluster": {"server": "https://127.0.0.1:6443",
                                         "certificate-authority": "ca.crt"}},
            {"name": "other", "cluster": {"server": "https://10.0.0.1",
                                          "certificate-authority-data": PEM,
                                          "insecure-skip-tls-verify": True}},
        ],
        "contexts": [
            {"name": "dev", "context": {"cluster": "kind", "user": "cert"}},
            {"name": "ops", "context": {"cluster": "other", "user": "token"}},
            {"name": "cloud", "context": {"cluster": "other", "user": "plugin"}},
        ],
        "users": users,
    }  # fmt: skip
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    return path


USERS: list[dict[str, object]] = [
    {"name": "cert", "user": {"client-certificate-data": base64.b64encode(b"CERT").decode(),
                              "client-key-data": base64.b64encode(b"KEY").decode()}},
    {"name": "token", "user": {"token": "abc"}},
    {"name": "plugin", "user": {"exec": PLUGIN}},
]  # fmt: skip


def test_the_current_context_with_inline_client_certificate(tmp_path: pathlib.Path) -> None:
    env = {"KUBECONFIG": str(_kubeconfig(tmp_path, USERS))}
    creds = credentials.from_kubeconfig(env=env)
    assert creds.server == "https://127.0.0.1:6443"
    assert creds.ca_file == str(tmp_path / "ca.crt")  # relative to the kubeconfig
    assert creds.cert_file and pathlib.Path(creds.cert_file).read_bytes() == b"CERT"
    assert creds.key_file and pathlib.Path(creds.key_file).read_bytes() == b"KEY"
    assert stat.S_IMODE(pathlib.Path(creds.key_file).stat().st_mode) == 0o600
    assert credentials.contexts(env) == ["cloud", "dev", "ops"]


def test_a_named_context_with_a_token_and_inline_ca(tmp_path: pathlib.Path) -> None:
    env = {"KUBECONFIG": str(_kubeconfig(tmp_path, USERS))}
    creds = credentials.from_kubeconfig("ops", env=env)
    assert (creds.server, creds.token, creds.ca_data, creds.insecure) == (
        "https://10.0.0.1",
        "abc",
        "PEM",
        True,
    )


def test_credential_plugins_and_unknown_contexts_are_refused_by_name(
    tmp_path: pathlib.Path,
) -> None:
    env = {"KUBECONFIG": str(_kubeconfig(tmp_path, USERS))}
    with pytest.raises(credentials.CredentialsError, match=r"'cloud'.*credential plugin"):
        credentials.from_kubeconfig("cloud", env=env)
    with pytest.raises(credentials.CredentialsError, match="no context 'nope'"):
        credentials.from_kubeconfig("nope", env=env)


def test_outside_a_pod_there_is_no_service_account() -> None:
    assert credentials.in_cluster({}) is None
