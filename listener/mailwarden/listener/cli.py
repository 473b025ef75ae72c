"""`mailwarden-listener --config FILE`: what a listener pod runs (also `python -m
mailwarden.listener`, and `mailwarden listener` in the full command). It lives in the listener
package so that the listener image carries the listener and nothing of the operator
(docs/decisions/0002-listener-entry-point.md)."""

from __future__ import annotations

import logging
import pathlib
import sys

from mailwarden.listener import config, kubesource
from mailwarden.listener import main as listener_main


def command(path: pathlib.Path, *, prog: str = "mailwarden-listener") -> int:
    """Run the listener from its configuration file until it is told to stop. A file that
    does not load is refused before anything binds: exit status 2 and a message naming it."""
    try:
        config.load(path)
    except config.ConfigError as exc:
        print(f"{prog}: {path}: {exc}", file=sys.stderr)
        return 2
    except config.ConfigUnreadable as exc:
        # Out of descriptors or memory: the file may be fine; not "a bad setting".
        print(f"{prog}: cannot read the configuration: {exc}", file=sys.stderr)
        return 1
    # In a pod set up for it, the ConfigMap is followed through the API (kubesource).
    api = kubesource.from_environment(path)
    if api is not None:
        return listener_main.run(api.start())
    return listener_main.run(listener_main.FileSource(path))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    found = _plain(args)
    if found is None:
        # Help, or arguments that need argparse's messages (exit 2 for a bad one).
        found = _parse(args)
    path, verbose = found
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return command(path)


def _plain(args: list[str]) -> tuple[pathlib.Path, bool] | None:
    """What a pod runs (`--config FILE`, maybe `-v`), read without argparse: argparse and the
    gettext it imports cost a listener process about 0.5 MiB of RSS for its whole life
    (docs/decisions/0001-listener-pod-footprint.md). Anything else: None."""
    rest = [a for a in args if a not in ("-v", "--verbose")]
    if len(rest) == 2 and rest[0] == "--config" and rest[1] and not rest[1].startswith("-"):
        return pathlib.Path(rest[1]), len(rest) != len(args)
    if len(rest) == 1 and rest[0].startswith("--config=") and len(rest[0]) > len("--config="):
        return pathlib.Path(rest[0].removeprefix("--config=")), len(rest) != len(args)
    return None


def _parse(args: list[str]) -> tuple[pathlib.Path, bool]:
    import argparse

    parser = argparse.ArgumentParser(
        prog="mailwarden-listener",
        description="Run a mailwarden listener from its rendered configuration file.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--config", required=True, type=pathlib.Path, help="configuration file")
    parsed = parser.parse_args(args)
    return parsed.config, bool(parsed.verbose)
