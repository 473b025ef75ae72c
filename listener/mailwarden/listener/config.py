"""The listener's configuration file: the schema it accepts and how it is read.

The listener owns this schema. The operator (and `mailwarden listen`) render MailServices into
it; the listener never needs to know about custom resources.

Written with msgspec rather than pydantic (docs/decisions/0002-listener-footprint.md): a
listener pod holds its configuration and nothing else, and pydantic alone costs it about
13 MiB of RSS against msgspec's 1 MiB. Constraints live in the types (`Meta`); what one field
cannot say is checked in `__post_init__`, which runs both when a file is decoded and when the
operator builds a configuration in code. Errors are reported as `where: what`, with `where`
a dotted path (`services.0.listen.0.port`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pathlib
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import msgspec.json

from mailwarden.listener import catalogue

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
ProxyProtocol = Literal["none", "v1", "v2"]
PROXY_PROTOCOLS: tuple[ProxyProtocol, ...] = ("none", "v1", "v2")


def _cidr(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=False))


def _cidrs(field: str, values: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for i, v in enumerate(values):
        try:
            out.append(_cidr(v))
        except ValueError as exc:
            raise ValueError(f"{field}.{i}: {exc}") from None
    return tuple(out)


class _Model(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


M = TypeVar("M", bound=_Model)


def _set(obj: _Model, field: str, value: object) -> None:
    """Normalise a field of a frozen struct while it is being built."""
    msgspec.structs.force_setattr(obj, field, value)


class Endpoint(_Model, frozen=True, kw_only=True):
    """One socket to bind. `address` None means every address of the host (IPv4 and IPv6)."""

    address: str | None = None
    port: Port

    def __post_init__(self) -> None:
        if self.address is not None:
            try:
                _set(self, "address", str(ipaddress.ip_address(self.address)))
            except ValueError as exc:
                raise ValueError(f"address: {exc}") from None


class BackendTLS(_Model, frozen=True, kw_only=True):
    enabled: bool = False
    verify: bool = True
    server_name: str | None = None
    ca_file: pathlib.Path | None = None


class Backend(_Model, frozen=True, kw_only=True):
    host: NonEmpty
    port: Port
    # PROXY protocol towards the backend, so Postfix/Dovecot log the real client address.
    proxy_protocol: ProxyProtocol = "none"
    tls: BackendTLS = BackendTLS()
    connect_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 5.0


class TLSFiles(_Model, frozen=True, kw_only=True):
    """PEM files as a Kubernetes TLS Secret (cert-manager) mounts them."""

    cert_file: pathlib.Path
    key_file: pathlib.Path


class Timeouts(_Model, frozen=True, kw_only=True):
    # Time for what must happen before the session is decided: the PROXY header from a
    # trusted load balancer and the TLS handshake of implicit-TLS services.
    handshake: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    # No byte in either direction for this long closes the session. RFC 5321 §4.5.3.2.7
    # asks SMTP servers to wait at least 5 minutes for a command.
    idle: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 600.0
    # How long a refused client may keep talking to the listener (the SMTP 503 loop).
    refusal: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0


class RateLimit(_Model, frozen=True, kw_only=True):
    """New connections per address and minute (a sliding minute: a burst of N is fine, the
    N+1st within 60 seconds of the first is refused). 0: off."""

    connections_per_minute: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    # IPv6 clients are counted per network of this many bits (one customer's /64).
    ipv6_prefix_length: Annotated[int, msgspec.Meta(ge=16, le=128)] = 64


class AutoBan(_Model, frozen=True, kw_only=True):
    """The `after_failures`th failure (a refused connection or a failed login) from one
    address within `within_seconds` bans it for `ban_seconds`."""

    after_failures: Annotated[int, msgspec.Meta(ge=1, le=10_000)]
    within_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    ban_seconds: Annotated[float, msgspec.Meta(gt=0, le=2_592_000)] = 600.0
    # Never rate-limited or banned (the connection caps still apply).
    exempt: tuple[str, ...] = ()
    ipv6_prefix_length: Annotated[int, msgspec.Meta(ge=16, le=128)] = 64

    def __post_init__(self) -> None:
        _set(self, "exempt", _cidrs("exempt", tuple(self.exempt)))


class ServiceConfig(_Model, frozen=True, kw_only=True):
    """One mail service: where it listens, who may connect, and where sessions go."""

    # namespace/name, used in metrics
    name: NonEmpty
    service: str
    listen: Annotated[tuple[Endpoint, ...], msgspec.Meta(min_length=1)]
    # None: everyone may connect. An empty tuple: no one may (a group that cannot be
    # resolved fails closed).
    allow: tuple[str, ...] | None = None
    max_connections: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_connections_per_address: Annotated[int, msgspec.Meta(ge=0)] = 0
    anonymous: bool = False
    backend: Backend
    tls: TLSFiles | None = None
    # Load balancers allowed to send a PROXY header (v1 or v2) before the session.
    proxy_protocol_from: tuple[str, ...] = ()
    timeouts: Timeouts = Timeouts()
    rate_limit: RateLimit = RateLimit()
    auto_ban: AutoBan | None = None
    # Host name used in greetings and refusals.
    hostname: str = "mailwarden"
    # Connections the kernel may queue before the listener accepts them; bounded so that a
    # flood is refused by the kernel instead of piling up.
    backlog: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1024

    @property
    def kind(self) -> catalogue.ServiceKind:
        return catalogue.kind_of(self.service)

    def __post_init__(self) -> None:
        try:
            kind = self.kind
        except ValueError as exc:
            raise ValueError(f"service: {exc}") from None
        if self.allow is not None:
            _set(self, "allow", _cidrs("allow", tuple(self.allow)))
        _set(
            self,
            "proxy_protocol_from",
            _cidrs("proxy_protocol_from", tuple(self.proxy_protocol_from)),
        )
        # Built in code rather than decoded, sequences may come as lists: keep them hashable.
        _set(self, "listen", tuple(self.listen))
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


# The listener's metrics, /healthz, /readyz and /status port: the one value the operator's
# pods, Services, NetworkPolicies and the image all use (mailwarden.operator.naming).
METRICS_PORT = 9090


class Metrics(_Model, frozen=True, kw_only=True):
    address: str | None = None
    port: Port = METRICS_PORT


class ListenerConfig(_Model, frozen=True, kw_only=True):
    version: int = 1
    services: tuple[ServiceConfig, ...] = ()
    metrics: Metrics = Metrics()
    # On SIGTERM: stop accepting, let sessions finish for this long, then close the rest.
    drain_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    # On SIGTERM, before the drain: /readyz answers 503 while the ports still accept, so
    # that EndpointSlices and load-balancer health checks stop sending clients first.
    # 0 (a host, where no load balancer watches): stop accepting at once.
    lame_duck_seconds: Annotated[float, msgspec.Meta(ge=0, le=300)] = 0.0

    def __post_init__(self) -> None:
        if self.version != 1:
            raise ValueError("version: Input should be 1")
        _set(self, "services", tuple(self.services))
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


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says where and why."""


