"""Noticing that mounted files changed. Kubernetes updates ConfigMap and Secret volumes by
swapping a symlink, so the content the paths lead to is compared, not inotify events or
mtimes.

Bounded: a file larger than `config.MAX_BYTES` is not read, its stat stands for it, so a huge
file costs one stat per poll, not a hash of all its bytes every second. Running out of file
descriptors (or memory) is not a change: `fingerprint` raises `config.ConfigUnreadable` and
the caller looks again at its next poll."""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Iterable

from mailwarden.listener import config

# Read at most this much of a file to compare its content.
MAX_READ = config.MAX_BYTES


def fingerprint(paths: Iterable[pathlib.Path]) -> bytes:
    h = hashlib.sha256()
    for path in sorted(set(paths)):
        h.update(str(path).encode() + b"\0")
        try:
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        except OSError as exc:
            _raise_if_exhausted(exc)
            files = [path]
        for f in files:
            h.update(_file_print(f))
            h.update(b"\0")
    return h.digest()


def _file_print(path: pathlib.Path) -> bytes:
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size > MAX_READ:
                # Too large to be a configuration (it will be refused unread): which file it
                # is and when it changed stand for its content.
                return f"large:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
            return hashlib.sha256(f.read(MAX_READ + 1)).digest()
    except OSError as exc:
        _raise_if_exhausted(exc)
        return b"\0missing"


def _raise_if_exhausted(exc: OSError) -> None:
    if exc.errno in config.EXHAUSTED:
        raise config.ConfigUnreadable(exc.errno, f"{exc.filename}: {exc.strerror}") from None
