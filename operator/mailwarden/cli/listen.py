"""`mailwarden listen -f PATH...`: the listeners of MailService manifests, on this host."""

from __future__ import annotations

import argparse
import pathlib
import sys

from mailwarden.listener import config as lc
from mailwarden.listener import main as listener_main
from mailwarden.operator import listener_config, manifests, models


class ManifestSource:
    """Renders the manifests again whenever they change, as the operator would."""

    def __init__(
        self,
        paths: list[pathlib.Path],
        namespace: str = "default",
        *,
        metrics_port: int = lc.METRICS_PORT,
        metrics_address: str | None = "127.0.0.1",
        drain_seconds: float = 5.0,
        lame_duck_seconds: float = 0.0,
    ) -> None:
        self._paths = paths
        self.namespace = namespace
        self.metrics_port = metrics_port
        self.metrics_address = metrics_address
        self.drain_seconds = drain_seconds
        self.lame_duck_seconds = lame_duck_seconds
        self.warnings: list[str] = []

    def paths(self) -> list[pathlib.Path]:
        return list(self._paths)

    def load(self) -> lc.ListenerConfig:
        try:
            found = manifests.load(self._paths, self.namespace)
        except manifests.ManifestError as exc:
            raise lc.ConfigError(str(exc)) from None
        except OSError as exc:
            # Out of file descriptors (or memory) is not a broken manifest: read them again
            # at the next poll.
            if exc.errno in lc.EXHAUSTED:
                raise lc.ConfigUnreadable(exc.errno, f"{exc.filename}: {exc.strerror}") from None
            raise lc.ConfigError(f"{exc.filename}: {exc.strerror}") from None
        services = []
        self.warnings = []
        for msvc in found.services:
            name = f"{msvc.metadata.namespace}/{msvc.metadata.name}"
            if not models.wants_running(msvc):
                self.warnings.append(f"{name}: stopped (startup Manual); not listening")
                continue
            rendered = listener_config.service_config(
                msvc,
                found.group_specs(msvc.metadata.namespace),
                bind_addresses=True,
                tls_dir=_tls_dir(msvc, self._paths),
            )
            for problem in rendered.problems:
                self.warnings.append(f"{name}: {problem}; refusing every client")
            for problem in rendered.exempt_problems:
                self.warnings.append(f"{name}: {problem}")
            services.append(rendered.service)
        try:
            # Built from data, so the command line's values are checked as a file's are.
            return lc.build(
                lc.ListenerConfig,
                {
                    "services": services,
                    "drain_seconds": self.drain_seconds,
                    "lame_duck_seconds": self.lame_duck_seconds,
                    "metrics": {"address": self.metrics_address, "port": self.metrics_port},
                },
            )
        except ValueError as exc:
            raise lc.ConfigError(str(exc)) from None


def _tls_dir(msvc: models.MailService, paths: list[pathlib.Path]) -> pathlib.Path | None:
    """On a host, a TLS Secret named in the manifest is looked for as a folder of that name
    (holding tls.crt and tls.key) beside the manifests."""
    if msvc.spec.tls is None:
        return None
    for path in paths:
        base = path if path.is_dir() else path.parent
        candidate = base / msvc.spec.tls.secret_name
        if candidate.is_dir():
            return candidate
    return pathlib.Path(msvc.spec.tls.secret_name)


def command(args: argparse.Namespace) -> int:
    source = ManifestSource(
        args.filename,
        args.namespace,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        drain_seconds=args.drain_seconds,
        lame_duck_seconds=args.lame_duck_seconds,
    )
    try:
        cfg = source.load()
    except lc.ConfigError as exc:
        print(f"mailwarden listen: {exc}", file=sys.stderr)
        return 2
    for warning in source.warnings:
        print(f"mailwarden listen: {warning}", file=sys.stderr)
    if args.print_config:
        print(lc.dumps(cfg), end="")
        return 0
    if not cfg.services:
        print("mailwarden listen: no running MailService in the manifests", file=sys.stderr)
        return 2
    return listener_main.run(source)
