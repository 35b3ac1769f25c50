"""The SSRF guard for host-side tools that reach the network (http_client, web_search's API provider).

Pure functions: nothing here opens a connection. :func:`check_url` parses a URL, resolves its host
through an injected ``resolve(host, port) -> list[str]`` (default: :func:`socket.getaddrinfo`) and
returns a :class:`VettedUrl` holding the addresses it vetted, or raises :class:`UrlRefused` naming why.

What is refused (unless the host is allowlisted):

* schemes other than ``http``/``https`` (``file:``, ``gopher:``, ``ftp:``, ``data:``, ...);
* URLs carrying credentials (``user:pass@host``). They are refused, not stripped: userinfo is the
  classic confusion trick (``http://allowed.com@127.0.0.1/``) and a credential in a URL would travel
  on into logs and redirects. Send an ``Authorization`` header instead;
* hosts with characters outside ``[a-z0-9.-_]`` (percent-encoding, backslashes, spaces), IPv6 zone ids,
  and numeric hosts that are not valid IPv4 (``1.2.3.08``);
* any host whose resolved addresses include one that is not public: loopback, private (RFC 1918),
  CGNAT (100.64/10), link-local, multicast, reserved, unspecified, documentation and benchmarking
  ranges, cloud metadata (169.254.169.254, fd00:ec2::254, 100.100.100.200), unique-local fc00::/7,
  Teredo, and IPv6 forms embedding a blocked IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
  ``64:ff9b::/96``, 6to4 ``2002::/16``). One bad address refuses the whole host;
* the names ``localhost``, ``*.localhost`` and ``metadata.google.internal`` (whatever they resolve to).

IPv4 literals are read with ``inet_aton`` semantics, as browsers and C resolvers do, so
``http://2130706433/``, ``http://0x7f.1/`` and ``http://017700000001/`` are all 127.0.0.1 and are
refused; a literal is never passed to the resolver.

``allow_hosts`` entries are ``host`` (any port) or ``host:port`` (``[v6]:port`` for IPv6), compared
after normalisation (lowercase, trailing dot dropped, IP literals in canonical form). An allowlisted
host skips the address checks but is still resolved, so the caller still connects to vetted addresses.

DNS rebinding: the caller must connect to ``VettedUrl.addresses`` (never re-resolve the name) and send
the name in the ``Host`` header and TLS SNI; :func:`pinned_request_url` builds the URL to do that.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 8_192

CLOUD_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)

BLOCKED_NAMES = frozenset({"localhost", "metadata.google.internal", "metadata"})

_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _table(rows: Sequence[tuple[str, str]]) -> tuple[tuple[_Net, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in rows)


# From IANA's special-purpose address registries (entries not globally reachable), spelled out so the
# verdict does not depend on the Python version's ``ipaddress`` tables; those flags are checked too.
_V4_BLOCKS = _table(
    [
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a shared (CGNAT, 100.64.0.0/10) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol assignment address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay anycast address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
    ]
)
_V6_BLOCKS = _table(
    [
        ("::1/128", "a loopback address"),
        ("::/128", "an unspecified address"),
        ("::/96", "an IPv4-compatible (deprecated) address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/32", "a Teredo address"),
        ("2001::/23", "an IETF protocol assignment address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("fc00::/7", "a unique-local address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    ]
)

_HOSTNAME_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")
_NUMERIC_LABEL_RE = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")


class UrlRefused(ValueError):
    """The URL may not be fetched; ``reason`` says why (safe to show to the planner)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedUrl:
    scheme: str
    host: str
    """Normalised: lowercase, no trailing dot, no brackets, IP literals canonical."""
    port: int
    path: str
    """Path and query as given (``/`` when empty); the fragment is dropped."""
    ip: IPAddress | None
    """The host as an address when it is an IP literal."""

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        """The ``Host`` header value: the name (bracketed for IPv6), with the port when not default."""
        name = f"[{self.host}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.host
        return name if self.port == DEFAULT_PORTS[self.scheme] else f"{name}:{self.port}"

    @property
    def url(self) -> str:
        """The normalised URL (what redirects are resolved against and what is reported)."""
        return f"{self.scheme}://{self.host_header}{self.path}"


@dataclass(frozen=True)
class VettedUrl(ParsedUrl):
    addresses: tuple[str, ...] = ()
    """The addresses checked (connect only to these)."""
    allowlisted: bool = False


# --------------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------------


