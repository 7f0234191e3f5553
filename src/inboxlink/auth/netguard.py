"""Which hosts a user may point inboxlink at (IMAP/SMTP hosts, Exchange URLs).

Users type host names into account settings, and inboxlink then connects there from inside the
operator's network. Without a guard that is server-side request forgery: a "mail server" at
169.254.169.254 reads cloud credentials, one at 127.0.0.1:6379 talks to the local Redis.

Policy (every address a name resolves to must pass; one bad address refuses the whole name, which
defeats DNS answers that mix a public and an internal address):

* always refused: link-local (169.254/16, fe80::/10), cloud metadata (169.254.169.254,
  fd00:ec2::254, 100.100.100.200, Azure's 168.63.129.16), unspecified / "this network" (0/8, ::),
  multicast, broadcast, and reserved or special-purpose ranges (240/4, 192.0.0/24, documentation and
  benchmarking ranges, IPv6 outside 2000::/3 other than the ranges below);
* refused unless ``allow_private`` (``INBOXLINK_ALLOW_PRIVATE_HOSTS``): loopback (127/8, ::1),
  private (10/8, 172.16/12, 192.168/16, fc00::/7, deprecated site-local fec0::/10) and shared/CGNAT
  (100.64/10);
* IPv6 forms that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``,
  6to4 ``2002::/16``) are judged by the embedded IPv4 address.

**Connect to what was checked.** `check_host` returns the resolved addresses that passed. Callers must
open their socket to one of those addresses (keeping the user's host name for TLS SNI and certificate
checks), not resolve the name again: a second lookup may return a different answer (DNS rebinding).

`check_host` resolves with the blocking `socket.getaddrinfo`; from async code call it through
``asyncio.to_thread``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import ssl
from typing import NamedTuple
from urllib.parse import urlsplit

from inboxlink.errors import HostRefused, TransientError, ValidationError

__all__ = ["CheckedUrl", "check_host", "check_url", "check_url_target", "tls_client_context"]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ALLOW_SETTING = "INBOXLINK_ALLOW_PRIVATE_HOSTS"

_LINK_LOCAL = "a link-local address"
_METADATA = "a cloud metadata address"
_UNSPECIFIED = "an unspecified ('this network') address"
_MULTICAST = "a multicast address"
_BROADCAST = "the broadcast address"
_RESERVED = "a reserved (special-purpose) address"
_LOOPBACK = "a loopback address"
_PRIVATE = "a private address"
_SHARED = "a shared (carrier-grade NAT) address"


def _nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# (networks, description, always_refused); first match wins, so specific entries come first.
_V4_RULES = (
    (_nets("169.254.169.254/32", "100.100.100.200/32", "168.63.129.16/32"), _METADATA, True),
    (_nets("0.0.0.0/8"), _UNSPECIFIED, True),
    (_nets("169.254.0.0/16"), _LINK_LOCAL, True),
    (_nets("224.0.0.0/4"), _MULTICAST, True),
    (_nets("255.255.255.255/32"), _BROADCAST, True),
    (
        _nets(
            "240.0.0.0/4",
            "192.0.0.0/24",  # IETF protocol assignments
            "192.0.2.0/24",  # documentation
            "198.51.100.0/24",  # documentation
            "203.0.113.0/24",  # documentation
            "198.18.0.0/15",  # benchmarking
        ),
        _RESERVED,
        True,
    ),
    (_nets("127.0.0.0/8"), _LOOPBACK, False),
    (_nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), _PRIVATE, False),
    (_nets("100.64.0.0/10"), _SHARED, False),
)

_V6_RULES = (
    (_nets("fd00:ec2::254/128"), _METADATA, True),
    (_nets("::/128"), _UNSPECIFIED, True),
    (_nets("::1/128"), _LOOPBACK, False),
    (_nets("fe80::/10"), _LINK_LOCAL, True),
    (_nets("ff00::/8"), _MULTICAST, True),
    (_nets("fc00::/7", "fec0::/10"), _PRIVATE, False),
    (_nets("2001:db8::/32", "3fff::/20", "100::/64"), _RESERVED, True),
)
_V6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def _classify(ip: _IPAddress) -> tuple[str, bool] | None:
    """(description, always_refused) for a non-public address, None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            found = _classify(embedded)
            if found is None:
                return None
            return f"{found[0]} (embedded in an IPv6 address)", found[1]
        for nets, description, always in _V6_RULES:
            if any(ip in net for net in nets):
                return description, always
        if ip not in _V6_GLOBAL_UNICAST:
            return _RESERVED, True
        return None
    for nets, description, always in _V4_RULES:
        if any(ip in net for net in nets):
            return description, always
    return None


def _refusal(host: str, ip: _IPAddress, *, literal: bool, allow_private: bool) -> HostRefused | None:
    found = _classify(ip)
    if found is None:
        return None
    description, always = found
    if not always and allow_private:
        return None
    subject = f"{ip} is" if literal else f"{host} resolves to {ip},"
    if always:
        message = f"{subject} {description}; inboxlink never connects there"
    else:
        message = (
            f"{subject} {description}; this server does not connect to loopback or private "
            f"addresses (the operator can allow them with {_ALLOW_SETTING}=1)"
        )
    return HostRefused(message, host=host, address=str(ip), reason=description)


