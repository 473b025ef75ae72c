"""One module per protocol family, each with the replies its RFCs prescribe."""

from __future__ import annotations

from collections.abc import Callable

from mailwarden.listener.catalogue import Wire
from mailwarden.listener.protocols import (
    authwatch,
    base,
    http,
    imap,
    ldap,
    nntp,
    pop3,
    smtp,
    xmpp,
)

_REPLIES: dict[Wire, base.Replies] = {
    Wire.SMTP: smtp.REPLIES,
    Wire.POP3: pop3.REPLIES,
    Wire.IMAP: imap.REPLIES,
    Wire.NNTP: nntp.REPLIES,
    Wire.LDAP: ldap.REPLIES,
    Wire.HTTP: http.REPLIES,
    Wire.XMPP: xmpp.REPLIES,
}


def replies_for(wire: Wire) -> base.Replies:
    try:
        return _REPLIES[wire]
    except KeyError:
        raise NotImplementedError(f"the listener does not speak {wire} yet") from None


# Login watchers for the protocols whose failed logins the listener reads in a relayed
# session (NNTP's are seen by its reader gate instead).
_AUTH_WATCHES: dict[Wire, Callable[[], authwatch.LineWatch]] = {
    Wire.SMTP: smtp.AuthWatch,
    Wire.POP3: pop3.AuthWatch,
    Wire.IMAP: imap.AuthWatch,
}


def auth_watch_for(wire: Wire) -> Callable[[], authwatch.LineWatch] | None:
    return _AUTH_WATCHES.get(wire)