def parse_ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read as an IPv4 address with ``inet_aton`` semantics, else ``None``.

    One to four dot-separated parts, each decimal, octal (leading ``0``) or hex (``0x``); the last
    part fills the remaining bytes (``127.1`` is 127.0.0.1, ``2130706433`` is 127.0.0.1). Raises
    :class:`UrlRefused` for a host that looks numeric but is not a valid address (``1.2.3.08``,
    ``1.2.3.256``) rather than letting a resolver guess.
    """
    name = host[:-1] if host.endswith(".") else host
    parts = name.split(".")
    if not parts or not _NUMERIC_LABEL_RE.match(parts[-1]):
        return None  # a name: the last label of a real hostname is never numeric
    values: list[int] = []
    for part in parts:
        try:
            if part.startswith("0x"):
                values.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                values.append(int(part, 8))
            else:
                values.append(int(part, 10))
        except ValueError:
            raise UrlRefused(f"host {host!r} looks like an IPv4 address but is not a valid one") from None
    if len(values) > 4 or any(v > 255 for v in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise UrlRefused(f"host {host!r} looks like an IPv4 address but is not a valid one")
    number = 0
    for v in values[:-1]:
        number = number * 256 + v
    number = number * 256 ** (5 - len(values)) + values[-1]
    return ipaddress.IPv4Address(number)


def _flag_reason(ip: IPAddress) -> str | None:
    checks = (
        (ip.is_loopback, "a loopback address"),
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _ipv4_reason(ip: ipaddress.IPv4Address) -> str | None:
    if ip in CLOUD_METADATA_ADDRESSES:
        return "a cloud metadata address"
    blocked = next((reason for net, reason in _V4_BLOCKS if ip in net), None)
    return blocked or _flag_reason(ip)


def _ipv6_reason(ip: ipaddress.IPv6Address) -> str | None:
    if ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    if ip in CLOUD_METADATA_ADDRESSES:
        return "a cloud metadata address"
    embedded: tuple[str, ipaddress.IPv4Address] | None = None
    if ip.ipv4_mapped is not None:
        embedded = ("an IPv4-mapped", ip.ipv4_mapped)
    elif ip in _NAT64_WELL_KNOWN:
        embedded = ("a NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    elif ip.sixtofour is not None:
        embedded = ("a 6to4", ip.sixtofour)
    if embedded is not None:
        kind, v4 = embedded
        inner = _ipv4_reason(v4)
        return f"{kind} IPv6 address embedding {v4} ({inner})" if inner else None
    blocked = next((reason for net, reason in _V6_BLOCKS if ip in net), None)
    if blocked is None and ip not in _GLOBAL_UNICAST_V6:
        blocked = "a reserved address (outside global unicast 2000::/3)"
    return blocked or _flag_reason(ip)


def blocked_reason(address: str | IPAddress) -> str | None:
    """Why ``address`` may not be connected to (``"a loopback address"``, ...), or ``None`` if public."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_reason(ip)
    return _ipv6_reason(ip)


def is_public_address(address: str | IPAddress) -> bool:
    return blocked_reason(address) is None


# --------------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------------


def _split_host_port(netloc: str) -> tuple[str, str]:
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise UrlRefused("unterminated IPv6 address in the URL's host")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UrlRefused("unexpected characters after the IPv6 address")
        return host, rest[1:] if rest else ""
    host, sep, port = netloc.rpartition(":")
    return (host, port) if sep else (netloc, "")


