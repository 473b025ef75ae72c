"""`mailwarden operator`: the kopf operator against the current kube context."""

from __future__ import annotations

import argparse
import sys


def command(args: argparse.Namespace) -> int:
    print("mailwarden operator: not implemented yet", file=sys.stderr)
    return 2
