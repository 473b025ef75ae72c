"""`mailwarden render -f PATH...`: the objects the operator would create."""

from __future__ import annotations

import argparse
import sys


def command(args: argparse.Namespace) -> int:
    print("mailwarden render: not implemented yet", file=sys.stderr)
    return 2
