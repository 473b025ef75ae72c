"""What the operator itself is configured with (image, namespaces): environment variables set
by the Helm chart, with defaults that work for `mailwarden render`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("mailwarden")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "latest"


LISTENER_IMAGE_REPOSITORY = "mailwarden-listener"


@dataclasses.dataclass(frozen=True)
class Settings:
    # The listener image (Dockerfile target `listener`), of this release. The Helm chart passes
    # its `listener.image` (registry and all) in MAILWARDEN_LISTENER_IMAGE; this default names
    # the image as the chart and the Dockerfile do, without a registry.
    image: str = f"{LISTENER_IMAGE_REPOSITORY}:{_version()}"
    image_pull_policy: str = "IfNotPresent"
    # Prometheus scrapes the listeners' metrics port from this namespace.
    monitoring_namespace: str = "monitoring"
    metrics_port: int = 9090
    # Pods get drainSeconds plus this long before the kubelet kills them.
    termination_margin_seconds: int = 10
    # UID/GID the listener runs as (the image's non-root user).
    run_as_user: int = 65532

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        default = cls()
        return cls(
            image=env.get("MAILWARDEN_LISTENER_IMAGE", default.image),
            image_pull_policy=env.get("MAILWARDEN_LISTENER_IMAGE_PULL_POLICY", "IfNotPresent"),
            monitoring_namespace=env.get("MAILWARDEN_MONITORING_NAMESPACE", "monitoring"),
            run_as_user=int(env.get("MAILWARDEN_LISTENER_UID", str(default.run_as_user))),
        )
