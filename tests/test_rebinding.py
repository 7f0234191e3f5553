"""Connections go to the address the network guard checked, never to a second lookup of the name
(DNS rebinding), and TLS certificates are still checked against the name the user gave.

A patched resolver answers a `.inboxlink.test` name with the server's address the first time and
with 127.0.0.2, where nothing listens, ever after: a client that resolves again fails."""

from __future__ import annotations

import dataclasses
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from inboxlink.domain import OutgoingMessage
from inboxlink.errors import TransientError
from inboxlink.providers.imap.outgoing import smtp_send
from inboxlink.providers.imap.provider import ConnectOptions, ImapConfig, ImapProvider
from inboxlink.providers.imap.smtp import check_smtp
from inboxlink.testing.dovecot import TEST_HOST_NAME, Dovecot, MailUser

OTHER_NAME = "elsewhere.inboxlink.test"  # resolves to the server too, but is not in its certificate
SMTP_NAME = "smtp.inboxlink.test"
SEND_NAME = "send.inboxlink.test"


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Resolve `.inboxlink.test` names to 127.0.0.1 once, then to 127.0.0.2; count the lookups."""
    real = socket.getaddrinfo
    seen: Counter[str] = Counter()

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".inboxlink.test"):
            seen[host] += 1
            host = "127.0.0.1" if seen[host] == 1 else "127.0.0.2"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return seen


def provider(dovecot: Dovecot, user: MailUser, host: str, security: str) -> ImapProvider:
    config = ImapConfig(
        email=user.email,
        imap_host=host,
        imap_port=user.imaps_port if security == "tls" else user.port,
        username=user.email,
        security=security,  # type: ignore[arg-type]
    )
    options = ConnectOptions(allow_private_hosts=True, timeout=10, ca_file=str(dovecot.ca_cert_path))
    return ImapProvider(config, user.password, options)


@pytest.mark.parametrize("security", ["tls", "starttls", "none"])
def test_imap_connects_to_the_checked_address(
    dovecot: Dovecot, mail_user: MailUser, lookups: Counter[str], security: str
) -> None:
    p = provider(dovecot, mail_user, TEST_HOST_NAME, security)
    try:
        identity, _caps = p.verify()
    finally:
        p.close()
    assert identity.email == mail_user.email
    assert lookups[TEST_HOST_NAME] == 1, "the name was resolved once, by the guard"


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_the_certificate_is_checked_against_the_name(
    dovecot: Dovecot, mail_user: MailUser, lookups: Counter[str], security: str
) -> None:
    """The certificate holds 127.0.0.1 (the address connected to) but not this name: refused."""
    p = provider(dovecot, mail_user, OTHER_NAME, security)
    try:
        with pytest.raises(TransientError, match=r"certificate .* is not trusted"):
            p.verify()
    finally:
        p.close()


@pytest.fixture
def smtp_port() -> Iterator[int]:
    with socket.socket() as s:  # aiosmtpd's Controller needs a real port to check it started
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Sink:
        async def handle_DATA(self, _server: object, _session: object, _envelope: object) -> str:
            return "250 OK"

    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def test_smtp_connects_to_the_checked_address(smtp_port: int, lookups: Counter[str]) -> None:
    config = ImapConfig(
        email="ana@example.com",
        imap_host="127.0.0.1",
        imap_port=1,
        username="ana@example.com",
        security="none",
        smtp_host=SMTP_NAME,
        smtp_port=smtp_port,
    )
    options = ConnectOptions(allow_private_hosts=True, timeout=10)
    assert check_smtp(config, "pw", options) is None
    assert lookups[SMTP_NAME] == 1, "the name was resolved once, by the guard"
    config = dataclasses.replace(config, smtp_host=SEND_NAME)
    mime = b"From: ana@example.com\r\nTo: bo@example.com\r\nSubject: hi\r\nMessage-ID: <r@x>\r\n\r\nhello\r\n"
    smtp_send(config, "pw", options, OutgoingMessage(mime, "ana@example.com", ("bo@example.com",), "r@x"))
    assert lookups[SEND_NAME] == 1
