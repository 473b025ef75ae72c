"""The listener's Prometheus metrics, one registry per listener process (or per test)."""

from __future__ import annotations

from mailwarden.listener import figures
from mailwarden.listener import promtext as prom

# Outcomes of a connection attempt; one label value each on connections_total.
ACCEPTED = "accepted"
DENIED = "denied"
OVER_CAP = "over_cap"
OVER_ADDRESS_CAP = "over_address_cap"
BACKEND_ERROR = "backend_error"
PROXY_ERROR = "proxy_error"
HANDSHAKE_FAILED = "handshake_failed"
# Refused by the abuse defence: over the per-address rate limit, or banned.
RATE_LIMITED = "rate_limited"
BANNED = "banned"
OUTCOMES = (
    ACCEPTED,
    DENIED,
    OVER_CAP,
    OVER_ADDRESS_CAP,
    BACKEND_ERROR,
    PROXY_ERROR,
    HANDSHAKE_FAILED,
    RATE_LIMITED,
    BANNED,
)

# Session durations from a quick refused probe to a long IMAP IDLE.
DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 1800, 3600, 14400)


class Metrics:
    def __init__(self, registry: prom.CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        r = self.registry
        self.active = prom.Gauge(
            "mailwarden_connections_active",
            "Sessions currently relayed to the backend.",
            ["service"],
            registry=r,
        )
        self.connections = prom.Counter(
            "mailwarden_connections",
            "Connection attempts by outcome.",
            ["service", "outcome"],
            registry=r,
        )
        self.bytes = prom.Counter(
            "mailwarden_relayed_bytes",
            "Bytes relayed, by direction (upstream: client to backend).",
            ["service", "direction"],
            registry=r,
        )
        self.duration = prom.Histogram(
            "mailwarden_session_duration_seconds",
            "Duration of relayed sessions.",
            ["service"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.nntp_auth = prom.Counter(
            "mailwarden_nntp_auth",
            "NNTP AUTHINFO results seen by the reader gate.",
            ["service", "result"],
            registry=r,
        )
        self.login_failures = prom.Counter(
            "mailwarden_login_failures",
            "Failed logins the listener saw (SMTP AUTH, IMAP, POP3 in plaintext it reads; "
            "NNTP AUTHINFO at its gate).",
            ["service"],
            registry=r,
        )
        self.bans = prom.Counter(
            "mailwarden_bans",
            "Addresses (IPv6: networks) banned after repeated failures.",
            ["service"],
            registry=r,
        )
        self.banned = prom.Gauge(
            "mailwarden_banned_addresses",
            "Addresses (IPv6: networks) banned now.",
            ["service"],
            registry=r,
        )
        self.cap = prom.Gauge(
            "mailwarden_connection_cap",
            "The connection cap this listener enforces for a service (0 = unlimited).",
            ["service", "scope"],
            registry=r,
        )
        self.reloads = prom.Counter(
            "mailwarden_config_reloads",
            "Configuration reloads by result.",
            ["result"],
            registry=r,
        )
        self.last_reload = prom.Gauge(
            "mailwarden_config_last_success_timestamp_seconds",
            "When the configuration in force was loaded.",
            registry=r,
        )
        self.tls_reloads = prom.Counter(
            "mailwarden_tls_reloads",
            "Certificate reloads by result.",
            ["service", "result"],
            registry=r,
        )
        self.draining = prom.Gauge(
            "mailwarden_draining",
            "1 while the listener drains sessions before exiting.",
            registry=r,
        )
        self.metrics_port_closed = prom.Counter(
            "mailwarden_metrics_port_closed",
            "Connections to the metrics and health port closed by its limits, by reason.",
            ["reason"],
            registry=r,
        )
        self.open_files_limit = prom.Gauge(
            "mailwarden_open_files_limit",
            "The process's RLIMIT_NOFILE (soft: in force, raised to hard at start).",
            ["limit"],
            registry=r,
        )
        self.open_files = prom.Gauge(
            "mailwarden_open_files",
            "File descriptors the process holds now (compare with mailwarden_open_files_limit).",
            registry=r,
        )
        self.fd_shortages = prom.Counter(
            "mailwarden_fd_shortages",
            "Times accepting stopped because file descriptors ran short (new clients wait "
            "in the kernel's backlog until enough are free).",
            registry=r,
        )
        self.accept_paused = prom.Gauge(
            "mailwarden_accept_paused",
            "1 while accepting is stopped because file descriptors run short.",
            registry=r,
        )

    def exposition(self) -> tuple[int, bytes, str]:
        """GET /metrics: the text format, for the health server's route table."""
        return 200, prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST

    def for_service(self, name: str) -> ServiceMetrics:
        return ServiceMetrics(self, name)

    def forget(self, name: str) -> None:
        """A removed service's series go with it."""
        for metric, values in (
            (self.active, [()]),
            (self.connections, [(o,) for o in OUTCOMES]),
            (self.bytes, [("upstream",), ("downstream",)]),
            (self.duration, [()]),
            (self.nntp_auth, [("success",), ("failure",)]),
            (self.login_failures, [()]),
            (self.bans, [()]),
            (self.banned, [()]),
            (self.cap, [("service",), ("address",)]),
            (self.tls_reloads, [("success",), ("failure",)]),
        ):
            for extra in values:
                try:
                    metric.remove(name, *extra)
                except KeyError:
                    pass


class ServiceMetrics:
    """Label children bound once per service: the hot path never looks labels up."""

    __slots__ = (
        "active",
        "banned",
        "bans",
        "bytes_down",
        "bytes_up",
        "duration",
        "login_failures",
        "nntp_auth",
        "outcome",
        "parent",
        "tls_reload",
        "window",
    )

    def __init__(self, m: Metrics, name: str) -> None:
        self.parent = m
        self.active = m.active.labels(name)
        # Refusals also feed the five-minute window of /status (figures.py): the session
        # code's `outcome[...].inc()` does both.
        self.window = figures.RefusalWindow()
        self.outcome: dict[str, figures.Counter] = {}
        for o in OUTCOMES:
            counter = m.connections.labels(name, o)
            self.outcome[o] = (
                figures.Counted(counter, self.window, o) if o in figures.STATUS_NAMES else counter
            )
        self.bytes_up = m.bytes.labels(name, "upstream")
        self.bytes_down = m.bytes.labels(name, "downstream")
        self.duration = m.duration.labels(name)
        self.nntp_auth = {r: m.nntp_auth.labels(name, r) for r in ("success", "failure")}
        self.tls_reload = {r: m.tls_reloads.labels(name, r) for r in ("success", "failure")}
        self.login_failures = m.login_failures.labels(name)
        self.bans = m.bans.labels(name)
        self.banned = m.banned.labels(name)
