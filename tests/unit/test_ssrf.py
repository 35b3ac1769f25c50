"""The SSRF guard: pure checks with a fake resolver (nothing is resolved or connected to for real)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from officeray.urls import UrlRefused, normalise_allow_entry, parse_ipv4_literal, parse_url
from tools_sandbox.ssrf import blocked_reason, check_url, pinned_request_url

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"

DNS: dict[str, list[str]] = {
    "example.com": [PUBLIC_V4],
    "www.example.com": [PUBLIC_V4, PUBLIC_V6],
    "v6.example.com": [PUBLIC_V6],
    "allowed.com": [PUBLIC_V4],
    "127.0.0.1.nip.io": ["127.0.0.1"],
    "rebind.example": [PUBLIC_V4, "10.0.0.5"],  # one bad answer refuses the host
    "internal.corp": ["10.1.2.3"],
    "metadata.example": ["169.254.169.254"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "scoped.example": ["fe80::1%eth0"],
    "garbage.example": ["not-an-ip"],
    "empty.example": [],
}


class FakeResolver:
    """Answers from :data:`DNS`; records what it was asked; never touches the network."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = DNS if table is None else table
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.table:
            raise OSError(f"[fake] no such host {host}")
        return list(self.table[host])


def refused(url: str, **kwargs: object) -> str:
    with pytest.raises(UrlRefused) as info:
        check_url(url, resolve=FakeResolver(), **kwargs)  # type: ignore[arg-type]
    return info.value.reason


# --------------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------------

