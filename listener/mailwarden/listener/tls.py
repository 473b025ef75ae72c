"""TLS contexts: the listener's own (implicit TLS, and STARTTLS where it reads commands) and
the one it uses towards a TLS backend."""

from __future__ import annotations

import ssl

from mailwarden.listener import config


def server_context(files: config.TLSFiles) -> ssl.SSLContext:
    """A server context from PEM files; raises ssl.SSLError/OSError for a broken pair."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.cert_file), str(files.key_file))
    # Session tickets would outlive a certificate rotation; stateless resumption gains
    # little for mail clients that keep their connections.
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def backend_context(tls: config.BackendTLS) -> ssl.SSLContext | None:
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
