"""What the operator itself is configured with (image, namespaces, defaults for every
MailService's listener pods): environment variables set by the Helm chart, with defaults that
work for `mailwarden render`. A bad value is refused at start-up with a message naming the
variable and the field, never carried into the children."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any, Literal

import pydantic
from pydantic import Field
from pydantic.alias_generators import to_camel

from mailwarden.operator import manifests, naming


def _version() -> str:
    try:
        return metadata.version("mailwarden")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "latest"


LISTENER_IMAGE_REPOSITORY = "mailwarden-listener"

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
PULL_POLICIES: dict[str, PullPolicy] = {p: p for p in ("Always", "IfNotPresent", "Never")}
# Kubernetes resource quantities (k8s.io/apimachinery resource.Quantity), as the chart's
# values.schema.json spells them.
QUANTITY = re.compile(
    r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[KMGTPE]i?|[mkMGTPE]|[munpf])?$"
)
# A qualified name with an optional DNS-subdomain prefix, as label and annotation keys are.
QUALIFIED_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# A namespace name (RFC 1123 label), as the API server checks it.
DNS_LABEL = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# An image reference as a pod spec takes it: no whitespace or control characters (the
# registry, not this check, says whether it exists).
IMAGE_REFERENCE = re.compile(r"^[^\s\x00-\x1f]{1,4096}$")
# Pod labels the operator sets itself (the Deployment's selector among them): not defaults.
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "mailwarden.io/")


class SettingsError(ValueError):
    """An environment variable of the operator has a value it cannot work with."""


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True
    )


def _keys(values: Mapping[str, str], what: str) -> Mapping[str, str]:
    for key in values:
        if not QUALIFIED_KEY.match(key) or len(key) > 317:
            raise ValueError(f"{key!r} is not a valid {what} key")
    return values


class Resources(_Model):
    requests: dict[str, str | int | float] = Field(default_factory=dict)
    limits: dict[str, str | int | float] = Field(default_factory=dict)
    claims: list[dict[str, str]] = Field(default_factory=list)

    @pydantic.field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, v: dict[str, str | int | float]) -> dict[str, str | int | float]:
        for name, quantity in v.items():
            if isinstance(quantity, bool) or not QUANTITY.match(str(quantity)):
                raise ValueError(f"{name}: {quantity!r} is not a Kubernetes quantity (50m, 64Mi)")
        return v


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] | None = None
    toleration_seconds: int | None = None


class LocalObjectReference(_Model):
    name: str = Field(min_length=1, max_length=253)


class ExposeDefaults(_Model):
    type: Literal["LoadBalancer", "NodePort", "ClusterIP"] = "LoadBalancer"
    external_traffic_policy: Literal["Local", "Cluster"] = "Local"
    annotations: dict[str, str] = Field(default_factory=dict)
    # "" (the chart's default): the cluster's default implementation.
    load_balancer_class: str = Field(default="", max_length=253)
    address_request: Literal["Annotation", "LoadBalancerIP"] = "Annotation"

    @pydantic.field_validator("annotations")
    @classmethod
    def _annotation_keys(cls, v: dict[str, str]) -> dict[str, str]:
        return dict(_keys(v, "annotation"))


DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}


class ListenerDefaults(_Model):
    """MAILWARDEN_LISTENER_DEFAULTS (the chart's `listener.defaults`, JSON): what every
    MailService's listener pods and Services get unless the MailService says otherwise."""

    # Built in, so that listener pods rendered without the chart (`mailwarden render`, the
    # operator run by hand) are not unbounded either; the chart's listener.defaults.resources
    # says the same. `{}` for none.
    resources: Resources | None = Field(default_factory=lambda: Resources(**DEFAULT_RESOURCES))
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    priority_class_name: str = Field(default="", max_length=253)
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    pod_labels: dict[str, str] = Field(default_factory=dict)
    expose: ExposeDefaults = Field(default_factory=ExposeDefaults)
    image_pull_policy: PullPolicy | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)

    @pydantic.field_validator("node_selector", "pod_labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in _keys(v, "label").items():
            if not LABEL_VALUE.match(value):
                raise ValueError(f"{key}: {value!r} is not a valid label value")
        return v

    @pydantic.field_validator("pod_labels")
    @classmethod
    def _not_the_operator_s(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if key.startswith(RESERVED_LABEL_PREFIXES) or key == naming.LABEL_MAILSERVICE:
                raise ValueError(
                    f"{key} is set by the operator on every listener pod (the Deployment's "
                    "selector depends on these labels); choose another key"
                )
        return v

    @pydantic.field_validator("pod_annotations")
    @classmethod
    def _annotation_keys(cls, v: dict[str, str]) -> dict[str, str]:
        return dict(_keys(v, "annotation"))

    @pydantic.field_validator("affinity")
    @classmethod
    def _affinity_kinds(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = set(v) - {"nodeAffinity", "podAffinity", "podAntiAffinity"}
        if unknown:
            raise ValueError(
                f"unknown affinity {', '.join(sorted(unknown))} (nodeAffinity, podAffinity, "
                "podAntiAffinity)"
            )
        return v

    @property
    def resources_dict(self) -> dict[str, Any] | None:
        if self.resources is None:
            return None
        out = self.resources.model_dump(by_alias=True, exclude_defaults=True)
        return out or None

    def tolerations_list(self) -> list[dict[str, Any]]:
        return [t.model_dump(by_alias=True, exclude_none=True) for t in self.tolerations]

    def pull_secrets_list(self) -> list[dict[str, Any]]:
        return [s.model_dump(by_alias=True) for s in self.image_pull_secrets]


@dataclasses.dataclass(frozen=True)
class Settings:
    # The listener image (Dockerfile target `listener`), of this release. The Helm chart passes
    # its `listener.image` (registry and all) in MAILWARDEN_LISTENER_IMAGE; this default names
    # the image as the chart and the Dockerfile do, without a registry.
    image: str = f"{LISTENER_IMAGE_REPOSITORY}:{_version()}"
    image_pull_policy: PullPolicy = "IfNotPresent"
    # Prometheus scrapes the listeners' metrics port from this namespace.
    monitoring_namespace: str = "monitoring"
    metrics_port: int = naming.METRICS_PORT
    # Pods get lame duck plus drainSeconds plus this long before the kubelet kills them.
    termination_margin_seconds: int = 10
    # After SIGTERM a listener pod keeps accepting this long, answering /readyz 503, so that
    # EndpointSlices and load balancers' health checks stop sending before it stops accepting.
    lame_duck_seconds: int = 5
    # UID/GID the listener runs as (the image's non-root user).
    run_as_user: int = 65532
    listener_defaults: ListenerDefaults = dataclasses.field(default_factory=ListenerDefaults)
    # How often every running MailService's backend is probed (a TCP connect), and how long a
    # probe may take. 0 seconds: no probes (BackendUnreachable is never reported).
    backend_probe_seconds: float = 60.0
    backend_probe_timeout: float = 3.0
    # Live figures (status.connections): every listener pod's GET /status is read once per
    # round, rounds at most this often (0: never; ACTIVE and REFUSED stay empty), each within
    # the timeout, at most `figures_concurrency` pods at once.
    figures_seconds: float = 15.0
    figures_timeout: float = 2.0
    figures_concurrency: int = 32
    # Every this long every MailService and IPAddressGroup is reconciled once more (also
    # retrying fan-out that failed). At least a second: 0 would be a busy loop.
    resync_seconds: float = 300.0
    # Where the operator runs (POD_NAMESPACE, from the chart): listener pods' NetworkPolicy
    # admits its pods to the metrics port. Empty outside a cluster: no such rule.
    operator_namespace: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Raises SettingsError, naming the variable, for a value the operator cannot use."""
        env = os.environ if env is None else env
        default = cls()
        defaults = _listener_defaults(env.get("MAILWARDEN_LISTENER_DEFAULTS", ""))
        # The explicit variable wins over the policy inside the defaults (the chart sets both
        # from the same value).
        policy = env.get("MAILWARDEN_LISTENER_IMAGE_PULL_POLICY") or defaults.image_pull_policy
        if policy is None:
            policy = default.image_pull_policy
        if policy not in PULL_POLICIES:
            raise SettingsError(
                f"MAILWARDEN_LISTENER_IMAGE_PULL_POLICY: {policy!r} is not one of Always, "
                "IfNotPresent, Never"
            )
        uid = env.get("MAILWARDEN_LISTENER_UID", str(default.run_as_user))
        if not uid.isdigit() or not 0 < int(uid) < 2**31:
            raise SettingsError(f"MAILWARDEN_LISTENER_UID: {uid!r} is not a non-root uid")
        image = env.get("MAILWARDEN_LISTENER_IMAGE") or default.image
        if not IMAGE_REFERENCE.match(image):
            raise SettingsError(f"MAILWARDEN_LISTENER_IMAGE: {image!r} is not an image reference")
        monitoring = env.get("MAILWARDEN_MONITORING_NAMESPACE") or default.monitoring_namespace
        if not DNS_LABEL.match(monitoring):
            raise SettingsError(
                f"MAILWARDEN_MONITORING_NAMESPACE: {monitoring!r} is not a namespace name "
                "(lower-case letters, digits and '-', at most 63)"
            )
        operator_namespace = env.get("POD_NAMESPACE", "")
        if operator_namespace and not DNS_LABEL.match(operator_namespace):
            raise SettingsError(f"POD_NAMESPACE: {operator_namespace!r} is not a namespace name")
        resync = _seconds(env, "MAILWARDEN_RESYNC_SECONDS", default.resync_seconds)
        if resync < 1:
            raise SettingsError(
                f"MAILWARDEN_RESYNC_SECONDS: {resync:g} is under 1 second (a resync that often "
                "would never rest)"
            )
        every = _seconds(env, "MAILWARDEN_BACKEND_PROBE_SECONDS", default.backend_probe_seconds)
        timeout = _seconds(env, "MAILWARDEN_BACKEND_PROBE_TIMEOUT", default.backend_probe_timeout)
        if not 0 < timeout <= 30:
            raise SettingsError(
                f"MAILWARDEN_BACKEND_PROBE_TIMEOUT: {timeout:g} is not between 0 and 30 seconds"
            )
        figures_every = _seconds(env, "MAILWARDEN_FIGURES_SECONDS", default.figures_seconds)
        if 0 < figures_every < 1:
            raise SettingsError(
                f"MAILWARDEN_FIGURES_SECONDS: {figures_every:g} is under 1 second (0 turns the "
                "live figures off)"
            )
        figures_timeout = _seconds(env, "MAILWARDEN_FIGURES_TIMEOUT", default.figures_timeout)
        if not 0 < figures_timeout <= 30:
            raise SettingsError(
                f"MAILWARDEN_FIGURES_TIMEOUT: {figures_timeout:g} is not between 0 and 30 seconds"
            )
        lame_duck = env.get("MAILWARDEN_LISTENER_LAME_DUCK_SECONDS", str(default.lame_duck_seconds))
        if not lame_duck.isdigit() or not 0 <= int(lame_duck) <= 300:
            raise SettingsError(
                f"MAILWARDEN_LISTENER_LAME_DUCK_SECONDS: {lame_duck!r} is not a number of seconds "
                "from 0 to 300"
            )
        concurrency = env.get("MAILWARDEN_FIGURES_CONCURRENCY", str(default.figures_concurrency))
        if not concurrency.isdigit() or not 1 <= int(concurrency) <= 1000:
            raise SettingsError(
                f"MAILWARDEN_FIGURES_CONCURRENCY: {concurrency!r} is not a number from 1 to 1000"
            )
        return cls(
            image=image,
            image_pull_policy=PULL_POLICIES[policy],
            monitoring_namespace=monitoring,
            run_as_user=int(uid),
            listener_defaults=defaults,
            backend_probe_seconds=every,
            backend_probe_timeout=timeout,
            figures_seconds=figures_every,
            figures_timeout=figures_timeout,
            figures_concurrency=int(concurrency),
            resync_seconds=resync,
            operator_namespace=operator_namespace,
            lame_duck_seconds=int(lame_duck),
        )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 86400:
        raise SettingsError(f"{name}: {text!r} is not a number of seconds")
    return value


def _listener_defaults(text: str) -> ListenerDefaults:
    if not text.strip():
        return ListenerDefaults()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"MAILWARDEN_LISTENER_DEFAULTS: not JSON: {exc}") from None
    try:
        return ListenerDefaults.model_validate(data)
    except pydantic.ValidationError as exc:
        raise SettingsError(f"MAILWARDEN_LISTENER_DEFAULTS: {manifests.explain(exc)}") from None
