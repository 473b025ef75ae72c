"""Noticing that mounted files changed. Kubernetes updates ConfigMap and Secret volumes by
swapping a symlink, so the content is compared, not inotify events or mtimes."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterable


def fingerprint(paths: Iterable[pathlib.Path]) -> bytes:
    h = hashlib.sha256()
    for path in sorted(set(paths)):
        h.update(str(path).encode() + b"\0")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            try:
                h.update(f.read_bytes())
            except OSError:
                h.update(b"\0missing")
            h.update(b"\0")
    return h.digest()
