"""A loopback OpenAI-compatible server for tests: ``POST /v1/chat/completions`` and ``GET /v1/models``.

It listens on 127.0.0.1 only, on a free port, in a background thread, and starts and stops in
milliseconds::

    with FakeOpenAIServer(mode="plan") as server:
        tier = OpenAITier(OpenAITierConfig(tier="openai", model="fake", base_url=server.base_url))
        ...
        server.set_mode("rate_limit", retry_after="2")
        assert server.requests[-1]["body"]["response_format"]["type"] == "json_schema"

Modes (``mode=`` or :meth:`FakeOpenAIServer.set_mode`):

``plan``
    The last user message is a planner request as JSON (``task_id``, ``description``,
    ``iteration``, ``allowed_tools``, ``feedback``): the answer is the embedded planner's plan
    (:func:`serving.tiers.embedded.plan_task`) as JSON. A task the embedded planner cannot plan
    gets ``{"error": "<its message>"}``; a message that is not such JSON gets ``{"echo": text}``.
``published_plan``
    As ``plan``, but the plan is rewritten the way another model might write it under the published
    plan schema: integer ``priority``, ``outputs_expectation`` as a JSON Schema, step ids
    ``"step 1"``, ``"step 2"``..., no ``confidence`` or ``parallelizable``, unknown properties added.
``review``
    The same with a reviewer request (``task_id``, ``description``, ``iteration``, ``plan``,
    ``results``) and :func:`serving.tiers.embedded.review_results`.
``auto``
    ``review`` for a reviewer request, ``plan`` for anything else (one server for both roles).
``text``
    ``echo: <last user message>``.
``garbage``
    ``I am not JSON {``.
``schema_violation``
    Valid JSON that is not a plan.
``rate_limit``
    HTTP 429 with ``Retry-After: <retry_after>`` (seconds or an HTTP-date; default ``"1"``).
``server_error``
    HTTP 500.
``http_error``
    HTTP ``status`` (default 400) with ``error_message``; ``{key}`` in it is replaced by the bearer
    token received (to check that clients never repeat a key a provider echoes).
``hang``
    Waits ``hang_s`` seconds (default 30), then answers as ``plan``. Stopping the server ends the
    wait at once.
``stream``
    A ``text/event-stream`` answer in the OpenAI streaming format, ending with ``data: [DONE]``:
    the chunks ``stream_chunks`` (default: the words of ``echo: <last user message>``), with
    ``stream_delay_s`` between them. Any other answering mode also streams when the request has
    ``"stream": true`` (its content cut into word chunks).

Options for every mode: ``fail_times=N`` answers the next N chat requests with ``fail_status``
(429, with ``Retry-After``, by default; or e.g. 500) before the mode answers (for retry tests), and
``delay_s`` waits before every answer. Usage numbers are real: whitespace-separated tokens of the
messages and of the answer.

Every request is recorded in :attr:`FakeOpenAIServer.requests` as ``{"method", "path", "headers"
(lower-case names), "body" (parsed JSON or None)}``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from officeray.contracts import PlanRequest, ReviewRequest
from officeray.errors import PlanningError
from serving.tiers.embedded import plan_task, review_results

MODES = frozenset(
    {
        "plan",
        "published_plan",
        "review",
        "auto",
        "text",
        "garbage",
        "schema_violation",
        "rate_limit",
        "server_error",
        "http_error",
        "hang",
        "stream",
    }
)

GARBAGE_CONTENT = "I am not JSON {"
SCHEMA_VIOLATION_CONTENT = json.dumps({"plan": "do the thing", "steps": "all of them", "confidence": "high"})

_DEFAULT_OPTIONS: dict[str, Any] = {
    "retry_after": "1",
    "status": 400,
    "error_message": "bad request",
    "hang_s": 30.0,
    "stream_chunks": None,
    "stream_delay_s": 0.0,
    "fail_times": 0,
    "fail_status": 429,
    "delay_s": 0.0,
}


def count_tokens(text: str) -> int:
    """Tokens as this server counts them: whitespace-separated words."""
    return len(text.split())


def _last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _prompt_tokens(body: dict[str, Any]) -> int:
    total = 0
    for message in body.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            total += count_tokens(message["content"])
    return total


def _known_fields(data: dict[str, Any], model: type[PlanRequest] | type[ReviewRequest]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in model.model_fields}


def _plan_answer(text: str) -> str:
    try:
        data = json.loads(text)
        request = PlanRequest.model_validate(_known_fields(data, PlanRequest))
    except (json.JSONDecodeError, ValidationError, TypeError, AttributeError):
        return json.dumps({"echo": text})
    try:
        return plan_task(request).model_dump_json()
    except PlanningError as exc:
        return json.dumps({"error": str(exc)})


def _published_style(plan_json: str) -> str:
    """A plan as another model might write it under the published schema (see ``published_plan``)."""
    plan = json.loads(plan_json)
    if "steps" not in plan:
        return plan_json
    renamed = {step["step_id"]: f"step {i}" for i, step in enumerate(plan["steps"], start=1)}
    text = json.dumps(plan)
    for old, new in renamed.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    plan = json.loads(text)
    plan.pop("confidence", None)
    plan["metadata"]["priority"] = 5
    plan["reasoning"] = "an unknown property a model may add"
    for step in plan["steps"]:
        keys = (step.pop("outputs_expectation", None) or {}).get("keys", [])
        step["outputs_expectation"] = {"type": "object", "required": keys} if keys else None
        step.pop("parallelizable", None)
        step["note"] = "another unknown property"
    return json.dumps(plan)


def _review_request(text: str) -> ReviewRequest | None:
    try:
        data = json.loads(text)
        return ReviewRequest.model_validate(_known_fields(data, ReviewRequest))
    except (json.JSONDecodeError, ValidationError, TypeError, AttributeError):
        return None


def _review_answer(text: str) -> str:
    request = _review_request(text)
    if request is None:
        return json.dumps({"echo": text})
    return review_results(request).model_dump_json()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # many clients connect at once (concurrency and load tests)
    owner: FakeOpenAIServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 10  # idle keep-alive connections end on their own

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ---------------------------------------------------------------------------------

    def _read_body(self) -> tuple[bytes, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            return raw, json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return raw, None

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_error_json(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        kind = {429: "rate_limit_exceeded", 500: "server_error"}.get(status, "invalid_request_error")
        self._send_json(status, {"error": {"message": message, "type": kind, "code": kind}}, headers)

    # -- routes -----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        owner = self.server.owner
        owner._record("GET", self.path, dict(self.headers.items()), None)
        if self.path.rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": [{"id": owner.model, "object": "model"}]})
        else:
            self._send_error_json(404, f"no route {self.path}")

    def do_POST(self) -> None:
        owner = self.server.owner
        _, body = self._read_body()
        owner._record("POST", self.path, dict(self.headers.items()), body)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_error_json(404, f"no route {self.path}")
            return
        if not isinstance(body, dict):
            self._send_error_json(400, "the body is not a JSON object")
            return
        try:
            self._chat(owner, body)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True  # the client gave up (e.g. its timeout)

    def _chat(self, owner: FakeOpenAIServer, body: dict[str, Any]) -> None:
        mode, options, fail_status = owner._next_answer()
        if options["delay_s"] > 0 and owner._wait(options["delay_s"]):
            return
        if fail_status is not None:
            self._fail(fail_status, options)
            return
        if mode == "rate_limit":
            self._fail(429, options)
            return
        if mode == "server_error":
            self._fail(500, options)
            return
        if mode == "http_error":
            key = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            self._send_error_json(int(options["status"]), str(options["error_message"]).replace("{key}", key))
            return
        if mode == "hang":
            if owner._wait(float(options["hang_s"])):
                return  # stopping: drop the request
            mode = "plan"
        content = owner._content(mode, body)
        if mode == "stream" or body.get("stream"):
            chunks = options["stream_chunks"] if mode == "stream" else None
            self._stream(owner, body, content, chunks, float(options["stream_delay_s"]))
            return
        self._send_json(200, owner._completion(body, content))

    def _fail(self, status: int, options: dict[str, Any]) -> None:
        if status == 429:
            self._send_error_json(
                429, "Rate limit reached for requests", {"Retry-After": str(options["retry_after"])}
            )
        else:
            self._send_error_json(status, "The server had an error while processing your request.")

    def _stream(
        self,
        owner: FakeOpenAIServer,
        body: dict[str, Any],
        content: str,
        chunks: list[str] | None,
        delay_s: float,
    ) -> None:
        if chunks is None:
            words = content.split(" ")
            chunks = [w if i == 0 else " " + w for i, w in enumerate(words)]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())

        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> None:
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.get("model") or owner.model,
                "choices": choices,
            }
            if usage is not None:
                chunk["usage"] = usage
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for index, piece in enumerate(chunks):
            if index and delay_s > 0 and owner._wait(delay_s):
                return
            event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        stream_options = body.get("stream_options")
        if isinstance(stream_options, dict) and stream_options.get("include_usage"):
            event([], owner._usage(body, "".join(chunks)))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 for tests (see the module docstring)."""

    def __init__(self, mode: str = "plan", *, model: str = "fake-model", **options: Any) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._mode = "plan"
        self._options = dict(_DEFAULT_OPTIONS)
        self._failures_left = 0
        self.requests: list[dict[str, Any]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.set_mode(mode, **options)

    # -- configuration ----------------------------------------------------------------------------

    def set_mode(self, mode: str, **options: Any) -> None:
        """Switch the mode; ``options`` (see the module docstring) are set too, others kept."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(sorted(MODES))}")
        unknown = set(options) - set(_DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown options: {', '.join(sorted(unknown))}")
        with self._lock:
            self._mode = mode
            self._options.update(options)
            if "fail_times" in options:
                self._failures_left = int(options["fail_times"])

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def failures_left(self) -> int:
        return self._failures_left

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The recorded ``POST .../chat/completions`` requests."""
        return [r for r in list(self.requests) if r["path"].rstrip("/").endswith("/chat/completions")]

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not running (use it as a context manager, or start())")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeOpenAIServer:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # ends hangs and stream delays at once
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- used by the handler ----------------------------------------------------------------------

    def _record(self, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        entry = {
            "method": method,
            "path": path,
            "headers": {k.lower(): v for k, v in headers.items()},
            "body": body,
        }
        with self._lock:
            self.requests.append(entry)

    def _next_answer(self) -> tuple[str, dict[str, Any], int | None]:
        """The mode and options for this request, and the failure status if it must fail."""
        with self._lock:
            fail_status = None
            if self._failures_left > 0:
                self._failures_left -= 1
                fail_status = int(self._options["fail_status"])
            return self._mode, dict(self._options), fail_status

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; True when the server is stopping (the caller should give up)."""
        return self._stopping.wait(seconds)

    def _content(self, mode: str, body: dict[str, Any]) -> str:
        text = _last_user_text(body)
        if mode == "auto":
            mode = "review" if _review_request(text) is not None else "plan"
        if mode == "plan":
            return _plan_answer(text)
        if mode == "published_plan":
            return _published_style(_plan_answer(text))
        if mode == "review":
            return _review_answer(text)
        if mode == "garbage":
            return GARBAGE_CONTENT
        if mode == "schema_violation":
            return SCHEMA_VIOLATION_CONTENT
        return f"echo: {text}"

    def _usage(self, body: dict[str, Any], content: str) -> dict[str, int]:
        prompt = _prompt_tokens(body)
        completion = count_tokens(content)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _completion(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": self._usage(body, content),
        }
