"""The refusal lines every test expects, byte for byte, in one table (aiosmtpd's habit:
reply codes asserted by name from one table). Written from the RFCs the README's table
cites, not read from the listener's own reply tables, so that a changed reply shows up here,
once, instead of in a dozen literals.

`{host}` is the service's hostname as the listener greets with it (the MailService's name;
`mailwarden` by default in tests/support/listener.py)."""

from __future__ import annotations

# (wire, outcome) -> the line the listener sends.
LINES: dict[tuple[str, str], bytes] = {
    # SMTP, SMTPS, Submission: RFC 5321 §3.1 (554 greeting, 503 to all but QUIT), §4.2.3;
    # enhanced codes RFC 3463.
    ("smtp", "denied"): (
        b"554 5.7.1 {host} Access denied: your address is not allowed to use this service\r\n"
    ),
    ("smtp", "over_cap"): b"421 4.7.0 {host} Error: too many connections, try again later\r\n",
    ("smtp", "backend_down"): (
        b"421 4.4.1 {host} Service temporarily unavailable, try again later\r\n"
    ),
    ("smtp", "bad_sequence"): b"503 5.5.1 Error: access denied, only QUIT is accepted\r\n",
    ("smtp", "bye"): b"221 2.0.0 Bye\r\n",
    ("smtp", "too_many_errors"): b"421 4.7.0 {host} Error: too many errors\r\n",
    ("smtp", "rate_limited"): (
        b"421 4.7.0 {host} Error: rate limited: too many connections from your address"
    ),
    ("smtp", "banned"): b"421 4.7.0 {host} Error: banned: too many failures from your address",
    # POP3: RFC 2449 response codes, RFC 3206 SYS/TEMP and SYS/PERM.
    ("pop3", "denied"): (
        b"-ERR [SYS/PERM] Access denied: your address is not allowed to use this service\r\n"
    ),
    ("pop3", "over_cap"): b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
    ("pop3", "backend_down"): (
        b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n"
    ),
    ("pop3", "banned"): (
        b"-ERR [SYS/TEMP] Banned: too many failures from your address, try again later\r\n"
    ),
    # IMAP: RFC 9051 §7.1.5 BYE greeting, RFC 5530 UNAVAILABLE.
    ("imap", "denied"): b"* BYE Access denied: your address is not allowed to use this service\r\n",
    ("imap", "over_cap"): b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
    ("imap", "backend_down"): (
        b"* BYE [UNAVAILABLE] Service temporarily unavailable, try again later\r\n"
    ),
    ("imap", "banned"): (
        b"* BYE [UNAVAILABLE] Banned: too many failures from your address, try again later\r\n"
    ),
    # NNTP: RFC 3977 §5.1.1 (400, 502); RFC 4643 §2.1 (480).
    ("nntp", "denied"): b"502 Access denied: your address is not allowed to use this service\r\n",
    ("nntp", "over_cap"): b"400 Too many connections, try again later\r\n",
    ("nntp", "backend_down"): b"400 Service temporarily unavailable, try again later\r\n",
    ("nntp", "auth_required"): b"480 Authentication required\r\n",
    ("nntp", "banned"): b"400 Banned: too many failures from your address, try again later\r\n",
}


def line(wire: str, outcome: str, host: str = "mailwarden") -> bytes:
    """The refusal `wire` sends for `outcome`, for a service greeting as `host`."""
    return LINES[(wire, outcome)].replace(b"{host}", host.encode())
