"""The services catalogue: what each mail service speaks, on which port, and how TLS starts.

This is the listener's own knowledge; the operator's resource models reuse it.
"""

from __future__ import annotations

import dataclasses
import enum


class Wire(enum.StrEnum):
    """The protocol family a service speaks on the wire; refusals are worded per family."""

    SMTP = "smtp"
    POP3 = "pop3"
    IMAP = "imap"
    NNTP = "nntp"
    LDAP = "ldap"
    HTTP = "http"
    XMPP = "xmpp"


class TLSMode(enum.StrEnum):
    NONE = "none"  # plain only (HTTP)
    STARTTLS = "starttls"  # plain first; the client may upgrade in-band
    IMPLICIT = "implicit"  # TLS from the first byte


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceKind:
    name: str
    wire: Wire
    port: int
    tls: TLSMode
    # Only NNTP has a notion of anonymous access (INN readers.conf); elsewhere the schema
    # refuses it.
    anonymous_allowed: bool = False


_KINDS = (
    ServiceKind("SMTP", Wire.SMTP, 25, TLSMode.STARTTLS),
    ServiceKind("SMTPS", Wire.SMTP, 465, TLSMode.IMPLICIT),
    ServiceKind("Submission", Wire.SMTP, 587, TLSMode.STARTTLS),
    ServiceKind("POP3", Wire.POP3, 110, TLSMode.STARTTLS),
    ServiceKind("POP3S", Wire.POP3, 995, TLSMode.IMPLICIT),
    ServiceKind("IMAP", Wire.IMAP, 143, TLSMode.STARTTLS),
    ServiceKind("IMAPS", Wire.IMAP, 993, TLSMode.IMPLICIT),
    ServiceKind("NNTP", Wire.NNTP, 119, TLSMode.STARTTLS, anonymous_allowed=True),
    ServiceKind("NNTPS", Wire.NNTP, 563, TLSMode.IMPLICIT, anonymous_allowed=True),
    ServiceKind("LDAP", Wire.LDAP, 389, TLSMode.STARTTLS),
    ServiceKind("LDAPS", Wire.LDAP, 636, TLSMode.IMPLICIT),
    ServiceKind("HTTP", Wire.HTTP, 80, TLSMode.NONE),
    ServiceKind("HTTPS", Wire.HTTP, 443, TLSMode.IMPLICIT),
    ServiceKind("XMPP", Wire.XMPP, 5222, TLSMode.STARTTLS),
    ServiceKind("XMPPS", Wire.XMPP, 5223, TLSMode.IMPLICIT),
)

CATALOGUE: dict[str, ServiceKind] = {k.name: k for k in _KINDS}
SERVICE_NAMES: tuple[str, ...] = tuple(CATALOGUE)
ANONYMOUS_SERVICES: tuple[str, ...] = tuple(k.name for k in _KINDS if k.anonymous_allowed)


def kind_of(service: str) -> ServiceKind:
    try:
        return CATALOGUE[service]
    except KeyError:
        raise ValueError(
            f"unknown service {service!r}; expected one of {', '.join(SERVICE_NAMES)}"
        ) from None
