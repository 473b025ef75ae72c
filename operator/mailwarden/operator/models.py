"""The custom resources, MailService and IPAddressGroup (mailwarden.io/v1alpha1), as pydantic
models. They are the one source of truth: the CRDs in deploy/crds are generated from them, and
the operator, `mailwarden render` and `mailwarden listen` all read manifests through them."""

from __future__ import annotations

import datetime
import ipaddress
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from mailwarden.listener import catalogue
from mailwarden.listener import config as lc

GROUP = "mailwarden.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

ServiceName = Literal[
    "SMTP",
    "SMTPS",
    "Submission",
    "POP3",
    "POP3S",
    "IMAP",
    "IMAPS",
    "NNTP",
    "NNTPS",
    "LDAP",
    "LDAPS",
    "HTTP",
    "HTTPS",
    "XMPP",
    "XMPPS",
]
assert set(ServiceName.__args__) == set(catalogue.SERVICE_NAMES)  # type: ignore[attr-defined]

# Ports a listener pod uses itself: a service listening there would make the pod crash on
# start (address in use) over and over: the listener's metrics port (one value for the
# listener, its pods and the image: mailwarden.listener.config.METRICS_PORT).
METRICS_PORT = lc.METRICS_PORT
RESERVED_PORTS = {
    METRICS_PORT: f"port {METRICS_PORT} is the listener pod's own metrics and health port "
    "(/metrics, /healthz, /readyz); choose another port",
}

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
Port = Annotated[int, Field(ge=1, le=65535)]
# Coarse shapes of addresses and networks for the CRD schema (the API server has no portable
# IP check); the validators below do the precise parsing. Schema-only, so pydantic's own,
# clearer messages stay.
IP_SHAPE: JsonDict = {"pattern": r"^[0-9A-Fa-f:.]+$"}
NETWORK_SHAPE: JsonDict = {"pattern": r"^[0-9A-Fa-f:.]+(/[0-9A-Fa-f:.]+)?$"}
RANGE_SHAPE: JsonDict = {"pattern": r"^ *[0-9A-Fa-f:.]+ *- *[0-9A-Fa-f:.]+ *$"}
Cidr = Annotated[str, Field(max_length=64, json_schema_extra=NETWORK_SHAPE)]
LabelValue = Annotated[str, Field(max_length=63)]
AnnotationValue = Annotated[str, Field(max_length=4096)]


class _Spec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel
    )


# -- MailService ----------------------------------------------------------------------------


class ListenAddress(_Spec):
    """One address and port the service listens on."""

    address: str | None = Field(
        default=None,
        max_length=45,
        json_schema_extra=IP_SHAPE,
        description=(
            "IPv4 or IPv6 address to bind this port to (the Service gets it as its fixed "
            "load-balancer or external IP). Absent: all addresses. Avoid addresses assigned by "
            "DHCP: the binding breaks when the address changes."
        ),
    )
    port: Port | None = Field(
        default=None, description="TCP port. Absent: the service's standard port (25 for SMTP, …)."
    )

    @pydantic.field_validator("address")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 or IPv6 address") from None

    @pydantic.field_validator("port")
    @classmethod
    def _not_the_pod_s(cls, v: int | None) -> int | None:
        if v in RESERVED_PORTS:
            raise ValueError(RESERVED_PORTS[v])
        return v


# Ranges of the abuse-defence settings: (lowest, highest). Checked by a validator here and by
# a CEL rule in the CRD with the same message (crd.RULES), which names the field.
ABUSE_RANGES: dict[tuple[str, str], tuple[int, int]] = {
    ("rateLimit", "connectionsPerMinute"): (0, 100_000),
    ("rateLimit", "ipv6PrefixLength"): (16, 128),
    ("autoBan", "afterFailures"): (1, 10_000),
    ("autoBan", "withinSeconds"): (1, 86_400),
    ("autoBan", "banSeconds"): (1, 2_592_000),  # 30 days
    ("autoBan", "ipv6PrefixLength"): (16, 128),
}