def _check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValidationError(f"port must be a number from 1 to 65535, not {port!r}", port=port)


def _parse_host(host: str) -> _IPAddress | str:
    """An IP literal, or the lower-case ASCII (IDNA) host name to resolve, without a trailing dot."""
    if not isinstance(host, str):
        raise ValidationError("host must be a string")
    if not host:
        raise ValidationError("host is empty", host=host)
    shown = host[:100]
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in host):
        raise ValidationError(f"host {shown!r} contains spaces or control characters", host=shown)
    invalid = ValidationError(f"{shown!r} is not a valid host name or IP address", host=shown)
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise invalid
        try:
            return ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise invalid from None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise invalid from None
    labels = ascii_name.split(".")
    if (
        not ascii_name
        or len(ascii_name) > 253
        or not all(_LABEL.match(label) for label in labels)
        # an all-numeric last label is not a name but a partial/odd IPv4 form ("127.1", "10.0.0.1.")
        or labels[-1].isdigit()
    ):
        raise invalid
    return ascii_name


def check_host(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses `host` resolves to, if all of them are allowed; connect only to these.

    `host` is a name, an IPv4/IPv6 literal or a bracketed IPv6 literal (``[::1]``); one trailing dot
    is ignored. Raises `ValidationError` for a malformed host or a port outside 1-65535,
    `HostRefused` when any resolved address is not allowed, and `TransientError` when the name does
    not resolve. Addresses are returned in resolver order without duplicates.
    """
    _check_port(port)
    parsed = _parse_host(host)
    if not isinstance(parsed, str):
        refused = _refusal(host, parsed, literal=True, allow_private=allow_private)
        if refused is not None:
            raise refused
        return [str(parsed)]

    try:
        infos = socket.getaddrinfo(parsed, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise TransientError(f"cannot resolve {host} ({reason})", host=host) from None

    addresses: list[str] = []
    for family, _type, _proto, _canonname, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            raise HostRefused(
                f"{host} resolves to an address inboxlink cannot check; inboxlink does not connect there",
                host=host,
            ) from None
        refused = _refusal(host, ip, literal=False, allow_private=allow_private)
        if refused is not None:
            raise refused
        text = str(ip)
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise TransientError(f"cannot resolve {host} (no IPv4 or IPv6 address)", host=host)
    return addresses


class CheckedUrl(NamedTuple):
    url: str
    host: str  # as written in the URL (lower-cased, without brackets): use it for TLS SNI / Host
    port: int
    addresses: list[str]  # connect to one of these


def check_url_target(url: str, *, allow_private: bool) -> CheckedUrl:
    """Like `check_url`, also returning the host, port and the checked addresses to connect to."""
    # Messages never echo the URL: it may carry credentials.
    if not isinstance(url, str) or not url:
        raise ValidationError("URL is empty")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValidationError("URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValidationError(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValidationError("URL must start with https:// or http://", scheme=scheme[:20])
    if "@" in parts.netloc:
        raise ValidationError(
            "URL must not contain a user name or password; enter credentials in their own fields"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"not a valid URL ({exc})") from None
    host = parts.hostname
    if not host:
        raise ValidationError("URL has no host")
    if port is None:
        port = 443 if scheme == "https" else 80
    addresses = check_host(host, port, allow_private=allow_private)
    return CheckedUrl(url=url, host=host, port=port, addresses=addresses)


def check_url(url: str, *, allow_private: bool) -> str:
    """Validate an http(s) URL (e.g. an Exchange EWS endpoint) and return it unchanged.

    Only ``http``/``https``, no ``user:password@``, then `check_host` on its host and port (default
    443/80). Use `check_url_target` when you need the checked addresses to connect to.
    """
    return check_url_target(url, allow_private=allow_private).url


class _NameCheckedContext(ssl.SSLContext):
    """A client context that checks the server's certificate against one host name, whatever name
    the library wrapping the socket passes: given the address netguard checked to connect to, the
    mail libraries (imaplib, smtplib, aiosmtplib) would also take that address as the TLS name."""

    tls_name: str | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self.tls_name or server_hostname,
            session=session,
        )

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=self.tls_name or server_hostname,
            session=session,
        )


@functools.lru_cache(maxsize=256)
def tls_client_context(ca_file: str | None, *, host: str) -> ssl.SSLContext:
    """What `ssl.create_default_context()` gives (certificate and host name checked; `ca_file`, when
    set, trusted instead of the system's CAs), checking the certificate against `host`, the name the
    user gave, while the socket goes to the address `check_host` returned for it: so that a second
    DNS lookup by the library, which an attacker's name server may answer differently (DNS
    rebinding), never happens. Cached per (CA file, host): loading the CA store costs ~20 ms a
    connection (wrapping sockets with a shared context is thread-safe); callers must not change it."""
    context = _NameCheckedContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.tls_name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return context
