"""http_client end to end against loopback servers started here (allowlisted), through run_step.

Only 127.0.0.1 is ever connected to. Loopback is blocked by the SSRF guard, so each test allowlists
its server as ``127.0.0.1:<port>``; a port left off the allowlist stands for any internal service.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest

from officeray.contracts import ErrorType, PlanStep, StepOutcome
from officeray.tools.catalog import builtin_catalog
from officeray.tools.host_inputs import HttpClientInput, HttpClientSettings
from officeray.tools.spec import HostContext, ToolRuntime
from tools_sandbox.executor import run_step
from tools_sandbox.sandbox import Sandbox

CATALOG = builtin_catalog()
"""The built-in tools (these tests need no plugins)."""

App = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers.items())))
        self.server.app(self)

    do_GET = do_HEAD = do_POST = _dispatch

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: App) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.app = app
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout tests) is not an error here


class LoopbackServer:
    """An HTTP server on 127.0.0.1 in a thread, answering with ``app(handler)``."""

    def __init__(self, app: App) -> None:
        self.httpd = _Server(app)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def allow(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def seen(self) -> list[tuple[str, str, dict[str, str]]]:
        return self.httpd.seen

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NoSandbox:
    def call(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("host tools must not use the sandbox")


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"tests resolve no real names (asked for {host})")


def run(inputs: dict[str, Any], services: dict[str, Any] | None = None, **settings: Any) -> StepOutcome:
    """Run an http_client step; names resolve only through an injected ``dns_resolver``."""
    step = PlanStep(step_id="s1", action="http_client", inputs=inputs, idempotency_key="k1")
    context = HostContext(
        settings=CATALOG.check_settings({"http_client": settings}),
        services={"dns_resolver": no_dns, **(services or {})},
    )
    return run_step(cast(Sandbox, NoSandbox()), step, inputs, Path("."), context)


def ok(outcome: StepOutcome) -> dict[str, Any]:
    assert outcome.error is None, outcome.error
    assert isinstance(outcome.output, dict)
    return outcome.output


def failed(outcome: StepOutcome, error_type: ErrorType) -> str:
    assert outcome.error is not None, outcome.output
    assert outcome.error.type == error_type, outcome.error
    return outcome.error.message


# --------------------------------------------------------------------------------------------------
# The app the tests talk to
# --------------------------------------------------------------------------------------------------


def app(h: Handler) -> None:
    parts = urlsplit(h.path)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    path = parts.path
    if path == "/ok":
        h.send(200, b"hello", {"X-Test": "yes"})
    elif path == "/big":
        h.send(200, b"x" * int(query.get("n", "10000")))
    elif path == "/echo":
        payload = {"method": h.command, "headers": {k.lower(): v for k, v in h.headers.items()}}
        payload["body"] = h.body.decode()
        h.send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    elif path == "/redirect":
        h.send(int(query.get("status", "302")), b"", {"Location": query["to"]})
    elif path.startswith("/chain/"):
        n = int(path.rsplit("/", 1)[1])
        if n == 0:
            h.send(200, b"end of chain")
        else:
            h.send(302, b"", {"Location": f"/chain/{n - 1}"})
    elif path == "/sleep":
        time.sleep(float(query.get("s", "2")))
        h.send(200, b"late")
    elif path == "/drip":
        h.send_response(200)
        h.send_header("Content-Length", "2000")
        h.end_headers()
        for _ in range(20):
            h.wfile.write(b"y" * 100)
            h.wfile.flush()
            time.sleep(0.1)
    elif path == "/latin1":
        h.send(200, "café".encode("latin-1"), {"Content-Type": "text/plain; charset=iso-8859-1"})
    else:
        h.send(404, b"not found")


@pytest.fixture()
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(app) as s:
        yield s


@pytest.fixture()
def other() -> Iterator[LoopbackServer]:
    """A second origin (another port)."""
    with LoopbackServer(app) as s:
        yield s


# --------------------------------------------------------------------------------------------------
# Catalog and settings
# --------------------------------------------------------------------------------------------------


def test_catalog_entry() -> None:
    spec = CATALOG.get_tool("http_client")
    assert spec.runtime == ToolRuntime.HOST
    assert spec.host_function == "tools_sandbox.host_tools.http_client:fetch"
    assert spec.settings_model is HttpClientSettings
    assert spec.input_model is HttpClientInput
    assert spec.outputs == ("status", "body")
    assert callable(spec.load_host_function())


def test_the_catalog_does_not_import_httpx() -> None:
    code = (
        "import sys, officeray.tools.catalog; sys.exit('httpx' in sys.modules or 'rank_bm25' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_settings_defaults_and_validation() -> None:
    checked = CATALOG.check_settings({})
    settings = checked["http_client"]
    assert isinstance(settings, HttpClientSettings)
    assert settings.allow_hosts == []
    assert settings.max_response_bytes == 2 * 1024**2
    assert settings.timeout_s == 20
    assert settings.max_redirects == 5
    assert CATALOG.check_settings({"http_client": {"allow_hosts": ["Svc.Internal:0080"]}})[
        "http_client"
    ].allow_hosts == ["svc.internal:80"]  # type: ignore[attr-defined]
    for bad in ({"allow_hosts": ["http://x/"]}, {"max_redirects": -1}, {"timeout_s": 0}, {"nope": 1}):
        with pytest.raises(ValueError, match=r"tools\.http_client\."):
            CATALOG.check_settings({"http_client": bad})


@pytest.mark.parametrize(
    ("inputs", "why"),
    [
        ({"url": "http://example.com/", "headers": {"Host": "evil"}}, "may not be set"),
        ({"url": "http://example.com/", "headers": {"connection": "close"}}, "may not be set"),
        ({"url": "http://example.com/", "headers": {"Transfer-Encoding": "chunked"}}, "may not be set"),
        ({"url": "http://example.com/", "headers": {"X-A": "a\r\nHost: evil"}}, "invalid value"),
        ({"url": "http://example.com/", "headers": {"bad name": "x"}}, "invalid header name"),
        ({"url": "http://example.com/", "body": "x"}, "only sent with POST"),
        ({"url": "http://example.com/", "method": "DELETE"}, "method"),
        ({"url": "http://example.com/", "timeout_s": 0}, "timeout_s"),
        ({"url": "http://example.com/", "nope": 1}, "nope"),
    ],
)
def test_bad_inputs(inputs: dict[str, Any], why: str) -> None:
    assert why in failed(run(inputs), ErrorType.BAD_INPUT)


# --------------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------------


def test_get(server: LoopbackServer) -> None:
    out = ok(run({"url": f"{server.origin}/ok"}, allow_hosts=[server.allow]))
    assert out["status"] == 200
    assert out["body"] == "hello"
    assert out["truncated"] is False
    assert out["url"] == f"{server.origin}/ok"
    assert out["redirects"] == []
    assert out["headers"]["x-test"] == "yes"
    assert out["headers"]["content-type"].startswith("text/plain")
    method, path, headers = server.seen[-1]
    assert (method, path) == ("GET", "/ok")
    assert headers["Host"] == server.allow
    assert headers["User-Agent"].startswith("officeray-http-client")


def test_status_codes_are_results_not_errors(server: LoopbackServer) -> None:
    out = ok(run({"url": f"{server.origin}/missing"}, allow_hosts=[server.allow]))
    assert out["status"] == 404
    assert out["body"] == "not found"


def test_head_and_post(server: LoopbackServer) -> None:
    head = ok(run({"url": f"{server.origin}/ok", "method": "head"}, allow_hosts=[server.allow]))
    assert head["status"] == 200
    assert head["body"] == ""
    post = ok(
        run(
            {
                "url": f"{server.origin}/echo",
                "method": "POST",
                "body": '{"a": 1}',
                "headers": {"Content-Type": "application/json", "X-Trace": "t1"},
            },
            allow_hosts=[server.allow],
        )
    )
    echoed = json.loads(post["body"])
    assert echoed["method"] == "POST"
    assert echoed["body"] == '{"a": 1}'
    assert echoed["headers"]["x-trace"] == "t1"
    assert echoed["headers"]["content-type"] == "application/json"


def test_charset_is_honoured(server: LoopbackServer) -> None:
    assert ok(run({"url": f"{server.origin}/latin1"}, allow_hosts=[server.allow]))["body"] == "café"


def test_body_cap(server: LoopbackServer) -> None:
    out = ok(
        run({"url": f"{server.origin}/big?n=10000"}, allow_hosts=[server.allow], max_response_bytes=1000)
    )
    assert out["truncated"] is True
    assert out["body"] == "x" * 1000
    exact = ok(
        run({"url": f"{server.origin}/big?n=1000"}, allow_hosts=[server.allow], max_response_bytes=1000)
    )
    assert exact["truncated"] is False
    assert len(exact["body"]) == 1000


def test_loopback_is_refused_unless_allowlisted(server: LoopbackServer) -> None:
    message = failed(run({"url": f"{server.origin}/ok"}), ErrorType.BAD_INPUT)
    assert "loopback" in message
    assert server.seen == []  # never connected
    message = failed(run({"url": f"http://localhost:{server.port}/ok"}), ErrorType.BAD_INPUT)
    assert "internal name" in message
    message = failed(run({"url": f"http://2130706433:{server.port}/ok"}), ErrorType.BAD_INPUT)
    assert "loopback" in message
    assert server.seen == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "ftp://127.0.0.1/",
        "data:text/plain,hi",
        "FILE:///etc/hosts",
    ],
)
def test_non_http_schemes_are_refused(url: str) -> None:
    assert "scheme" in failed(run({"url": url}, allow_hosts=["127.0.0.1"]), ErrorType.BAD_INPUT)


# --------------------------------------------------------------------------------------------------
# Redirects
# --------------------------------------------------------------------------------------------------


def test_redirect_to_an_allowed_path_is_followed(server: LoopbackServer) -> None:
    out = ok(run({"url": f"{server.origin}/redirect?to=/ok"}, allow_hosts=[server.allow]))
    assert out["status"] == 200
    assert out["body"] == "hello"
    assert out["url"] == f"{server.origin}/ok"
    assert out["redirects"] == [{"status": 302, "url": f"{server.origin}/ok"}]


def test_redirect_to_a_loopback_port_off_the_allowlist_is_refused(server: LoopbackServer) -> None:
    internal = unused_port()
    outcome = run(
        {"url": f"{server.origin}/redirect?to=http://127.0.0.1:{internal}/admin"}, allow_hosts=[server.allow]
    )
    message = failed(outcome, ErrorType.BAD_INPUT)
    assert "redirect" in message
    assert "loopback" in message
    assert str(internal) in message


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://0x7f.1/",
        "file:///etc/passwd",
        "http://user:pw@example.com/",
    ],
)
def test_redirects_to_refused_urls(server: LoopbackServer, target: str) -> None:
    outcome = run({"url": f"{server.origin}/redirect?to={target}"}, allow_hosts=[server.allow])
    assert "refused" in failed(outcome, ErrorType.BAD_INPUT)
    assert len(server.seen) == 1


def test_credentials_are_dropped_on_a_cross_origin_redirect(
    server: LoopbackServer, other: LoopbackServer
) -> None:
    secrets = {"Authorization": "Bearer s3cret", "Cookie": "session=abc", "X-Keep": "kept"}
    out = ok(
        run(
            {"url": f"{server.origin}/redirect?to={other.origin}/echo", "headers": secrets},
            allow_hosts=[server.allow, other.allow],
        )
    )
    echoed = json.loads(out["body"])["headers"]
    assert "authorization" not in echoed
    assert "cookie" not in echoed
    assert echoed["x-keep"] == "kept"
    assert echoed["host"] == other.allow
    assert out["url"] == f"{other.origin}/echo"
    assert server.seen[0][2]["Authorization"] == "Bearer s3cret"  # the first origin got them


def test_credentials_are_kept_on_a_same_origin_redirect(server: LoopbackServer) -> None:
    out = ok(
        run(
            {"url": f"{server.origin}/redirect?to=/echo", "headers": {"Authorization": "Bearer s3cret"}},
            allow_hosts=[server.allow],
        )
    )
    assert json.loads(out["body"])["headers"]["authorization"] == "Bearer s3cret"


def test_see_other_after_post_continues_as_get(server: LoopbackServer) -> None:
    out = ok(
        run(
            {
                "url": f"{server.origin}/redirect?status=303&to=/echo",
                "method": "POST",
                "body": "data",
                "headers": {"Content-Type": "text/plain"},
            },
            allow_hosts=[server.allow],
        )
    )
    echoed = json.loads(out["body"])
    assert echoed["method"] == "GET"
    assert echoed["body"] == ""
    assert "content-type" not in echoed["headers"]


def test_307_keeps_method_and_body(server: LoopbackServer) -> None:
    out = ok(
        run(
            {"url": f"{server.origin}/redirect?status=307&to=/echo", "method": "POST", "body": "data"},
            allow_hosts=[server.allow],
        )
    )
    echoed = json.loads(out["body"])
    assert (echoed["method"], echoed["body"]) == ("POST", "data")


def test_redirect_cap(server: LoopbackServer) -> None:
    out = ok(run({"url": f"{server.origin}/chain/3"}, allow_hosts=[server.allow], max_redirects=3))
    assert out["body"] == "end of chain"
    assert [r["url"] for r in out["redirects"]] == [f"{server.origin}/chain/{n}" for n in (2, 1, 0)]
    message = failed(
        run({"url": f"{server.origin}/chain/10"}, allow_hosts=[server.allow], max_redirects=3),
        ErrorType.TOOL_ERROR,
    )
    assert "more than 3 redirects" in message
    assert len(server.seen) == 4 + 4  # chain/3..chain/0, then chain/10..chain/7


# --------------------------------------------------------------------------------------------------
# Time and connection failures
# --------------------------------------------------------------------------------------------------


def test_timeout(server: LoopbackServer) -> None:
    started = time.monotonic()
    outcome = run({"url": f"{server.origin}/sleep?s=2"}, allow_hosts=[server.allow], timeout_s=0.3)
    assert "0.3s" in failed(outcome, ErrorType.TIMEOUT)
    assert time.monotonic() - started < 1.5


def test_input_timeout_is_capped_by_the_settings(server: LoopbackServer) -> None:
    outcome = run(
        {"url": f"{server.origin}/sleep?s=2", "timeout_s": 60}, allow_hosts=[server.allow], timeout_s=0.3
    )
    failed(outcome, ErrorType.TIMEOUT)
    outcome = run({"url": f"{server.origin}/sleep?s=2", "timeout_s": 0.2}, allow_hosts=[server.allow])
    failed(outcome, ErrorType.TIMEOUT)


def test_total_time_cap_covers_a_slow_body(server: LoopbackServer) -> None:
    started = time.monotonic()
    outcome = run({"url": f"{server.origin}/drip"}, allow_hosts=[server.allow], timeout_s=0.5)
    failed(outcome, ErrorType.TIMEOUT)
    assert time.monotonic() - started < 1.5


def test_connection_refused_is_a_tool_error() -> None:
    port = unused_port()
    message = failed(
        run({"url": f"http://127.0.0.1:{port}/"}, allow_hosts=[f"127.0.0.1:{port}"]), ErrorType.TOOL_ERROR
    )
    assert "cannot connect" in message


# --------------------------------------------------------------------------------------------------
# DNS pinning
# --------------------------------------------------------------------------------------------------


class Resolver:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.table[host]


def test_a_name_resolving_to_loopback_is_refused(server: LoopbackServer) -> None:
    resolver = Resolver({"svc.test": ["127.0.0.1"]})
    outcome = run({"url": f"http://svc.test:{server.port}/ok"}, services={"dns_resolver": resolver})
    assert "resolves to 127.0.0.1" in failed(outcome, ErrorType.BAD_INPUT)
    assert server.seen == []


def test_the_connection_goes_to_the_vetted_address_with_the_name_as_host(server: LoopbackServer) -> None:
    resolver = Resolver({"svc.test": ["127.0.0.1"]})
    out = ok(
        run(
            {"url": f"http://svc.test:{server.port}/redirect?to=/echo"},
            services={"dns_resolver": resolver},
            allow_hosts=[f"svc.test:{server.port}"],
        )
    )
    assert json.loads(out["body"])["headers"]["host"] == f"svc.test:{server.port}"
    assert out["url"] == f"http://svc.test:{server.port}/echo"
    assert resolver.asked == ["svc.test", "svc.test"]  # once per hop, by the guard only


def test_tls_requests_carry_the_name_for_sni() -> None:
    """No TLS server here: a mock transport shows what httpx would be asked to do."""
    import httpx

    from tools_sandbox.host_tools.http_client import fetch_url

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="ok")

    result = fetch_url(
        "https://api.example.com/v1?q=1",
        settings=HttpClientSettings(),
        resolve=lambda host, port: ["93.184.216.34"],
        transport=httpx.MockTransport(handler),
    )
    assert result.status == 200
    (request,) = seen
    assert str(request.url) == "https://93.184.216.34/v1?q=1"
    assert request.headers["host"] == "api.example.com"
    assert request.extensions["sni_hostname"] == "api.example.com"