def range_message(section: str, field: str, value: object) -> str:
    low, high = ABUSE_RANGES[(section, field)]
    off = " (0: off)" if low == 0 else ""
    return f"access.{section}.{field}: {value} is out of range; use {low} to {high}{off}"


def _in_range(section: str, field: str, value: int) -> int:
    low, high = ABUSE_RANGES[(section, field)]
    if not low <= value <= high:
        raise ValueError(range_message(section, field, value))
    return value


IPV6_PREFIX_DESCRIPTION = (
    "IPv6 clients are counted and banned per network of this many bits (16 to 128), since "
    "one customer usually holds a whole /64 and can hop within it. IPv4 addresses count alone."
)


class RateLimit(_Spec):
    """New connections from one address per minute, counted by each listener pod."""

    connections_per_minute: int = Field(
        default=0,
        description=(
            "At most this many new connections from one address in any 60 seconds (a burst "
            "of that many is fine; the next one within the minute is refused as a temporary "
            "failure, before the backend is contacted). 0 to 100000; 0: off."
        ),
    )
    ipv6_prefix_length: int = Field(default=64, description=IPV6_PREFIX_DESCRIPTION)

    @pydantic.field_validator("connections_per_minute", "ipv6_prefix_length")
    @classmethod
    def _range(cls, v: int, info: pydantic.ValidationInfo) -> int:
        return _in_range("rateLimit", to_camel(info.field_name or ""), v)


class AutoBan(_Spec):
    """Ban an address for a while after repeated failures: refused connections (denied,
    over a cap, over the rate limit) and failed logins the listener can see."""

    after_failures: int = Field(
        default=5,
        description="The failure that starts a ban: the Nth within withinSeconds (1 to 10000).",
    )
    within_seconds: int = Field(
        default=60, description="The window the failures are counted in (1 to 86400)."
    )
    ban_seconds: int = Field(
        default=600,
        description=(
            "How long a ban lasts (1 to 2592000). Banned addresses are refused at once as a "
            "temporary failure; the ban ends by itself."
        ),
    )
    exempt_from: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description=(
            "An IPAddressGroup in the same namespace whose addresses are never rate-limited "
            "or banned (the connection caps still apply to them)."
        ),
    )
    ipv6_prefix_length: int = Field(default=64, description=IPV6_PREFIX_DESCRIPTION)

    @pydantic.field_validator(
        "after_failures", "within_seconds", "ban_seconds", "ipv6_prefix_length"
    )
    @classmethod
    def _range(cls, v: int, info: pydantic.ValidationInfo) -> int:
        return _in_range("autoBan", to_camel(info.field_name or ""), v)


class Access(_Spec):
    """Who may connect, how many at once, and how fast."""

    allow_from: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description=(
            "Name of an IPAddressGroup in the same namespace whose addresses may connect. "
            "Absent: everyone. Leave it absent on the SMTP service that is your MX."
        ),
    )
    anonymous: bool = Field(
        default=False,
        description="Allow reading news without authentication. Only NNTP and NNTPS have it.",
    )
    max_connections: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description=(
            "Most concurrent connections to the whole service, whatever the replica count "
            "(each of N replicas enforces floor(maxConnections / N)). 0: unlimited."
        ),
    )
    max_connections_per_address: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description=(
            "Most concurrent connections from one client address, per listener replica. "
            "0: unlimited."
        ),
    )
    rate_limit: RateLimit | None = Field(
        default=None,
        description="Per-address connection rate limit, per listener pod. Absent: off.",
    )
    auto_ban: AutoBan | None = Field(
        default=None,
        description="Ban addresses after repeated failures, per listener pod. Absent: off.",
    )


class BackendTLS(_Spec):
    """TLS on the leg from the listener to the backend."""

    enabled: bool = Field(default=False, description="Speak TLS to the backend.")
    insecure_skip_verify: bool = Field(
        default=False, description="Do not verify the backend's certificate (testing only)."
    )
    server_name: str | None = Field(
        default=None, max_length=253, description="Name to verify and send as SNI; default: host."
    )


