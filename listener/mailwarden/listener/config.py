"""The listener's configuration file: the schema it accepts and how it is read.

The listener owns this schema. The operator (and `mailwarden listen`) render MailServices into
it; the listener never needs to know about custom resources.
"""

from __future__ import annotations

import ipaddress
import pathlib
from typing import Annotated, Any, Literal

import pydantic
import yaml

from mailwarden.listener import catalogue

Port = Annotated[int, pydantic.Field(ge=1, le=65535)]


def _cidr(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=False))


CIDR = Annotated[str, pydantic.AfterValidator(_cidr)]


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class Endpoint(_Model):
    """One socket to bind. `address` None means every address of the host (IPv4 and IPv6)."""

    address: str | None = None
    port: Port

    @pydantic.field_validator("address")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        return None if v is None else str(ipaddress.ip_address(v))


class BackendTLS(_Model):
    enabled: bool = False
    verify: bool = True
    server_name: str | None = None
    ca_file: pathlib.Path | None = None


class Backend(_Model):
    host: str = pydantic.Field(min_length=1)
    port: Port
    # PROXY protocol towards the backend, so Postfix/Dovecot log the real client address.
    proxy_protocol: Literal["none", "v1", "v2"] = "none"
    tls: BackendTLS = BackendTLS()
    connect_timeout: float = pydantic.Field(default=5.0, gt=0, le=120)


class TLSFiles(_Model):
    """PEM files as a Kubernetes TLS Secret (cert-manager) mounts them."""

    cert_file: pathlib.Path
    key_file: pathlib.Path


class Timeouts(_Model):
    # Time for what must happen before the session is decided: the PROXY header from a
    # trusted load balancer and the TLS handshake of implicit-TLS services.
    handshake: float = pydantic.Field(default=10.0, gt=0, le=3600)
    # No byte in either direction for this long closes the session. RFC 5321 §4.5.3.2.7
    # asks SMTP servers to wait at least 5 minutes for a command.
    idle: float = pydantic.Field(default=600.0, gt=0, le=86400)
    # How long a refused client may keep talking to the listener (the SMTP 503 loop).
    refusal: float = pydantic.Field(default=30.0, gt=0, le=3600)


class RateLimit(_Model):
    """New connections per address and minute (a sliding minute: a burst of N is fine, the
    N+1st within 60 seconds of the first is refused). 0: off."""

    connections_per_minute: int = pydantic.Field(default=0, ge=0, le=1_000_000)
    # IPv6 clients are counted per network of this many bits (one customer's /64).
    ipv6_prefix_length: int = pydantic.Field(default=64, ge=16, le=128)


class AutoBan(_Model):
    """The `after_failures`th failure (a refused connection or a failed login) from one
    address within `within_seconds` bans it for `ban_seconds`."""

    after_failures: int = pydantic.Field(ge=1, le=10_000)
    within_seconds: float = pydantic.Field(default=60.0, gt=0, le=86_400)
    ban_seconds: float = pydantic.Field(default=600.0, gt=0, le=2_592_000)
    # Never rate-limited or banned (the connection caps still apply).
    exempt: tuple[CIDR, ...] = ()
    ipv6_prefix_length: int = pydantic.Field(default=64, ge=16, le=128)


class ServiceConfig(_Model):
    """One mail service: where it listens, who may connect, and where sessions go."""

    name: str = pydantic.Field(min_length=1, description="namespace/name, used in metrics")
    service: str
    listen: tuple[Endpoint, ...] = pydantic.Field(min_length=1)
    # None: everyone may connect. An empty tuple: no one may (a group that cannot be
    # resolved fails closed).
    allow: tuple[CIDR, ...] | None = None
    max_connections: int = pydantic.Field(default=0, ge=0)
    max_connections_per_address: int = pydantic.Field(default=0, ge=0)
    anonymous: bool = False
    backend: Backend
    tls: TLSFiles | None = None
    # Load balancers allowed to send a PROXY header (v1 or v2) before the session.
    proxy_protocol_from: tuple[CIDR, ...] = ()
    timeouts: Timeouts = Timeouts()
    rate_limit: RateLimit = RateLimit()
    auto_ban: AutoBan | None = None
    # Host name used in greetings and refusals.
    hostname: str = "mailwarden"
    # Connections the kernel may queue before the listener accepts them; bounded so that a
    # flood is refused by the kernel instead of piling up.
    backlog: int = pydantic.Field(default=1024, ge=1, le=65535)

    @property
    def kind(self) -> catalogue.ServiceKind:
        return catalogue.kind_of(self.service)

    @pydantic.field_validator("service")
    @classmethod
    def _known(cls, v: str) -> str:
        catalogue.kind_of(v)
        return v

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> ServiceConfig:
        kind = self.kind
        if self.anonymous and not kind.anonymous_allowed:
            raise ValueError(
                f"anonymous access is only possible for NNTP and NNTPS, not {kind.name}"
            )
        if kind.tls is catalogue.TLSMode.IMPLICIT and self.tls is None:
            raise ValueError(f"{kind.name} is an implicit-TLS service and needs tls files")
        seen: set[tuple[str | None, int]] = set()
        for ep in self.listen:
            key = (ep.address, ep.port)
            if key in seen:
                raise ValueError(f"listen endpoint {ep.address or '*'}:{ep.port} appears twice")
            seen.add(key)
        return self


class Metrics(_Model):
    address: str | None = None
    port: Port = 9090


class ListenerConfig(_Model):
    version: Literal[1] = 1
    services: tuple[ServiceConfig, ...] = ()
    metrics: Metrics = Metrics()
    # On SIGTERM: stop accepting, let sessions finish for this long, then close the rest.
    drain_seconds: float = pydantic.Field(default=30.0, ge=0, le=3600)

    @pydantic.model_validator(mode="after")
    def _distinct(self) -> ListenerConfig:
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError("service names must be unique")
        owners: dict[tuple[str | None, int], str] = {}
        for svc in self.services:
            for ep in svc.listen:
                key = (ep.address, ep.port)
                if key in owners:
                    raise ValueError(
                        f"{svc.name} and {owners[key]} both listen on {ep.address or '*'}:{ep.port}"
                    )
                owners[key] = svc.name
        return self


# libyaml's emitter writes the same text as the pure-Python one, about four times faster; the
# operator renders a configuration on every reconciliation.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says where and why."""


def parse(data: Any) -> ListenerConfig:
    try:
        return ListenerConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def loads(text: str) -> ListenerConfig:
    try:
        data = yaml.load(text, Loader=_Loader)  # a safe loader, C or Python
    except yaml.YAMLError as exc:
        raise ConfigError(f"not YAML: {exc}") from None
    return parse(data if data is not None else {})


def load(path: pathlib.Path) -> ListenerConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    return loads(text)


def dumps(config: ListenerConfig) -> str:
    data = config.model_dump(mode="json", exclude_defaults=False)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def _explain(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