def normalise_host(raw: str) -> tuple[str, IPAddress | None]:
    """``(canonical host, address if an IP literal)``; raises :class:`UrlRefused` for a bad host."""
    host = raw.lower()
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        if "%" in inner:
            raise UrlRefused("IPv6 zone identifiers are not allowed in URLs")
        try:
            v6 = ipaddress.IPv6Address(inner)
        except ValueError:
            raise UrlRefused(f"invalid IPv6 address {inner!r}") from None
        return str(v6), v6
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise UrlRefused("the URL has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UrlRefused(f"invalid international host name {raw!r}") from None
    if not _HOSTNAME_RE.match(host) or len(host) > 253:
        raise UrlRefused(f"invalid host {raw!r}")
    v4 = parse_ipv4_literal(host)
    if v4 is not None:
        return str(v4), v4
    return host, None


def parse_url(url: str) -> ParsedUrl:
    """Split and normalise ``url`` (scheme, host, port, path); raises :class:`UrlRefused`."""
    if not isinstance(url, str) or not url:
        raise UrlRefused("empty URL")
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused(f"URL longer than {MAX_URL_CHARS} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url) or "\\" in url:
        raise UrlRefused("URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UrlRefused(f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = f"{scheme}:" if scheme else "(none)"
        raise UrlRefused(f"scheme {shown} is not allowed (only http and https)")
    if not url[len(parts.scheme) + 1 :].startswith("//") or not parts.netloc:
        raise UrlRefused("the URL has no host")
    if "@" in parts.netloc:
        raise UrlRefused("URLs with credentials (user:password@host) are not allowed; send a header")
    raw_host, raw_port = _split_host_port(parts.netloc)
    host, ip = normalise_host(raw_host)
    if raw_port:
        if not _PORT_RE.match(raw_port) or not 0 < int(raw_port) < 65536:
            raise UrlRefused(f"invalid port {raw_port!r}")
        port = int(raw_port)
    else:
        port = DEFAULT_PORTS[scheme]
    path = parts.path or "/"
    if not path.startswith("/"):
        path = "/" + path
    if parts.query:
        path += "?" + parts.query
    return ParsedUrl(scheme=scheme, host=host, port=port, path=path, ip=ip)


def normalise_allow_entry(entry: str) -> str:
    """An ``allow_hosts`` entry in the form :func:`is_allowlisted` compares (raises ``ValueError``)."""
    text = entry.strip().lower()
    if not text or "/" in text or "@" in text:
        raise ValueError(f"allow_hosts entry {entry!r} must be 'host' or 'host:port'")
    if ":" in text and not text.startswith("[") and text.count(":") > 1:
        text = f"[{text}]"  # a bare IPv6 address
    try:
        raw_host, raw_port = _split_host_port(text)
        host, ip = normalise_host(raw_host)
    except UrlRefused as exc:
        raise ValueError(f"allow_hosts entry {entry!r}: {exc.reason}") from None
    if not raw_port:
        return host
    if not _PORT_RE.match(raw_port) or not 0 < int(raw_port) < 65536:
        raise ValueError(f"allow_hosts entry {entry!r}: invalid port {raw_port!r}")
    name = f"[{host}]" if isinstance(ip, ipaddress.IPv6Address) else host
    return f"{name}:{int(raw_port)}"


def is_allowlisted(parsed: ParsedUrl, allow_hosts: Iterable[str]) -> bool:
    entries = {normalise_allow_entry(e) for e in allow_hosts}
    name = f"[{parsed.host}]" if isinstance(parsed.ip, ipaddress.IPv6Address) else parsed.host
    return parsed.host in entries or f"{name}:{parsed.port}" in entries


def default_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from :func:`socket.getaddrinfo` (TCP), in order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in out:
            out.append(address)
    return out


def _resolve_checked(parsed: ParsedUrl, resolve: Resolver) -> list[IPAddress]:
    try:
        answers = resolve(parsed.host, parsed.port)
    except (OSError, UnicodeError) as exc:
        raise UrlRefused(f"cannot resolve host {parsed.host!r}: {exc}") from None
    if not answers:
        raise UrlRefused(f"host {parsed.host!r} resolved to no addresses")
    out: list[IPAddress] = []
    for answer in answers:
        try:
            out.append(ipaddress.ip_address(str(answer).split("%", 1)[0]))
        except ValueError:
            raise UrlRefused(f"host {parsed.host!r} resolved to a non-address {answer!r}") from None
    return out


def check_url(url: str, *, allow_hosts: Sequence[str] = (), resolve: Resolver | None = None) -> VettedUrl:
    """Parse, resolve and vet ``url``; the :class:`VettedUrl` names the addresses to connect to.

    Raises :class:`UrlRefused` with a reason for a refused scheme, host or address.
    """
    parsed = parse_url(url)
    allowlisted = is_allowlisted(parsed, allow_hosts)
    internal_name = parsed.host in BLOCKED_NAMES or parsed.host.endswith(".localhost")
    if not allowlisted and parsed.ip is None and internal_name:
        raise UrlRefused(f"host {parsed.host!r} is an internal name")
    addresses = [parsed.ip] if parsed.ip is not None else _resolve_checked(parsed, resolve or default_resolve)
    if not allowlisted:
        for ip in addresses:
            reason = blocked_reason(ip)
            if reason is not None:
                if parsed.ip is not None:
                    raise UrlRefused(f"host {parsed.host!r} is {reason}")
                raise UrlRefused(f"host {parsed.host!r} resolves to {ip}: {reason}")
    return VettedUrl(
        scheme=parsed.scheme,
        host=parsed.host,
        port=parsed.port,
        path=parsed.path,
        ip=parsed.ip,
        addresses=tuple(str(ip) for ip in addresses),
        allowlisted=allowlisted,
    )


def pinned_request_url(vetted: VettedUrl, address: str) -> str:
    """``vetted``'s URL with the host replaced by ``address`` (one of ``vetted.addresses``).

    Send it with ``Host: vetted.host_header`` and, for https, TLS SNI and certificate checks against
    ``vetted.host`` (httpx: ``extensions={"sni_hostname": vetted.host}``), so the connection goes to
    the vetted address whatever the name resolves to by then.
    """
    if address not in vetted.addresses:
        raise ValueError(f"{address} is not one of the vetted addresses")
    ip = ipaddress.ip_address(address)
    host = f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    return f"{vetted.scheme}://{host}:{vetted.port}{vetted.path}"
