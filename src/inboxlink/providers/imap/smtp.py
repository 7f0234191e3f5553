"""SMTP side of an IMAP account: checking it at pairing (sending arrives with the outbox)."""

from __future__ import annotations

import smtplib
import ssl

from inboxlink.auth.netguard import check_host, tls_client_context
from inboxlink.errors import HostRefused
from inboxlink.providers.imap.provider import ConnectOptions, ImapConfig


def check_smtp(config: ImapConfig, password: str, options: ConnectOptions) -> str | None:
    """Connect and log in to the account's SMTP server. Returns None when it works, else a one-line
    reason safe to show (no secret). A host the network guard refuses raises `HostRefused`."""
    if not config.smtp_host or not config.smtp_port:
        return "no SMTP server configured"
    host, port = config.smtp_host, config.smtp_port
    security = config.smtp_security or config.security
    # to the checked address; certificates checked against the name (netguard: DNS rebinding)
    address = check_host(host, port, allow_private=options.allow_private_hosts)[0]
    tls = tls_client_context(options.ca_file, host=host) if security != "none" else None
    try:
        smtp: smtplib.SMTP
        if security == "tls":
            smtp = smtplib.SMTP_SSL(address, port, timeout=options.timeout, context=tls)
        else:
            smtp = smtplib.SMTP(address, port, timeout=options.timeout)
        with smtp:
            smtp.ehlo()
            if security == "starttls":
                smtp.starttls(context=tls)
                smtp.ehlo()
            if smtp.has_extn("auth"):
                smtp.login(config.username, password)
        return None
    except HostRefused:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        return f"SMTP server {host}:{port} rejected the username or password ({exc.smtp_code})"
    except smtplib.SMTPNotSupportedError:
        return f"SMTP server {host}:{port} does not offer STARTTLS"
    except ssl.SSLCertVerificationError as exc:
        return f"the TLS certificate of {host}:{port} is not trusted: {exc.verify_message}"
    except (OSError, smtplib.SMTPException) as exc:
        return f"cannot reach SMTP server {host}:{port}: {exc.__class__.__name__}: {str(exc)[:200]}"
