"""Where the operator's API requests go and how they authenticate: in a pod, its service
account (the projected token, re-read as the kubelet rotates it, and the cluster's CA); on a
workstation, a kubeconfig context (a token, a token file, a client certificate, or basic
auth). Credential plugins (`exec`, `auth-provider`) are not run: the official client that
runs them is not a dependency (importing it cost the operator 16 MiB of RSS; see
docs/decisions/0008). kind, k3d and minikube kubeconfigs use client certificates."""

from __future__ import annotations

import atexit
import base64
import dataclasses
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import yaml

SERVICE_ACCOUNT = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"


class CredentialsError(Exception):
    """No usable credentials: the message says what is missing or unsupported."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    server: str
    token: str | None = None
    token_file: str | None = None  # read again every kube.TOKEN_SECONDS
    ca_file: str | None = None
    ca_data: str | None = None  # PEM
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    username: str | None = None
    password: str | None = None
    tls_server_name: str | None = None


def in_cluster(env: Mapping[str, str] | None = None) -> Credentials | None:
    """The pod's service account, or None outside a pod."""
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    token = SERVICE_ACCOUNT / "token"
    if not host or not port or not token.exists():
        return None
    host = f"[{host}]" if ":" in host else host  # an IPv6 cluster
    ca = SERVICE_ACCOUNT / "ca.crt"
    return Credentials(
        server=f"https://{host}:{port}",
        token_file=str(token),
        ca_file=str(ca) if ca.exists() else None,
    )


def _kubeconfig_paths(env: Mapping[str, str]) -> list[pathlib.Path]:
    raw = env.get("KUBECONFIG") or DEFAULT_KUBECONFIG
    return [pathlib.Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def _merged(paths: list[pathlib.Path]) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The current context and every named entry, merged as kubectl does (the first file
    that names an entry wins), each entry with the directory its relative paths start from."""
    current: str | None = None
    found: dict[str, dict[str, Any]] = {"contexts": {}, "clusters": {}, "users": {}}
    for path in paths:
        if not path.exists():
            continue
        config = yaml.safe_load(path.read_text()) or {}
        current = current or config.get("current-context")
        for section, inner in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in config.get(section) or []:
                entry = dict(item.get(inner) or {})
                entry["_dir"] = path.parent
                found[section].setdefault(item["name"], entry)
    return current, found


def contexts(env: Mapping[str, str] | None = None) -> list[str]:
    """The context names of the kubeconfig."""
    _, found = _merged(_kubeconfig_paths(os.environ if env is None else env))
    return sorted(found["contexts"])


def from_kubeconfig(
    context: str | None = None, env: Mapping[str, str] | None = None
) -> Credentials:
    env = os.environ if env is None else env
    paths = _kubeconfig_paths(env)
    current, found = _merged(paths)
    name = context or current
    where = os.pathsep.join(str(p) for p in paths)
    if not name:
        raise CredentialsError(f"no current context in the kubeconfig ({where})")
    if name not in found["contexts"]:
        raise CredentialsError(f"no context {name!r} in the kubeconfig ({where})")
    ctx = found["contexts"][name]
    cluster = found["clusters"].get(ctx.get("cluster", ""))
    user = found["users"].get(ctx.get("user", ""), {"_dir": pathlib.Path(".")})
    if cluster is None or not cluster.get("server"):
        raise CredentialsError(f"context {name!r}: no cluster with a server")
    if "exec" in user or ("auth-provider" in user and not _provider_token(user)):
        raise CredentialsError(
            f"context {name!r}: its user runs a credential plugin (exec or auth-provider), "
            "which mailwarden does not run; use a context with a token or a client "
            "certificate (a ServiceAccount token, or kind's own kubeconfig)"
        )
    return Credentials(
        server=str(cluster["server"]),
        token=user.get("token") or _provider_token(user),
        token_file=_path(user, "tokenFile"),
        ca_file=_path(cluster, "certificate-authority"),
        ca_data=_decoded(cluster.get("certificate-authority-data")),
        cert_file=_path(user, "client-certificate")
        or _written(user.get("client-certificate-data"), "client.crt"),
        key_file=_path(user, "client-key") or _written(user.get("client-key-data"), "client.key"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        username=user.get("username"),
        password=user.get("password"),
        tls_server_name=cluster.get("tls-server-name"),
    )


def from_environment(context: str | None = None) -> Credentials:
    """In a pod (and no context asked for): the service account. Elsewhere: the kubeconfig's
    current (or named) context."""
    if context is None:
        found = in_cluster()
        if found is not None:
            return found
    return from_kubeconfig(context)


def _provider_token(user: Mapping[str, Any]) -> str | None:
    token = ((user.get("auth-provider") or {}).get("config") or {}).get("access-token")
    return str(token) if token else None


def _path(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    if not value:
        return None
    return str((pathlib.Path(entry["_dir"]) / pathlib.Path(str(value)).expanduser()).resolve())


def _decoded(data: str | None) -> str | None:
    return base64.b64decode(data).decode() if data else None


_PRIVATE_DIR: list[pathlib.Path] = []


def _written(data: str | None, name: str) -> str | None:
    """Inline certificate or key data as a file (Python's TLS loads them from files), in a
    directory only this user can read, removed when the process exits."""
    if not data:
        return None
    if not _PRIVATE_DIR:
        _PRIVATE_DIR.append(pathlib.Path(tempfile.mkdtemp(prefix="mailwarden-kube-")))
        atexit.register(shutil.rmtree, _PRIVATE_DIR[0], True)
    path = _PRIVATE_DIR[0] / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(base64.b64decode(data))
    return str(path)