class Backend(_Spec):
    """The real mail server that admitted sessions are relayed to."""

    host: str = Field(
        min_length=1, max_length=253, description="Host name or address of the mail server."
    )
    port: Port | None = Field(
        default=None, description="Port. Absent: the service's standard port."
    )
    proxy_protocol: Literal["None", "V1", "V2"] = Field(
        default="None",
        description=(
            "Send a PROXY protocol header so the backend sees the real client address "
            "(Postfix smtpd_upstream_proxy_protocol, Dovecot haproxy_trusted_networks)."
        ),
    )
    tls: BackendTLS = Field(default_factory=BackendTLS, description="TLS towards the backend.")


class TLS(_Spec):
    """The certificate the listener presents for implicit TLS (and STARTTLS where it reads
    commands)."""

    secret_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="A kubernetes.io/tls Secret (tls.crt, tls.key), e.g. from cert-manager.",
    )


class ProxyProtocol(_Spec):
    """Accept a PROXY protocol header from load balancers in front of the listener."""

    trusted_cidrs: list[Cidr] = Field(
        default_factory=list,
        alias="trustedCIDRs",  # Kubernetes spells the acronym whole (podCIDR, serviceCIDR)
        max_length=64,
        description="Only these peers may send a PROXY header; anyone else sending one is refused.",
    )

    @pydantic.field_validator("trusted_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return [_cidr(c) for c in v]


class Expose(_Spec):
    """How the service is exposed outside the cluster."""

    # No API-server default for these two (crd.OPERATOR_DEFAULTS): absent, the operator's
    # cluster-wide default applies, and these model defaults are its built-in ones.
    type: Literal["LoadBalancer", "NodePort", "ClusterIP"] = Field(
        default="LoadBalancer",
        description=(
            "Kubernetes Service type. Absent: the operator's default (Helm value "
            "listener.defaults.expose.type, LoadBalancer unless changed)."
        ),
    )
    external_traffic_policy: Literal["Local", "Cluster"] = Field(
        default="Local",
        description=(
            "Local keeps client addresses intact, which access rules depend on. Absent: the "
            "operator's default (Helm value listener.defaults.expose.externalTrafficPolicy, "
            "Local unless changed)."
        ),
    )
    annotations: dict[str, AnnotationValue] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "Annotations for the Service, passed through as they are (load-balancer settings: "
            "an address pool, an AWS EIP allocation, an internal load balancer...). On an "
            "address several MailServices share, the Service gets the annotations of all of "
            "them (the older MailService's value where two set the same key)."
        ),
    )
    load_balancer_class: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$",
        description=(
            "The Service's spec.loadBalancerClass: which load-balancer implementation serves it "
            "(e.g. service.k8s.aws/nlb for the AWS Load Balancer Controller). Absent: the "
            "operator's default (Helm value listener.defaults.expose.loadBalancerClass), else "
            "the cluster's default implementation. LoadBalancer only."
        ),
    )
    address_request: Literal["Annotation", "LoadBalancerIP"] = Field(
        default="Annotation",
        description=(
            "How a fixed address is asked of the load balancer. Annotation: the "
            "metallb.io/loadBalancerIPs annotation (MetalLB). LoadBalancerIP: the deprecated "
            "spec.loadBalancerIP field (GKE, AKS, kube-vip, Cilium and MetalLB read it). Never "
            "both: MetalLB refuses a Service that has both. Absent: the operator's default "
            "(Helm value listener.defaults.expose.addressRequest, Annotation unless changed)."
        ),
    )


class Timeouts(_Spec):
    """Session timeouts, in seconds."""

    handshake_seconds: int = Field(
        default=10, ge=1, le=3600, description="For the PROXY header and the TLS handshake."
    )
    idle_seconds: int = Field(
        default=600, ge=1, le=86400, description="A session with no traffic this long is closed."
    )