class ConfigUnreadable(OSError):
    """The file could not be read for a reason of this process, not of the file: it is out
    of file descriptors or memory. Not a broken configuration; try again later."""


# Kubernetes caps a ConfigMap (all its keys together) at 1 MiB; a listener configuration is
# one key of one. A larger file is not one the operator wrote, and is refused unread.
MAX_BYTES = 1024 * 1024
# errno values that say the process, not the file, is short of something.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def parse(data: Any) -> ListenerConfig:
    return build(ListenerConfig, data)


def build(cls: type[M], data: Any) -> M:
    """A `cls` from plain data (mappings, lists, strings; structs pass as they are), checked
    as a file is. Calling a class directly checks only its `__post_init__`."""
    try:
        return msgspec.convert(data, cls, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc))) from None


def loads(text: str) -> ListenerConfig:
    """A configuration from its text: JSON (what the operator renders for pods) or YAML.

    It must say `services:`: an empty file, or one cut before its services, is a broken file
    (the last good configuration stays), not a listener with no services; no services at
    all is said `services: []`."""
    if text.lstrip().startswith("{"):
        try:
            data = msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"not JSON: {exc}") from None
    else:
        # Imported here: a pod's file is JSON, and PyYAML costs a pod about 1.4 MiB of RSS.
        import yaml

        try:
            data = yaml.load(text, Loader=_yaml_loader())  # a safe loader, C or Python
        except yaml.YAMLError as exc:
            raise ConfigError(f"not YAML: {exc}") from None
    if data is None:
        raise ConfigError("empty file (a configuration without services says `services: []`)")
    if not isinstance(data, dict):
        raise ConfigError(f"(top): expected a mapping, not {type(data).__name__}")
    if "services" not in data:
        raise ConfigError(
            "services: missing (a file cut short?); a configuration without services says "
            "`services: []`"
        )
    return parse(data)