BLOCKED_ADDRESSES = [
    # IPv4 loopback, private, CGNAT, link-local, metadata, this-network, multicast, reserved
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("169.254.1.1", "link-local"),
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("100.100.100.200", "metadata"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.10", "documentation"),  # TEST-NET-1
    ("198.51.100.7", "documentation"),  # TEST-NET-2
    ("203.0.113.9", "documentation"),  # TEST-NET-3
    ("198.18.0.1", "benchmarking"),
    ("192.0.0.8", "IETF"),
    ("192.88.99.1", "6to4 relay"),
    # IPv6
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456:789a::1", "unique-local"),
    ("fd00:ec2::254", "metadata"),
    ("ff02::1", "multicast"),
    ("fec0::1", "site-local"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001:10::1", "IETF"),  # ORCHID
    ("5f00::1", "reserved"),  # SRv6 SIDs, outside 2000::/3
    ("4000::1", "reserved"),
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:10.0.0.1", "IPv4-mapped"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("64:ff9b::7f00:1", "NAT64"),  # 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "NAT64"),  # 169.254.169.254
    ("64:ff9b::c0a8:101", "NAT64"),  # 192.168.1.1
    ("64:ff9b:1::1", "NAT64"),  # local-use NAT64 prefix
    ("2002:7f00:1::1", "6to4"),  # 127.0.0.1
    ("2002:c0a8:101::1", "6to4"),  # 192.168.1.1
    ("2002:a9fe:a9fe::1", "6to4"),  # 169.254.169.254
    ("2001::1", "Teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("100::1", "discard"),
]


@pytest.mark.parametrize(("address", "why"), BLOCKED_ADDRESSES)
def test_blocked_addresses(address: str, why: str) -> None:
    reason = blocked_reason(address)
    assert reason is not None, address
    assert why.lower() in reason.lower()


@pytest.mark.parametrize(
    "address",
    [
        PUBLIC_V4,
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",  # just below CGNAT
        "100.128.0.0",  # just above CGNAT
        "172.15.255.255",
        "172.32.0.0",
        PUBLIC_V6,
        "2606:4700::1111",
        "::ffff:8.8.8.8",  # mapped public v4
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8
        "2002:808:808::1",  # 6to4 of 8.8.8.8
    ],
)
def test_public_addresses(address: str) -> None:
    assert blocked_reason(address) is None
    assert blocked_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001".lower(), "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f.0x0.0x0.0x1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x0", "0.0.0.0"),
        ("3232235777", "192.168.1.1"),
        ("0300.0250.01.01", "192.168.1.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("1572395042", PUBLIC_V4),
    ],
)
def test_ipv4_literals_use_inet_aton_semantics(literal: str, expected: str) -> None:
    assert str(parse_ipv4_literal(literal)) == expected


@pytest.mark.parametrize("name", ["example.com", "127.0.0.1.nip.io", "1.2.3.4.example", "localhost", "a-1"])
def test_names_are_not_ipv4_literals(name: str) -> None:
    assert parse_ipv4_literal(name) is None


@pytest.mark.parametrize(
    "bad", ["1.2.3.4.5", "1.2.3.256", "256.1.1.1", "1.2.3.08", "0x1g.1", "4294967296", "1.16777216"]
)
def test_invalid_numeric_hosts_are_refused(bad: str) -> None:
    with pytest.raises(UrlRefused):
        parse_ipv4_literal(bad)


# --------------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------------

BAD_URLS = [
    # schemes
    ("file:///etc/passwd", "scheme"),
    ("FILE:///etc/passwd", "scheme"),
    ("gopher://example.com/_SET%20x", "scheme"),
    ("ftp://example.com/x", "scheme"),
    ("data:text/plain,hello", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("dict://example.com:11211/", "scheme"),
    ("ldap://example.com/", "scheme"),
    ("jar:http://example.com/x!/", "scheme"),
    ("netdoc:///etc/passwd", "scheme"),
    ("//example.com/", "scheme"),
    ("example.com/path", "scheme"),
    # no host
    ("http://", "no host"),
    ("http:///etc/passwd", "no host"),
    ("http:example.com", "no host"),
    ("https:/example.com", "no host"),
    # credentials / userinfo tricks
    ("http://user:pass@example.com/", "credentials"),
    ("http://allowed.com@127.0.0.1/", "credentials"),
    ("http://allowed.com:80@127.0.0.1/", "credentials"),
    ("http://127.0.0.1@allowed.com/", "credentials"),
    ("http://allowed.com%40127.0.0.1/", "invalid host"),
    ("http://allowed.com\\@127.0.0.1/", "backslash"),
    ("http://127.0.0.1\\.allowed.com/", "backslash"),
    # whitespace, control characters, encoding tricks
    ("http://exa mple.com/", "whitespace"),
    ("http://example.com/\r\nHost: evil", "whitespace"),
    (" http://127.0.0.1/", "whitespace"),
    ("http://127.0.0.1\t/", "whitespace"),
    ("http://127.0.0.%31/", "invalid host"),
    ("http://%6c%6f%63%61%6c%68%6f%73%74/", "invalid host"),
    ("http://exa_mple..com/", "invalid host"),
    # ports
    ("http://example.com:0/", "port"),
    ("http://example.com:65536/", "port"),
    ("http://example.com:8o/", "port"),
    ("http://example.com:-1/", "port"),
    # loopback in all spellings
    ("http://127.0.0.1/", "loopback"),
    ("http://127.0.0.1:8080/admin", "loopback"),
    ("HTTP://127.0.0.1/", "loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://0X7F000001/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::1]:8080/", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped"),
    ("http://[::ffff:169.254.169.254]/latest/meta-data/", "metadata"),
    ("http://[64:ff9b::127.0.0.1]/", "NAT64"),
    ("http://[64:ff9b::a9fe:a9fe]/", "NAT64"),
    ("http://[2002:7f00:0001::]/", "6to4"),
    ("http://[2002:a9fe:a9fe::]/", "6to4"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo"),
    ("http://[fe80::1%25eth0]/", "zone"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("http://[fc00::1]/", "unique-local"),
    ("http://[::]/", "unspecified"),
    ("http://[::1/", "IPv6"),
    ("http://[not-v6]/", "IPv6"),
    ("http://[::1]x/", "IPv6"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://10.0.0.1/", "private"),
    ("http://192.168.0.1/", "private"),
    ("http://0300.0250.0.1/", "private"),
    ("http://3232235521/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://0xa9fea9fe/", "metadata"),
    ("http://100.100.100.200/latest/meta-data/", "metadata"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://192.0.2.1/", "documentation"),
    ("http://1.2.3.08/", "not a valid"),
    # names
    ("http://localhost/", "internal name"),
    ("http://LOCALHOST./", "internal name"),
    ("http://foo.localhost/", "internal name"),
    ("http://metadata.google.internal/computeMetadata/v1/", "internal name"),
    ("http://127.0.0.1.nip.io/", "resolves to 127.0.0.1"),
    ("http://127.0.0.1.NIP.IO./", "resolves to 127.0.0.1"),
    ("http://rebind.example/", "resolves to 10.0.0.5"),
    ("http://internal.corp/", "private"),
    ("http://metadata.example/", "metadata"),
    ("http://mapped.example/", "IPv4-mapped"),
    ("http://scoped.example/", "link-local"),
    ("http://garbage.example/", "non-address"),
    ("http://empty.example/", "no addresses"),
    ("http://nxdomain.example/", "cannot resolve"),
]


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
def test_bad_urls_are_refused(url: str, why: str) -> None:
    assert why.lower() in refused(url).lower()


def test_ip_literals_are_never_resolved() -> None:
    resolver = FakeResolver({})  # any lookup would fail with "cannot resolve"
    for url in ("http://2130706433/", "http://[::1]/", "http://0x7f.1/"):
        with pytest.raises(UrlRefused, match="loopback"):
            check_url(url, resolve=resolver)
    assert resolver.asked == []


GOOD_URLS = [
    ("http://example.com", "http://example.com/", [PUBLIC_V4]),
    ("https://example.com/a/b?c=d&e=f#frag", "https://example.com/a/b?c=d&e=f", [PUBLIC_V4]),
    ("HTTPS://EXAMPLE.COM./Path", "https://example.com/Path", [PUBLIC_V4]),
    ("http://example.com:8080/x", "http://example.com:8080/x", [PUBLIC_V4]),
    ("http://example.com:80/x", "http://example.com/x", [PUBLIC_V4]),
    ("http://example.com?q=1", "http://example.com/?q=1", [PUBLIC_V4]),
    ("http://example.com/?next=http://127.0.0.1/", "http://example.com/?next=http://127.0.0.1/", [PUBLIC_V4]),
    ("http://example.com#@127.0.0.1/", "http://example.com/", [PUBLIC_V4]),
    ("https://www.example.com/", "https://www.example.com/", [PUBLIC_V4, PUBLIC_V6]),
    ("https://v6.example.com/", "https://v6.example.com/", [PUBLIC_V6]),
    (f"http://{PUBLIC_V4}/", f"http://{PUBLIC_V4}/", [PUBLIC_V4]),
    ("http://1572395042/", f"http://{PUBLIC_V4}/", [PUBLIC_V4]),
    (f"http://[{PUBLIC_V6}]:8443/", f"http://[{PUBLIC_V6}]:8443/", [PUBLIC_V6]),
    ("http://[::ffff:8.8.8.8]/", "http://[::ffff:808:808]/", ["::ffff:808:808"]),
]


@pytest.mark.parametrize(("url", "normalised", "addresses"), GOOD_URLS)
def test_good_urls_pass_with_their_vetted_addresses(url: str, normalised: str, addresses: list[str]) -> None:
    vetted = check_url(url, resolve=FakeResolver())
    assert vetted.url == normalised
    assert list(vetted.addresses) == addresses
    assert not vetted.allowlisted


def test_the_resolver_gets_the_normalised_host_and_port() -> None:
    resolver = FakeResolver()
    check_url("HTTPS://Example.COM.:8443/", resolve=resolver)
    assert resolver.asked == [("example.com", 8443)]


def test_default_ports_and_host_header() -> None:
    vetted = check_url("https://example.com/x", resolve=FakeResolver())
    assert (vetted.scheme, vetted.host, vetted.port, vetted.path) == ("https", "example.com", 443, "/x")
    assert vetted.host_header == "example.com"
    assert check_url("http://example.com:81/", resolve=FakeResolver()).host_header == "example.com:81"
    assert check_url(f"http://[{PUBLIC_V6}]:81/").host_header == f"[{PUBLIC_V6}]:81"


# --------------------------------------------------------------------------------------------------
# Allowlist
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://127.0.0.1:8080/", ["127.0.0.1:8080"]),
        ("http://127.0.0.1:8080/", ["127.0.0.1"]),
        ("http://2130706433:8080/", ["127.0.0.1:8080"]),  # same address, canonical form
        ("http://[::1]:9000/", ["[::1]:9000"]),
        ("http://[::1]:9000/", ["::1"]),
        ("http://internal.corp/", ["internal.corp"]),
        ("http://INTERNAL.corp./", ["Internal.Corp."]),
        ("http://internal.corp:8443/", ["internal.corp:8443"]),
        ("http://localhost:5000/", ["localhost:5000"]),
        ("http://127.0.0.1.nip.io/", ["127.0.0.1.nip.io"]),
    ],
)
def test_allowlisted_hosts_skip_the_address_checks(url: str, allow: list[str]) -> None:
    resolver = FakeResolver({**DNS, "localhost": ["127.0.0.1", "::1"]})
    vetted = check_url(url, allow_hosts=allow, resolve=resolver)
    assert vetted.allowlisted
    assert vetted.addresses  # still resolved: the caller connects to these


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://127.0.0.1:8081/", ["127.0.0.1:8080"]),  # another port
        ("http://127.0.0.2:8080/", ["127.0.0.1:8080"]),
        ("http://internal.corp:8443/", ["internal.corp:443"]),
        ("http://sub.internal.corp/", ["internal.corp"]),  # exact names only
        ("http://allowed.com@127.0.0.1/", ["allowed.com"]),
        ("http://127.0.0.1.nip.io/", ["nip.io"]),
    ],
)
def test_the_allowlist_is_exact(url: str, allow: list[str]) -> None:
    with pytest.raises(UrlRefused):
        check_url(url, allow_hosts=allow, resolve=FakeResolver())


def test_allowlisted_hosts_still_need_http() -> None:
    with pytest.raises(UrlRefused, match="scheme"):
        check_url("file://127.0.0.1/etc/passwd", allow_hosts=["127.0.0.1"], resolve=FakeResolver())


@pytest.mark.parametrize(
    ("entry", "normalised"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("example.com:0443", "example.com:443"),
        ("::1", "::1"),
        ("[::1]:80", "[::1]:80"),
        ("0x7f.1:80", "127.0.0.1:80"),
    ],
)
def test_allow_entries_are_normalised(entry: str, normalised: str) -> None:
    assert normalise_allow_entry(entry) == normalised


@pytest.mark.parametrize(
    "entry", ["", "http://example.com", "a@b", "example.com:http", "example.com:70000", "[::1"]
)
def test_bad_allow_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        normalise_allow_entry(entry)


# --------------------------------------------------------------------------------------------------
# Redirect targets and pinning
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
        "http://2130706433/",
        "http://127.0.0.1.nip.io/",
        "//127.0.0.1/",
    ],
)
def test_redirect_targets_get_the_same_checks(location: str) -> None:
    from urllib.parse import urljoin

    origin = check_url("http://example.com/start", resolve=FakeResolver())
    with pytest.raises(UrlRefused):
        check_url(urljoin(origin.url, location), resolve=FakeResolver())


def test_pinned_url_connects_to_the_vetted_address() -> None:
    vetted = check_url("https://www.example.com:8443/a?b=c", resolve=FakeResolver())
    assert pinned_request_url(vetted, PUBLIC_V4) == f"https://{PUBLIC_V4}:8443/a?b=c"
    assert pinned_request_url(vetted, PUBLIC_V6) == f"https://[{PUBLIC_V6}]:8443/a?b=c"
    assert vetted.host_header == "www.example.com:8443"
    with pytest.raises(ValueError):
        pinned_request_url(vetted, "127.0.0.1")


def test_parse_url_does_not_resolve() -> None:
    parsed = parse_url("http://unresolvable.invalid/x")
    assert parsed.host == "unresolvable.invalid"


def test_the_default_resolver_is_not_used_when_one_is_injected(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def boom(*args: object, **kwargs: object) -> Callable[..., object]:
        raise AssertionError("socket.getaddrinfo must not be called")

    # A tripwire, not a seam: the injected resolver is the seam under test, and the point is that
    # the default one (the stdlib's getaddrinfo) is never reached; restored after the test.
    monkeypatch.setattr(socket, "getaddrinfo", boom)
    assert check_url("http://example.com/", resolve=FakeResolver()).addresses == (PUBLIC_V4,)