class MailServiceSpec(_Spec):
    """A mail service as the Services page of a mail server shows it."""

    service: ServiceName = Field(
        description="Which service of the catalogue this is. Cannot be changed once set."
    )
    startup: Literal["Automatic", "Manual"] = Field(
        default="Automatic",
        description=(
            "Automatic: kept running. Manual: created stopped; runs only after an "
            "administrator starts it."
        ),
    )
    listen: list[ListenAddress] = Field(
        default_factory=list,
        max_length=16,
        description="Addresses and ports. Empty: all addresses on the standard port.",
    )
    access: Access = Field(default_factory=Access, description="Who may connect.")
    backend: Backend = Field(description="Where admitted sessions are relayed.")
    tls: TLS | None = Field(
        default=None, description="Certificate for TLS the listener terminates."
    )
    proxy_protocol: ProxyProtocol = Field(
        default_factory=ProxyProtocol, description="PROXY protocol from load balancers."
    )
    replicas: int = Field(default=1, ge=0, le=100, description="Listener pods.")
    expose: Expose = Field(default_factory=Expose, description="The Kubernetes Service.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Session timeouts.")
    drain_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="On stop or restart, sessions may finish for this long before they are cut.",
    )
    # Absent: the operator's defaults (Helm values listener.defaults.*); present, even empty,
    # they replace the default whole.
    resources: dict[str, Any] | None = Field(
        default=None,
        description=(
            "Resource requests and limits of the listener container. Absent: the operator's "
            "default (listener.defaults.resources); {} for none."
        ),
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=64,
        description="Pod node selector. Absent: the operator's default; {} for none.",
    )
    tolerations: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=64,
        description="Pod tolerations. Absent: the operator's default; [] for none.",
    )
    affinity: dict[str, Any] | None = Field(
        default=None, description="Pod affinity. Absent: the operator's default; {} for none."
    )

    @pydantic.model_validator(mode="after")
    def _rules(self) -> MailServiceSpec:
        kind = catalogue.kind_of(self.service)
        if self.access.anonymous and not kind.anonymous_allowed:
            raise ValueError(
                f"access.anonymous: anonymous access is only allowed for NNTP and NNTPS, "
                f"not {self.service}"
            )
        seen: set[tuple[str | None, int]] = set()
        for item in self.listen:
            key = (item.address, item.port or kind.port)
            if key in seen:
                raise ValueError(
                    f"listen: {item.address or '*'}:{key[1]} is listed twice in this MailService"
                )
            seen.add(key)
        cap = self.access.max_connections
        if 0 < cap < self.replicas:
            raise ValueError(
                f"access.maxConnections: {cap} is below replicas ({self.replicas}); each replica "
                "takes floor(maxConnections / replicas) connections, so use 0 (unlimited) or at "
                "least replicas"
            )
        if kind.tls is catalogue.TLSMode.IMPLICIT and self.tls is None:
            raise ValueError(
                f"tls: {self.service} is an implicit-TLS service and needs tls.secretName"
            )
        return self

    @property
    def kind(self) -> catalogue.ServiceKind:
        return catalogue.kind_of(self.service)

    def endpoints(self) -> list[tuple[str | None, int]]:
        """(address, port) pairs, defaults applied."""
        if not self.listen:
            return [(None, self.kind.port)]
        return [(item.address, item.port or self.kind.port) for item in self.listen]


# -- IPAddressGroup -------------------------------------------------------------------------


def _cidr(v: str) -> str:
    try:
        return str(ipaddress.ip_network(v.strip(), strict=False))
    except ValueError:
        raise ValueError(
            f"{v!r} is not a network (CIDR such as 192.0.2.0/24 or address/mask such as "
            "192.0.2.0/255.255.255.0)"
        ) from None