def load(path: pathlib.Path) -> ListenerConfig:
    """Read and check a configuration file of at most MAX_BYTES. Raises ConfigError for a
    file that cannot be used and ConfigUnreadable when the process cannot read it now."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(MAX_BYTES + 1) if size <= MAX_BYTES else b""
    except OSError as exc:
        if exc.errno in EXHAUSTED:
            raise ConfigUnreadable(exc.errno, f"{path}: {exc.strerror}") from None
        raise ConfigError(f"{path}: {exc.strerror}") from None
    if size > MAX_BYTES or len(raw) > MAX_BYTES:
        raise ConfigError(
            f"{path}: {max(size, len(raw))} bytes, more than the {MAX_BYTES} a configuration "
            "may have"
        )
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return loads(text)


def to_data(config: ListenerConfig) -> dict[str, Any]:
    """Plain data (every field, defaults too) that `parse` turns back into `config`."""
    data: dict[str, Any] = msgspec.to_builtins(config, enc_hook=str)
    return data


def dumps(config: ListenerConfig, fmt: Literal["yaml", "json"] = "yaml") -> str:
    """The configuration as text: YAML for people (`mailwarden listen --print-config`), JSON
    for the listener pods the operator runs (they read it without a YAML parser). Both are
    YAML, so either is read by `loads`."""
    data = to_data(config)
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(data), indent=2).decode() + "\n"
    import yaml

    return str(yaml.dump(data, Dumper=_yaml_dumper(), sort_keys=False))


# libyaml's emitter and parser do the same as the pure-Python ones, about four times faster;
# the operator renders a configuration on every reconciliation.
def _yaml_loader() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_dumper() -> Any:
    import yaml

    return getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _decode(type_: type, obj: Any) -> Any:
    # Paths come as text from a file, or as Path objects from code that builds a configuration.
    if type_ is pathlib.Path and isinstance(obj, str | pathlib.PurePath):
        return pathlib.Path(obj)
    raise TypeError(f"Input should be a path, not {type(obj).__name__}")


# msgspec's messages, said the way this project's errors always have been (the wording of
# pydantic, which validated this file before): `where: what`.
_WHERE = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<where>[^`]*)`)?$", re.S)
_REWORDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"^Expected `\w+` >= (\S+)$", r"Input should be greater than or equal to \1"),
        (r"^Expected `\w+` > (\S+)$", r"Input should be greater than \1"),
        (r"^Expected `\w+` <= (\S+)$", r"Input should be less than or equal to \1"),
        (r"^Expected `\w+` < (\S+)$", r"Input should be less than \1"),
        (r"^Expected `str` of length >= 1$", "String should have at least 1 character"),
        (r"^Expected `array` of length >= (\d+)$", r"Tuple should have at least \1 item"),
        (r"^Expected `int`, got `(\w+)`$", r"Input should be a valid integer, not \1"),
        (r"^Expected `float`, got `(\w+)`$", r"Input should be a valid number, not \1"),
        (r"^Expected `bool`, got `(\w+)`$", r"Input should be a valid boolean, not \1"),
        (r"^Expected `str`, got `(\w+)`$", r"Input should be a valid string, not \1"),
        (r"^Expected `(object|array)`, got `(\w+)`$", r"Input should be an \1, not \2"),
        (r"^Invalid enum value (.*)$", r"Input should be one of the allowed values, not \1"),
    )
)
_FIELD = re.compile(r"^(?P<field>[a-z_]+(?:\.\d+)?): (?P<what>.*)$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")


def _explain(message: str) -> str:
    found = _WHERE.match(message)
    assert found is not None  # the pattern matches any text
    what, where = found["what"], found["where"] or ""
    path = [p for p in re.split(r"[.\[\]]+", where) if p]
    if m := _UNKNOWN.match(what):
        path.append(m["field"])
        what = "Extra inputs are not permitted"
    elif m := _MISSING.match(what):
        path.append(m["field"])
        what = "Field required"
    elif m := _FIELD.match(what):  # raised by a __post_init__ about one of its fields
        path += m["field"].split(".")
        what = m["what"] if m["what"].startswith("Input") else f"Value error, {m['what']}"
    else:
        for pattern, replacement in _REWORDS:
            if pattern.match(what):
                what = pattern.sub(replacement, what)
                break
        else:
            if where and not what.startswith("Input"):
                what = f"Value error, {what}"
    return f"{'.'.join(path) or '(top)'}: {what}"
