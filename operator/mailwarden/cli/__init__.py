"""The `mailwarden` command: listen (no cluster), render, operator, listener (in a pod)."""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

from mailwarden.listener import config as lc


def _manifest_arguments(p: argparse.ArgumentParser) -> None:
    """-f and -n, as kubectl spells them: `listen` and `render` read the same manifests."""
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        type=pathlib.Path,
        help="manifest file or folder (repeatable)",
    )
    p.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="namespace for manifests that name none (default: default)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mailwarden",
        description="Mail services on Kubernetes: access rules, caps, protocol-correct refusals.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "listen", help="run the listeners of MailService manifests on this host (no cluster)"
    )
    _manifest_arguments(p)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=lc.METRICS_PORT,
        help=f"port of /metrics, /healthz, /readyz (default: {lc.METRICS_PORT})",
    )
    p.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        help="address of the metrics port (default: 127.0.0.1)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=5.0,
        help="on Ctrl-C/SIGTERM, let sessions finish this long (default: 5)",
    )
    p.add_argument(
        "--lame-duck-seconds",
        type=float,
        default=0.0,
        help="on Ctrl-C/SIGTERM, first answer /readyz 503 and keep accepting this long, for a"
        " load balancer that watches it (default: 0, stop accepting at once)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the rendered listener configuration and exit",
    )

    p = sub.add_parser("render", help="print the Kubernetes objects the operator would create")
    _manifest_arguments(p)

    p = sub.add_parser("operator", help="run the operator against the current kube context")
    p.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="watch only this namespace (repeatable); default: all",
    )
    p.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL (default: http://0.0.0.0:8080/healthz)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9091,
        help="port of the operator's /metrics (default: 9091)",
    )

    p = sub.add_parser("listener", help="run a listener from its configuration file (in a pod)")
    p.add_argument("--config", required=True, type=pathlib.Path, help="listener configuration")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "listener":
        from mailwarden.listener import cli as listener_cli

        return listener_cli.command(args.config, prog="mailwarden listener")
    if args.command == "listen":
        from mailwarden.cli import listen

        return listen.command(args)
    if args.command == "render":
        from mailwarden.cli import render

        return render.command(args)
    from mailwarden.cli import operator

    return operator.command(args)


if __name__ == "__main__":
    sys.exit(main())
