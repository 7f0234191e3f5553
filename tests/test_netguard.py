"""The network guard. No test touches the internet: the real resolver is only asked about `localhost`
and `.invalid` names (a guard below fails the test otherwise); everything else uses IP literals or a
fake `getaddrinfo`."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxlink.auth.netguard import check_host, check_url, check_url_target
from inboxlink.errors import HostRefused, InboxlinkError, TransientError, ValidationError

_real_getaddrinfo = socket.getaddrinfo


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name.rstrip(".") != "localhost" and not name.rstrip(".").endswith(".invalid"):
        pytest.fail(f"test tried to resolve {name!r} with the real resolver")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True, scope="module")
def _no_internet() -> Iterator[None]:
    with mock.patch("socket.getaddrinfo", _guarded_getaddrinfo):
        yield


def _fake_dns(answers: dict[str, Sequence[str]]) -> Callable[..., Any]:
    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out: list[Any] = []
        for addr in answers[host]:
            if ":" in addr:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)))
        return out

    return fake


def fake_dns(answers: dict[str, Sequence[str]]) -> Any:
    return mock.patch("socket.getaddrinfo", _fake_dns(answers))


PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"

ALWAYS_REFUSED = [
    # (literal, words expected in the message)
    ("169.254.169.254", "metadata"),
    ("100.100.100.200", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("[fd00:ec2::254]", "metadata"),
    ("169.254.0.1", "link-local"),
    ("169.254.255.255", "link-local"),
    ("fe80::1", "link-local"),
    ("[fe80::1]", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("[::]", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.10", "reserved"),
    ("198.51.100.7", "reserved"),
    ("203.0.113.99", "reserved"),
    ("198.18.0.1", "reserved"),
    ("2001:db8::1", "reserved"),
    ("::0.0.0.2", "reserved"),  # IPv4-compatible, deprecated
    ("4000::1", "reserved"),  # outside global unicast 2000::/3
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:169.254.1.1", "link-local"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::ffff:224.0.0.1", "multicast"),
    ("[::ffff:a9fe:a9fe]", "metadata"),
    ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64
    ("2002:a9fe:a9fe::1", "metadata"),  # 6to4
]

PRIVATE = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("[::1]", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.254", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:192.168.0.1", "private"),
    ("::ffff:100.64.0.1", "carrier-grade NAT"),
    ("[::ffff:7f00:1]", "loopback"),
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
]

PUBLIC = [
    PUBLIC_V4,
    "8.8.8.8",
    "172.32.0.1",
    "172.15.255.255",
    "100.63.255.255",
    "100.128.0.1",
    "169.253.0.1",
    "11.0.0.1",
    PUBLIC_V6,
    f"[{PUBLIC_V6}]",
    "::ffff:93.184.216.34",
    "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
]


@pytest.mark.parametrize(("host", "words"), ALWAYS_REFUSED)
@pytest.mark.parametrize("allow_private", [False, True])
def test_always_refused_literals(host: str, words: str, allow_private: bool) -> None:
    with pytest.raises(HostRefused) as info:
        check_host(host, 993, allow_private=allow_private)
    assert words in info.value.message
    assert "never connects there" in info.value.message
    assert info.value.code == "host_refused"


def test_refusal_message() -> None:
    with pytest.raises(HostRefused) as info:
        check_host("169.254.169.254", 993, allow_private=True)
    assert info.value.message == "169.254.169.254 is a cloud metadata address; inboxlink never connects there"
    with fake_dns({"imap.example.test": ["169.254.169.254"]}), pytest.raises(HostRefused) as info:
        check_host("imap.example.test", 993, allow_private=False)
    assert info.value.message == (
        "imap.example.test resolves to 169.254.169.254, a cloud metadata address; "
        "inboxlink never connects there"
    )
    assert info.value.fields["address"] == "169.254.169.254"


@pytest.mark.parametrize(("host", "words"), PRIVATE)
def test_private_literals_need_allow_private(host: str, words: str) -> None:
    with pytest.raises(HostRefused) as info:
        check_host(host, 993, allow_private=False)
    assert words in info.value.message
    assert "INBOXLINK_ALLOW_PRIVATE_HOSTS" in info.value.message
    expected = str(ipaddress.ip_address(host.strip("[]")))
    assert check_host(host, 993, allow_private=True) == [expected]


@pytest.mark.parametrize("host", PUBLIC)
@pytest.mark.parametrize("allow_private", [False, True])
def test_public_literals_accepted(host: str, allow_private: bool) -> None:
    assert check_host(host, 443, allow_private=allow_private) == [str(ipaddress.ip_address(host.strip("[]")))]


def test_localhost() -> None:
    with pytest.raises(HostRefused, match=r"localhost resolves to .*loopback"):
        check_host("localhost", 993, allow_private=False)
    addresses = check_host("localhost", 993, allow_private=True)
    assert addresses
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses)
    assert check_host("localhost.", 993, allow_private=True) == addresses
    assert check_host("LOCALHOST", 993, allow_private=True) == addresses


def test_unresolvable_name_is_transient() -> None:
    with pytest.raises(TransientError, match=r"cannot resolve imap\.example\.invalid") as info:
        check_host("imap.example.invalid", 993, allow_private=False)
    assert not isinstance(info.value, HostRefused)
    with pytest.raises(TransientError):
        check_host("imap.example.invalid.", 993, allow_private=True)


def test_resolved_name_public() -> None:
    with fake_dns({"imap.example.test": [PUBLIC_V4, PUBLIC_V6, PUBLIC_V4]}):
        assert check_host("imap.example.test", 993, allow_private=False) == [PUBLIC_V4, PUBLIC_V6]
        assert check_host("imap.example.test.", 993, allow_private=False) == [PUBLIC_V4, PUBLIC_V6]
        assert check_host("IMAP.Example.Test", 993, allow_private=False) == [PUBLIC_V4, PUBLIC_V6]


def test_idn_name_is_resolved_in_ascii_form() -> None:
    with fake_dns({"imap.xn--bcher-kva.example": [PUBLIC_V4]}):
        assert check_host("imap.bücher.example", 993, allow_private=False) == [PUBLIC_V4]


@pytest.mark.parametrize(
    ("answers", "allow_private"),
    [
        ([PUBLIC_V4, "10.0.0.5"], False),
        (["10.0.0.5", PUBLIC_V4], False),
        ([PUBLIC_V4, "127.0.0.1"], False),
        ([PUBLIC_V6, "::1"], False),
        ([PUBLIC_V4, "169.254.169.254"], True),
        ([PUBLIC_V4, "::ffff:169.254.169.254"], True),
        (["192.168.0.2", "fe80::1"], True),
    ],
)
def test_every_resolved_address_must_pass(answers: list[str], allow_private: bool) -> None:
    with fake_dns({"rebind.example.test": answers}), pytest.raises(HostRefused):
        check_host("rebind.example.test", 993, allow_private=allow_private)


def test_private_name_allowed_when_configured() -> None:
    with fake_dns({"mail.corp.test": ["10.0.0.5", PUBLIC_V4]}):
        assert check_host("mail.corp.test", 143, allow_private=True) == ["10.0.0.5", PUBLIC_V4]


def test_resolver_returning_nothing_usable() -> None:
    def only_unix(*args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_UNIX, socket.SOCK_STREAM, 0, "", "/tmp/x")]

    with mock.patch("socket.getaddrinfo", only_unix), pytest.raises(TransientError):
        check_host("odd.example.test", 993, allow_private=True)


@pytest.mark.parametrize(
    "host",
    [
        "",
        " ",
        " imap.example.test",
        "imap example.test",
        "imap.example.test\n",
        "imap\x00.example.test",
        ".",
        "..",
        "a..b",
        ".example.test",
        "-imap.example.test",
        "imap-.example.test",
        "imap.example.test..",
        "a" * 64 + ".example.test",
        "a." * 127 + "test",
        "imap.exa%mple.test",
        "imap.example.test:993",
        "https://imap.example.test",
        "user@imap.example.test",
        "imap/example",
        "127.1",
        "10.0.0.1.",
        "2130706433",
        "127.000.000.001",
        "[::1",
        "::1]",
        "[127.0.0.1]",
        "[imap.example.test]",
        "[]",
        "1:2:3:4:5:6:7:8:9",
    ],
)
def test_invalid_hosts(host: str) -> None:
    with pytest.raises(ValidationError):
        check_host(host, 993, allow_private=True)


@pytest.mark.parametrize("port", [0, -1, 65536, 10**9, True, False, "993", 993.0, None])
def test_invalid_ports(port: Any) -> None:
    with pytest.raises(ValidationError):
        check_host(PUBLIC_V4, port, allow_private=True)


@pytest.mark.parametrize("port", [1, 25, 143, 465, 587, 993, 65535])
def test_valid_ports(port: int) -> None:
    assert check_host(PUBLIC_V4, port, allow_private=False) == [PUBLIC_V4]


def test_non_string_host() -> None:
    with pytest.raises(ValidationError):
        check_host(None, 993, allow_private=True)  # type: ignore[arg-type]


# -- URLs -------------------------------------------------------------------------------------------


def test_url_public_ok() -> None:
    url = f"https://{PUBLIC_V4}/EWS/Exchange.asmx"
    assert check_url(url, allow_private=False) == url
    target = check_url_target(url, allow_private=False)
    assert (target.host, target.port, target.addresses) == (PUBLIC_V4, 443, [PUBLIC_V4])
    target = check_url_target(f"HTTP://[{PUBLIC_V6}]:8080/ews?x=1#f", allow_private=False)
    assert (target.host, target.port, target.addresses) == (PUBLIC_V6, 8080, [PUBLIC_V6])
    assert check_url_target(f"http://{PUBLIC_V4}", allow_private=False).port == 80


def test_url_with_name() -> None:
    with fake_dns({"mail.example.test": [PUBLIC_V4]}):
        target = check_url_target("https://mail.example.test/EWS/Exchange.asmx", allow_private=False)
    assert target.host == "mail.example.test"
    assert target.addresses == [PUBLIC_V4]


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "https://[fe80::1%25eth0]/ews",
        "http://0.0.0.0:8080/",
    ],
)
def test_url_always_refused(url: str) -> None:
    with pytest.raises(HostRefused):
        check_url(url, allow_private=True)


def test_url_private() -> None:
    with pytest.raises(HostRefused):
        check_url("http://127.0.0.1:8080/EWS/Exchange.asmx", allow_private=False)
    assert check_url("http://[::1]:8080/ews", allow_private=True) == "http://[::1]:8080/ews"
    with pytest.raises(HostRefused):
        check_url("https://localhost/ews", allow_private=False)
    assert check_url("https://localhost/ews", allow_private=True) == "https://localhost/ews"


def test_url_unresolvable() -> None:
    with pytest.raises(TransientError):
        check_url("https://mail.example.invalid/EWS/Exchange.asmx", allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "mail.example.test/ews",
        f"ftp://{PUBLIC_V4}/",
        "file:///etc/passwd",
        f"gopher://{PUBLIC_V4}:70/",
        "javascript:alert(1)",
        "https://",
        "https:///ews",
        f"https://{PUBLIC_V4}:0/",
        f"https://{PUBLIC_V4}:65536/",
        f"https://{PUBLIC_V4}:https/",
        "https://[::1/",
        f"https://{PUBLIC_V4} /",
        f"https://{PUBLIC_V4}/\nHost: evil",
        f"https://\t{PUBLIC_V4}/",
        "https://%31%30.0.0.1/",
        "https://10.0.0.1\\@93.184.216.34/",
        "https://exa_mple..test/",
    ],
)
def test_url_invalid(url: str) -> None:
    with pytest.raises(ValidationError):
        check_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        f"https://ann:hunter2@{PUBLIC_V4}/ews",
        f"https://ann@{PUBLIC_V4}/ews",
        f"https://:hunter2@{PUBLIC_V4}/ews",
        "https://ann:hunter2@169.254.169.254/",
    ],
)
def test_url_userinfo_refused_without_echo(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        check_url(url, allow_private=True)
    assert "hunter2" not in str(info.value)
    assert "ann" not in str(info.value)
    assert "user name or password" in str(info.value)


# -- properties -------------------------------------------------------------------------------------

# The address classes the policy names, written out independently of the implementation.
_NEVER_WITHOUT_ALLOW = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
]
_NEVER = [
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::/128", "fe80::/10", "ff00::/8")
]


def _in_any(address: str, nets: list[Any]) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in nets)


ips = st.ip_addresses()
ports = st.integers(min_value=-10, max_value=70000)


def _check_outcome(host: str, port: int, allow_private: bool) -> list[str] | InboxlinkError:
    try:
        result = check_host(host, port, allow_private=allow_private)
    except (HostRefused, ValidationError, TransientError) as exc:
        return exc
    assert isinstance(result, list)
    assert result and all(isinstance(a, str) for a in result)
    for address in result:
        assert not _in_any(address, _NEVER)
        if not allow_private:
            assert not _in_any(address, _NEVER_WITHOUT_ALLOW)
    return result


@settings(max_examples=500, database=None, deadline=None)
@given(ip=ips, port=ports, allow_private=st.booleans(), bracket=st.booleans())
def test_property_ip_literals(ip: Any, port: int, allow_private: bool, bracket: bool) -> None:
    host = f"[{ip}]" if bracket and ip.version == 6 else str(ip)
    outcome = _check_outcome(host, port, allow_private)
    if not 1 <= port <= 65535:
        assert isinstance(outcome, ValidationError)
        return
    # A well-formed literal is never a validation or DNS problem, only accepted or refused.
    assert isinstance(outcome, list | HostRefused), outcome
    if isinstance(outcome, list):
        assert outcome == [str(ip)]
        assert check_host(host, port, allow_private=True) == outcome  # allowing more never refuses more
    if _in_any(str(ip), _NEVER):
        assert isinstance(outcome, HostRefused)


@settings(max_examples=300, database=None, deadline=None)
@given(
    host=st.one_of(
        st.text(max_size=40),
        st.from_regex(r"\A[a-z0-9-]{1,10}(\.[a-z0-9-]{1,10}){0,3}\.?\Z"),
    ),
    answers=st.lists(ips.map(str), max_size=4),
    port=ports,
    allow_private=st.booleans(),
)
def test_property_names_with_fake_dns(host: str, answers: list[str], port: int, allow_private: bool) -> None:
    def fake(name: str, p: int, *args: Any, **kwargs: Any) -> list[Any]:
        assert isinstance(name, str) and name.isascii() and not name.endswith(".")
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, p, 0, 0) if ":" in a else (a, p),
            )
            for a in answers
        ]

    with mock.patch("socket.getaddrinfo", fake):
        outcome = _check_outcome(host, port, allow_private)
    if isinstance(outcome, list):
        resolved = {str(ipaddress.ip_address(a)) for a in answers}
        assert set(outcome) <= resolved or outcome == [str(ipaddress.ip_address(host.strip("[]")))]