class GroupItem(_Spec):
    """Exactly one of host, network, range or group."""

    host: str | None = Field(
        default=None,
        max_length=45,
        json_schema_extra=IP_SHAPE,
        description="One IPv4 or IPv6 address.",
    )
    network: str | None = Field(
        default=None,
        max_length=64,
        json_schema_extra=NETWORK_SHAPE,
        description="A network: CIDR (192.0.2.0/24, 2001:db8::/32) or address/mask.",
    )
    range: str | None = Field(
        default=None,
        max_length=100,
        json_schema_extra=RANGE_SHAPE,
        description="An address range, first-last (192.0.2.10-192.0.2.20), both ends included.",
    )
    group: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Another IPAddressGroup in the same namespace, included whole.",
    )
    description: str | None = Field(
        default=None, max_length=256, description="A free-text note about the item."
    )

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> GroupItem:
        given = [k for k in ("host", "network", "range", "group") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "an item must have exactly one of host, network, range or group"
                + (f" (it has {', '.join(given)})" if given else "")
            )
        if self.host is not None:
            try:
                self.host = str(ipaddress.ip_address(self.host.strip()))
            except ValueError:
                raise ValueError(f"host: {self.host!r} is not an IPv4 or IPv6 address") from None
        if self.network is not None:
            self.network = _cidr(self.network)
        if self.range is not None:
            first, last = parse_range(self.range)
            self.range = f"{first}-{last}"
        return self


