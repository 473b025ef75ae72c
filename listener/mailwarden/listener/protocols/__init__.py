"""One module per protocol family, each with the replies its RFCs prescribe (and, where the
listener reads the protocol before relaying it, a gate).

The module of a family is the one named after its catalogue wire name, so adding a protocol
touches the catalogue, one module here and the resource models' service list, not this file
(see `base` for what a module exports). Every module is imported when this package is: a
wire without its module fails at start, not at the first connection."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import cast

from mailwarden.listener.catalogue import Wire
from mailwarden.listener.protocols import authwatch, base


def _load(wire: Wire) -> ModuleType:
    name = f"{__name__}.{wire.value}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise  # the module exists and one of its own imports is missing
        raise NotImplementedError(f"the listener does not speak {wire} yet: no {name}") from None
    if not hasattr(module, "REPLIES"):
        raise NotImplementedError(f"{name} has no REPLIES")
    return module


_MODULES: dict[Wire, ModuleType] = {wire: _load(wire) for wire in Wire}


def replies_for(wire: Wire) -> base.Replies:
    return cast(base.Replies, _MODULES[wire].REPLIES)


def gate_for(
    wire: Wire, *, anonymous: bool, starttls: bool, tls_active: bool
) -> base.GateFactory | None:
    """The gate a service of this protocol puts between client and backend, or None.

    `anonymous`: the service lets clients in without authentication; `starttls`: the gate
    may offer STARTTLS itself (the listener holds a certificate and the service is not
    implicit TLS); `tls_active`: the client's leg is TLS from the first byte."""
    make = getattr(_MODULES[wire], "gate", None)
    if make is None:
        return None
    return cast(
        "base.GateFactory | None",
        make(anonymous=anonymous, starttls=starttls, tls_active=tls_active),
    )


def auth_watch_for(wire: Wire) -> Callable[[], authwatch.LineWatch] | None:
    """The login watcher of a protocol (its module's `AuthWatch`), or None: for protocols
    whose failed logins the listener does not read in a relayed session (NNTP's are seen
    by its reader gate instead)."""
    return cast(
        "Callable[[], authwatch.LineWatch] | None", getattr(_MODULES[wire], "AuthWatch", None)
    )
