"""Sending for IMAP accounts: SMTP (aiosmtplib) for delivery, then IMAP APPEND of the same bytes
to the Sent folder so every client (and our next sync) sees the copy.

The SMTP transaction is driven step by step (EHLO, STARTTLS, AUTH, MAIL, RCPT) so that the
outbox is told (`OutgoingMessage.on_commit`) right before DATA: a crash before that point sent
nothing (a server discards a transaction that never reached the final "."), a crash after it may
have sent, and the outbox will not send blindly again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiosmtplib

from inboxlink.auth.netguard import check_host, tls_client_context
from inboxlink.domain import OutgoingMessage
from inboxlink.errors import (
    AuthError,
    MessageTooLarge,
    ProviderError,
    RecipientsRejected,
    SendRejected,
    TransientError,
    ValidationError,
)
from inboxlink.providers.imap.provider import ConnectOptions, ImapConfig


def _rejection(code: int, text: str, where: str) -> ProviderError:
    if code == 552 or "size" in text.lower():
        return MessageTooLarge(f"{where} refused the message as too large ({code} {text})")
    if 400 <= code < 500:
        return TransientError(f"{where} deferred the message ({code} {text})")
    return SendRejected(f"{where} refused the message ({code} {text})")


async def _login_once(smtp: aiosmtplib.SMTP, username: str, password: str) -> None:
    """One login attempt with one mechanism. aiosmtplib's `login()` tries every advertised
    mechanism in turn: with a changed password that is several failed logins per send, which
    directory servers count towards locking the user out."""
    methods = smtp.supported_auth_methods
    if "plain" in methods:
        await smtp.auth_plain(username, password)
    elif "login" in methods:
        await smtp.auth_login(username, password)
    else:
        await smtp.login(username, password)


async def _send(config: ImapConfig, password: str, options: ConnectOptions, message: OutgoingMessage) -> None:
    host, port = config.smtp_host, config.smtp_port
    if not host or not port:
        raise ValidationError("this account has no SMTP server: add one by pairing again")
    where = f"SMTP server {host}:{port}"
    security = config.smtp_security or config.security
    # to the checked address; certificates checked against the name (netguard: DNS rebinding)
    address = check_host(host, port, allow_private=options.allow_private_hosts)[0]
    smtp = aiosmtplib.SMTP(
        hostname=address,
        port=port,
        use_tls=security == "tls",
        start_tls=False,
        tls_context=tls_client_context(options.ca_file, host=host) if security != "none" else None,
        timeout=options.timeout,
    )
    try:
        await smtp.connect()
    except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        raise TransientError(f"cannot reach {where}: {exc}") from exc
    try:
        # EHLO explicitly: aiosmtplib leaves it to the first command otherwise, and the extensions
        # (SIZE, AUTH) must be known before we decide to log in or to refuse an oversize message.
        await smtp.ehlo()
        if security == "starttls":
            await smtp.starttls()
            await smtp.ehlo()
        if smtp.supports_extension("size"):
            limit = int(smtp.esmtp_extensions.get("size") or 0)
            if limit and len(message.mime) > limit:
                raise MessageTooLarge(
                    f"the message is {len(message.mime)} bytes; {where} accepts at most {limit}", limit=limit
                )
        if smtp.supports_extension("auth"):
            try:
                await _login_once(smtp, config.username, password)
            except aiosmtplib.SMTPAuthenticationError as exc:
                raise AuthError(f"{where} rejected the username or password ({exc.code})") from exc
        try:
            await smtp.mail(message.sender)
        except aiosmtplib.SMTPSenderRefused as exc:
            raise SendRejected(
                f"{where} refused the sender {message.sender} ({exc.code} {exc.message})"
            ) from exc
        rejected: dict[str, str] = {}
        for rcpt in message.recipients:
            try:
                await smtp.rcpt(rcpt)
            except aiosmtplib.SMTPRecipientRefused as exc:
                rejected[rcpt] = f"{exc.code} {exc.message}"
        if rejected:
            # Nothing is sent when any recipient is refused: the user fixes the draft and sends
            # once, rather than some recipients getting it now and the rest again later. Refusals
            # that are all temporary (4xx: greylisting, a full mailbox, a busy server) are retried
            # later as a whole; one permanent refusal (5xx) needs the user.
            await smtp.rset()
            names = ", ".join(f"{k} ({v})" for k, v in rejected.items())
            if all(v.startswith("4") for v in rejected.values()):
                raise TransientError(f"{where} deferred these recipients: {names}")
            raise RecipientsRejected(f"{where} refused these recipients: {names}", rejected=rejected)
        if message.on_commit is not None:
            message.on_commit()
        try:
            await smtp.data(message.mime)
        except aiosmtplib.SMTPDataError as exc:
            raise _rejection(exc.code, exc.message, where) from exc
    except aiosmtplib.SMTPServerDisconnected as exc:
        raise TransientError(f"{where} closed the connection: {exc}") from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise _rejection(exc.code, exc.message, where) from exc
    finally:
        if smtp.is_connected:
            try:
                await smtp.quit()
            except aiosmtplib.SMTPException:
                smtp.close()


def smtp_send(config: ImapConfig, password: str, options: ConnectOptions, message: OutgoingMessage) -> None:
    """Deliver through the account's SMTP server. Runs its own event loop: callers are threads."""
    asyncio.run(_send(config, password, options, message))


SendFunction = Callable[[ImapConfig, str, ConnectOptions, OutgoingMessage], None]