def parse_range(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    parts = text.split("-")
    if len(parts) != 2:
        raise ValueError(f"range: {text!r} is not first-last")
    try:
        first, last = (ipaddress.ip_address(p.strip()) for p in parts)
    except ValueError:
        raise ValueError(f"range: {text!r} does not hold two addresses") from None
    if first.version != last.version:
        raise ValueError(f"range: {text!r} mixes IPv4 and IPv6")
    if int(first) > int(last):
        raise ValueError(f"range: {text!r} ends before it starts")
    return first, last


class IPAddressGroupSpec(_Spec):
    """A named list of addresses that services admit (Kerio's IP address groups)."""

    items: list[GroupItem] = Field(
        default_factory=list, max_length=1024, description="Hosts, networks, ranges and groups."
    )


# -- status ---------------------------------------------------------------------------------
# What the operator writes. The CRDs' status schemas are generated from these models.

ConditionStatus = Literal["True", "False", "Unknown"]
ServiceState = Literal["Running", "Stopped", "Starting"]


class _Status(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        extra="ignore", populate_by_name=True, alias_generator=to_camel
    )


class Condition(_Status):
    """One aspect of the resource's current state (the metav1.Condition shape)."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Ready, Reconciling or Stalled.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation the condition was set for.",
        json_schema_extra={"format": "int64"},
    )
    last_transition_time: datetime.datetime = Field(
        description="When the condition last changed from one status to another."
    )
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description=(
            "Why, in CamelCase (e.g. ListenConflict, IPAddressGroupNotFound, BackendUnreachable)."
        ),
    )
    message: str = Field(max_length=32768, description="Details for people.")


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=16,
        description="Ready, Reconciling and Stalled, following the Kubernetes API conventions.",
    ),
]
ObservedGeneration = Annotated[
    int | None,
    Field(
        ge=0,
        description="The metadata.generation the status was computed from.",
        json_schema_extra={"format": "int64"},
    ),
]


Count = Annotated[int, Field(ge=0)]


class Connections(_Status):
    """Live figures summed over the listener pods serving the MailService, read from each
    pod's /status at most every MAILWARDEN_FIGURES_SECONDS and written only when a figure
    changed. Refusals are counted over the last 5 minutes."""

    active: Count = Field(default=0, description="Sessions open now, all pods together.")
    refused: Count = Field(
        default=0, description="Refusals in the last 5 minutes, all outcomes together."
    )
    denied: Count = Field(
        default=0, description="Refused in the last 5 minutes: address not allowed."
    )
    over_cap: Count = Field(
        default=0, description="Refused in the last 5 minutes: over maxConnections."
    )
    over_address_cap: Count = Field(
        default=0,
        description="Refused in the last 5 minutes: over maxConnectionsPerAddress.",
    )
    rate_limited: Count = Field(
        default=0, description="Refused in the last 5 minutes: over the address's rate limit."
    )
    banned: Count = Field(
        default=0, description="Refused in the last 5 minutes: the address was banned."
    )
    backend_down: Count = Field(
        default=0, description="Refused in the last 5 minutes: the backend did not answer."
    )
    banned_addresses: Count = Field(default=0, description="Addresses banned now.")
    observed_at: datetime.datetime | None = Field(
        default=None, description="When the pods were asked for these figures."
    )


class MailServiceStatus(_Status):
    """What the operator observed and did, as of observedGeneration."""

    observed_generation: ObservedGeneration = None
    conditions: Conditions = Field(default_factory=list)
    state: ServiceState | None = Field(
        default=None,
        description="Running, Stopped or Starting (pods are coming up).",
    )
    last_state_change: datetime.datetime | None = Field(
        default=None, description="When state last changed."
    )
    endpoints: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=16,
        description=(
            'The endpoints as assigned, "address:port" ("[v6]:port" for IPv6; "*:port" for '
            "a node port on every node's addresses). A requested address the load balancer has "
            "not assigned yet is left out (Ready says AddressPending)."
        ),
    )
    address: str | None = Field(
        default=None,
        max_length=256,
        description=(
            "Where clients reach the service, as assigned: the load balancer's addresses "
            "(status.loadBalancer.ingress of its Services), the node port on every node, or the "
            "cluster IP; <pending> until assigned."
        ),
    )
    listeners: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list,
        max_length=17,
        description=(
            "The listener Deployments serving it: one per fixed address (shared with the "
            "other MailServices on it) and its own for ports without one. Their pods carry the "
            "label mailwarden.io/listener=<name>."
        ),
    )
    effective_max_connections_per_pod: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Connections each listener pod takes: floor(maxConnections / replicas). 0: unlimited."
        ),
    )
    replicas: int | None = Field(
        default=None, ge=0, description="Listener pods that exist (for the scale subresource)."
    )
    selector: str | None = Field(
        default=None,
        max_length=1024,
        description="Label selector of the listener pods (for the scale subresource).",
    )
    connections: Connections | None = Field(
        default=None,
        description="Live figures: sessions open now and refusals in the last 5 minutes.",
    )


class IPAddressGroupStatus(_Status):
    """The resolved group, as of observedGeneration."""

    observed_generation: ObservedGeneration = None
    conditions: Conditions = Field(default_factory=list)
    cidrs: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=10000,
        description="The minimal list of CIDRs the group and its nested groups stand for.",
    )


# -- resources ------------------------------------------------------------------------------


class ObjectMeta(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class MailService(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", populate_by_name=True)
    api_version: Literal["mailwarden.io/v1alpha1"] = Field(
        "mailwarden.io/v1alpha1", alias="apiVersion"
    )
    kind: Literal["MailService"] = "MailService"
    metadata: ObjectMeta
    spec: MailServiceSpec


class IPAddressGroup(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", populate_by_name=True)
    api_version: Literal["mailwarden.io/v1alpha1"] = Field(
        "mailwarden.io/v1alpha1", alias="apiVersion"
    )
    kind: Literal["IPAddressGroup"] = "IPAddressGroup"
    metadata: ObjectMeta
    spec: IPAddressGroupSpec = Field(default_factory=IPAddressGroupSpec)


# -- start, stop, restart -------------------------------------------------------------------

# `kubectl annotate msvc NAME mailwarden.io/state=Running --overwrite` starts a service,
# `=Stopped` stops it; without the annotation the startup mode decides.
STATE_ANNOTATION = "mailwarden.io/state"
RUNNING = "Running"
STOPPED = "Stopped"
# `kubectl annotate msvc NAME mailwarden.io/restartedAt="$(date -Is)" --overwrite` restarts
# the listener pods one by one, each draining its sessions.
RESTART_ANNOTATION = "mailwarden.io/restartedAt"


def wants_running(msvc: MailService) -> bool:
    state = msvc.metadata.annotations.get(STATE_ANNOTATION)
    if state == RUNNING:
        return True
    if state == STOPPED:
        return False
    return msvc.spec.startup == "Automatic"
