"""The SSRF guard for host-side tools that reach the network (http_client, web_search's API provider).

Pure functions: nothing here opens a connection. :func:`check_url` parses a URL, resolves its host
through an injected ``resolve(host, port) -> list[str]`` (default: :func:`socket.getaddrinfo`) and
returns a :class:`VettedUrl` holding the addresses it vetted, or raises :class:`UrlRefused` naming why.
The URL syntax (parsing, host normalisation, allowlist entries) is :mod:`officeray.urls`, in the
core because tool settings are checked with it when they are loaded; this module decides which
addresses may be reached.

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
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from officeray.urls import IPAddress, ParsedUrl, UrlRefused, normalise_allow_entry, parse_url

Resolver = Callable[[str, int], list[str]]

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


@dataclass(frozen=True)
class VettedUrl(ParsedUrl):
    addresses: tuple[str, ...] = ()
    """The addresses checked (connect only to these)."""
    allowlisted: bool = False


# --------------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------------


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
