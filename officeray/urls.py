"""URL syntax: how a URL or an allowlist entry is split and normalised (no network, no policy).

Pure functions over text, in the core because tool *settings* and *inputs* are checked with them
when they are loaded or validated (``tools.http_client.allow_hosts``, ``tools.web_search.endpoint``,
``http_client``'s ``url`` length: :mod:`officeray.tools.host_inputs`). Which addresses may be
reached is the SSRF guard's business (:mod:`tools_sandbox.ssrf`), which parses with these.

Hosts are normalised as resolvers and browsers read them: lowercase, trailing dot dropped,
international names in IDNA, IPv6 literals canonical, IPv4 literals with ``inet_aton`` semantics
(``2130706433``, ``0x7f.1`` and ``017700000001`` are all 127.0.0.1). What cannot be read raises
:class:`UrlRefused` naming why.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 8_192

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
