"""MailService (plus the groups it uses) → the listener's configuration. Pure: the operator
puts the result in a ConfigMap, `mailwarden listen` feeds it straight to a listener. (Not to
be confused with `mailwarden render`, which prints the Kubernetes objects: cli/render.py.)"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Mapping

from mailwarden.listener import config as lc
from mailwarden.operator import groups, models, naming


@dataclasses.dataclass(frozen=True)
class Rendered:
    service: lc.ServiceConfig
    # Why the access list is empty when it fails closed (group missing or cyclic).
    problems: tuple[str, ...] = ()
    resolution: groups.Resolution | None = None
    # The group of access.autoBan.exemptFrom, resolved; and why no address is exempt when it
    # cannot be resolved (the service runs on, with nobody exempt).
    exempt_resolution: groups.Resolution | None = None
    exempt_problems: tuple[str, ...] = ()


def per_pod_cap(max_connections: int, replicas: int) -> int:
    """The service-wide cap split over the replicas, rounded down so that the sum never
    exceeds it. 0 stays unlimited."""
    if max_connections == 0:
        return 0
    return max(1, math.floor(max_connections / max(1, replicas)))


def service_config(
    msvc: models.MailService,
    group_specs: Mapping[str, models.IPAddressGroupSpec],
    *,
    bind_addresses: bool,
    tls_dir: pathlib.Path | None = None,
    replicas: int | None = None,
) -> Rendered:
    """Render one MailService.

    bind_addresses: True on a host (`mailwarden listen`), where the listener binds the
    addresses itself; False in a pod, where the Service owns the address and the pod listens
    on every address of its own.
    replicas: the pods the service-wide cap is split over (default: spec.replicas; the
    listener's replica count when pods are shared).
    """
    spec = msvc.spec
    kind = spec.kind
    problems: list[str] = []
    allow: tuple[str, ...] | None = None
    resolution = None
    if spec.access.allow_from is not None:
        resolution = groups.resolve(spec.access.allow_from, group_specs)
        allow = resolution.cidrs
        if not resolution.ok:
            problems.append(resolution.describe())
            allow = ()  # fail closed
    if bind_addresses:
        endpoints = [lc.Endpoint(address=a, port=p) for a, p in spec.endpoints()]
    else:
        ports = sorted({p for _, p in spec.endpoints()})
        endpoints = [lc.Endpoint(address=None, port=p) for p in ports]
    tls = None
    if spec.tls is not None:
        base = tls_dir if tls_dir is not None else pathlib.Path(naming.TLS_DIR)
        tls = lc.TLSFiles(cert_file=base / "tls.crt", key_file=base / "tls.key")
    if replicas is None:
        replicas = 1 if bind_addresses else spec.replicas
    rate_limit = spec.access.rate_limit or models.RateLimit()
    auto_ban, exempt_resolution, exempt_problems = _auto_ban(spec.access.auto_ban, group_specs)
    cfg = lc.ServiceConfig(
        name=f"{msvc.metadata.namespace}/{msvc.metadata.name}",
        service=spec.service,
        listen=tuple(endpoints),
        allow=allow,
        max_connections=per_pod_cap(spec.access.max_connections, replicas),
        max_connections_per_address=spec.access.max_connections_per_address,
        anonymous=spec.access.anonymous,
        backend=lc.Backend(
            host=spec.backend.host,
            port=spec.backend.port or kind.port,
            proxy_protocol=_proxy_protocol(spec.backend.proxy_protocol),
            tls=lc.BackendTLS(
                enabled=spec.backend.tls.enabled,
                verify=not spec.backend.tls.insecure_skip_verify,
                server_name=spec.backend.tls.server_name,
            ),
        ),
        tls=tls,
        proxy_protocol_from=tuple(spec.proxy_protocol.trusted_cidrs),
        timeouts=lc.Timeouts(
            handshake=spec.timeouts.handshake_seconds, idle=spec.timeouts.idle_seconds
        ),
        hostname=msvc.metadata.name,
        rate_limit=lc.RateLimit(
            connections_per_minute=rate_limit.connections_per_minute,
            ipv6_prefix_length=rate_limit.ipv6_prefix_length,
        ),
        auto_ban=auto_ban,
    )
    return Rendered(cfg, tuple(problems), resolution, exempt_resolution, exempt_problems)


def _auto_ban(
    spec: models.AutoBan | None, group_specs: Mapping[str, models.IPAddressGroupSpec]
) -> tuple[lc.AutoBan | None, groups.Resolution | None, tuple[str, ...]]:
    """The auto-ban with its exempt group resolved to CIDRs, as allowFrom is. A group that
    cannot be resolved exempts nobody (failing open here would exempt an unknown set)."""
    if spec is None:
        return None, None, ()
    exempt: tuple[str, ...] = ()
    resolution = None
    problems: list[str] = []
    if spec.exempt_from is not None:
        resolution = groups.resolve(spec.exempt_from, group_specs)
        exempt = resolution.cidrs
        if not resolution.ok:
            problems.append(
                f"access.autoBan.exemptFrom: {resolution.describe()}; no address is exempt"
            )
            exempt = ()
    ban = lc.AutoBan(
        after_failures=spec.after_failures,
        within_seconds=spec.within_seconds,
        ban_seconds=spec.ban_seconds,
        exempt=exempt,
        ipv6_prefix_length=spec.ipv6_prefix_length,
    )
    return ban, resolution, tuple(problems)


def assemble(
    services: list[lc.ServiceConfig],
    *,
    drain_seconds: float = 30.0,
    metrics_port: int = naming.METRICS_PORT,
    lame_duck_seconds: float = 0.0,
) -> lc.ListenerConfig:
    """lame_duck_seconds: pods behind a load balancer keep accepting this long after
    SIGTERM while /readyz says 503 (0 on a host)."""
    return lc.ListenerConfig(
        services=tuple(services),
        drain_seconds=drain_seconds,
        metrics=lc.Metrics(port=metrics_port),
        lame_duck_seconds=lame_duck_seconds,
    )


def _proxy_protocol(value: str) -> lc.ProxyProtocol:
    """The CRD's spelling (None, V1, V2) as the listener's (none, v1, v2)."""
    for name in lc.PROXY_PROTOCOLS:
        if name == value.lower():
            return name
    raise ValueError(f"unknown PROXY protocol version {value!r}")
