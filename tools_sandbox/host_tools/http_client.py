"""``http_client``: fetch a URL from the tool runner's process, behind the SSRF guard.

Every hop (the first request and each redirect) goes through :func:`tools_sandbox.ssrf.check_url`
with the ``tools.http_client.allow_hosts`` allowlist. httpx never follows redirects itself.

Pinning (DNS rebinding): the request goes to the address the guard vetted, not to the name. The
URL handed to httpx has the vetted IP as its host; the name travels in the ``Host`` header and, for
https, as the TLS server name (httpx's ``sni_hostname`` request extension), which is also what the
certificate is checked against. The name is resolved exactly once per hop, by the guard. httpx runs
with ``trust_env=False``, so proxy variables cannot route the request elsewhere, and without
keep-alive, so a TLS connection checked for one name is never reused for another name that a redirect
pinned to the same address.

Redirects: at most ``max_redirects``; each target is re-checked; ``Authorization``, ``Cookie``,
``Proxy-Authorization`` (and any ``secret_headers`` of the caller) are dropped once a redirect leaves
the original origin (scheme, host, port); 303, and 301/302 after a POST, continue as GET without
the body.

Limits: the body is streamed and cut at ``max_response_bytes`` (``truncated: true``; the cap counts
decoded bytes, so a compressed body cannot expand past it in the output); the whole call, redirects
and body included, must finish within the timeout (the smallest of the input's, the settings' and
the step's ``timeout_seconds``):
each connect, write and read is limited to the time left, and the deadline is checked between body
chunks, so a server stalling one read can keep a call past it by at most that read's limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
from pydantic import BaseModel

from officeray.contracts import ErrorType
from officeray.tools.host_inputs import HttpClientInput, HttpClientSettings
from officeray.tools.spec import HostContext, HostToolError, tool_settings
from officeray.urls import UrlRefused
from tools_sandbox.host_tools import within_step
from tools_sandbox.ssrf import Resolver, VettedUrl, check_url, pinned_request_url

TOOL_NAME = "http_client"
RESOLVER_SERVICE = "dns_resolver"
"""``HostContext.services`` key of an optional ``resolve(host, port) -> list[str]`` (tests inject one)."""

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")


@dataclass
class FetchResult:
    status: int
    headers: dict[str, str]
    body: bytes
    encoding: str
    truncated: bool
    url: str
    redirects: list[dict[str, Any]] = field(default_factory=list)

    def text(self) -> str:
        try:
            return self.body.decode(self.encoding, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self, url: str) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.expired(url)
        return left

    def expired(self, url: str) -> HostToolError:
        return HostToolError(ErrorType.TIMEOUT, f"{url}: no complete answer within {self.seconds:g}s")


def _check(url: str, settings: HttpClientSettings, resolve: Resolver | None, what: str) -> VettedUrl:
    try:
        return check_url(url, allow_hosts=settings.allow_hosts, resolve=resolve)
    except UrlRefused as exc:
        raise HostToolError(ErrorType.BAD_INPUT, f"{what} refused: {exc.reason}") from None


def _send(
    client: httpx.Client,
    vetted: VettedUrl,
    method: str,
    headers: httpx.Headers,
    body: bytes | None,
    deadline: _Deadline,
) -> httpx.Response:
    """Send to the first vetted address that accepts the connection (streamed response)."""
    request_headers = httpx.Headers(headers)
    request_headers["Host"] = vetted.host_header
    extensions = {"sni_hostname": vetted.host} if vetted.scheme == "https" else {}
    last: httpx.ConnectError | None = None
    for address in vetted.addresses:
        request = client.build_request(
            method,
            pinned_request_url(vetted, address),
            headers=request_headers,
            content=body,
            extensions=extensions,
            timeout=httpx.Timeout(deadline.remaining(vetted.url)),
        )
        try:
            return client.send(request, stream=True)
        except httpx.ConnectError as exc:
            last = exc
    raise HostToolError(ErrorType.TOOL_ERROR, f"cannot connect to {vetted.url}: {last}")


def _read_body(response: httpx.Response, limit: int, deadline: _Deadline, url: str) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        if time.monotonic() > deadline.end:
            raise deadline.expired(url)
        room = limit - size
        if len(chunk) > room:
            chunks.append(chunk[:room])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _response_headers(response: httpx.Response) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _next_method(status: int, method: str) -> str:
    if status == 303 and method != "HEAD":
        return "GET"
    if status in (301, 302) and method == "POST":
        return "GET"
    return method


def fetch_url(
    url: str,
    *,
    settings: HttpClientSettings,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: str | bytes | None = None,
    timeout_s: float | None = None,
    resolve: Resolver | None = None,
    secret_headers: Sequence[str] = (),
    transport: httpx.BaseTransport | None = None,
) -> FetchResult:
    """Fetch ``url`` under ``settings`` (allowlist, caps); raises :class:`HostToolError`.

    ``secret_headers`` are dropped, like credentials, when a redirect leaves the first origin.
    """
    total = settings.timeout_s if timeout_s is None else min(timeout_s, settings.timeout_s)
    deadline = _Deadline(total)
    current = _check(url, settings, resolve, f"URL {url!r}")
    first_origin = current.origin
    send_headers = httpx.Headers({"User-Agent": settings.user_agent})
    send_headers.update(headers or {})
    payload = body.encode("utf-8") if isinstance(body, str) else body
    dropped: Iterable[str] = (*CREDENTIAL_HEADERS, *(h.lower() for h in secret_headers))
    redirects: list[dict[str, Any]] = []
    try:
        with httpx.Client(
            trust_env=False,
            follow_redirects=False,
            transport=transport,
            limits=httpx.Limits(max_keepalive_connections=0),  # see the module docstring
        ) as client:
            while True:
                response = _send(client, current, method, send_headers, payload, deadline)
                try:
                    location = response.headers.get("location")
                    if response.status_code not in REDIRECT_STATUSES or not location:
                        data, truncated = _read_body(
                            response, settings.max_response_bytes, deadline, current.url
                        )
                        return FetchResult(
                            status=response.status_code,
                            headers=_response_headers(response),
                            body=data,
                            encoding=response.charset_encoding or "utf-8",
                            truncated=truncated,
                            url=current.url,
                            redirects=redirects,
                        )
                    status = response.status_code
                finally:
                    response.close()
                if len(redirects) >= settings.max_redirects:
                    raise HostToolError(
                        ErrorType.TOOL_ERROR, f"more than {settings.max_redirects} redirects from {url}"
                    )
                target = urljoin(current.url, location)
                redirects.append({"status": status, "url": target})
                current = _check(target, settings, resolve, f"redirect from {current.url} to {target!r}")
                new_method = _next_method(status, method)
                if new_method != method:
                    payload = None
                    send_headers.pop("content-type", None)
                    method = new_method
                if current.origin != first_origin:
                    for name in dropped:
                        send_headers.pop(name, None)
    except httpx.TimeoutException:
        raise deadline.expired(current.url) from None
    except httpx.HTTPError as exc:
        raise HostToolError(
            ErrorType.TOOL_ERROR, f"{current.url}: {type(exc).__name__}: {exc}".rstrip(": ")
        ) from None


def fetch(inputs: BaseModel, context: HostContext) -> dict[str, Any]:
    """The ``http_client`` host function: ``{status, headers, body, truncated, url, redirects}``."""
    args = (
        inputs if isinstance(inputs, HttpClientInput) else HttpClientInput.model_validate(inputs.model_dump())
    )
    if not isinstance(args.url, str) or not (args.body is None or isinstance(args.body, str)):
        raise HostToolError(ErrorType.BAD_INPUT, "url and body must be text (an unresolved step reference?)")
    settings = tool_settings(context, TOOL_NAME, HttpClientSettings)
    result = fetch_url(
        args.url,
        settings=settings,
        method=args.method,
        headers=args.headers,
        body=args.body,
        timeout_s=within_step(args.timeout_s, context.services),  # the step's timeout bounds it too
        resolve=context.services.get(RESOLVER_SERVICE),
    )
    return {
        "status": result.status,
        "headers": result.headers,
        "body": "" if args.method == "HEAD" else result.text(),
        "truncated": result.truncated,
        "url": result.url,
        "redirects": result.redirects,
    }
