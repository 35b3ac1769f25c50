"""A locust user that load-tests an OpenAI-compatible chat endpoint with streamed completions.

    locust -f loadtests/model_user.py --headless -u 8 -r 8 --run-time 60s \\
        --host http://127.0.0.1:8000 --model-prompts loadtests/prompts.jsonl

Each :class:`ModelUser` runs a closed loop (``wait_time = constant(0)``): it draws a prompt from the
weighted prompt mix, POSTs ``{model, messages: [{role: user, content}], max_tokens, stream: true,
stream_options: {include_usage: true}}`` to the chat path, reads the server-sent events and fires
locust ``request`` events of type :data:`~loadtests.records.MODEL_TYPE` (``"LLM"``), named after
:data:`~loadtests.records.MODEL_METRICS` (definitions in :mod:`loadtests.llm_metrics`):

* ``ttft``: time to the first content chunk (ms); not fired when the answer had no content;
* ``itl``: the request's mean inter-token (inter-chunk) latency (ms); not fired with < 2 chunks;
* ``e2e``: the whole request (ms), with ``context={"tokens": int, "tokens_per_s": float}``.

A failed request (HTTP status outside 2xx, a connection error or timeout, a ``data: {"error": ...}``
event, malformed data, a stream that ends without ``data: [DONE]``) fires one failed ``e2e`` event
(its exception says why: e.g. ``HTTP 503: <the first 200 characters of the body>``) and nothing else.
No other request events are fired: the user has its own ``httpx`` client rather than HttpUser's
session, which would add a ``POST`` sample per request.

Options (locust command line, ``LOCUST_*`` environment variables or config file; in distributed
mode the master sends them to the workers):

``--model-name`` (default ``planner``)
    The ``model`` of every request. ``planner`` is a model our own chat route
    (:mod:`serving.chat_api`) serves; with the embedded tier it answers task descriptions such as
    ``Compute 6 * 7 then calculate ans / 2``.
``--model-prompts FILE`` (default: ``loadtests/prompts.jsonl`` next to this file)
    The JSONL prompt mix (format in :mod:`loadtests.llm_metrics`).
``--model-path`` (default ``/v1/chat/completions``)
    The chat path, joined to ``--host``; a host ending in ``/v1`` (an OpenAI base URL) is not
    doubled (:func:`~loadtests.llm_metrics.chat_url`).
``--model-max-tokens`` (default 128)
    ``max_tokens`` of the prompts that set none.

The API key comes from the ``OPENAI_API_KEY`` environment variable, when set, as a bearer token; it
is never logged, and it is masked in failure messages that quote a response body.

A bad prompt file fails fast. On the master (or a standalone run) the ``init`` listener loads it and
raises :class:`~loadtests.llm_metrics.PromptFileError` (``prompt file PATH line N: ...``); locust
treats an exception in an ``init`` listener as fatal, logs it and exits with status 1 before any user
starts. A worker loads the file at ``test_start`` (with the master's options); if that fails there
(the file differs on the worker's machine) it logs the error and quits with exit status 1.
"""

from __future__ import annotations

# isort: off
# locust first: importing it monkey-patches ssl and socket for gevent, which must happen before
# httpx (and through it ssl) is imported.
import locust
from locust import User, constant, events, task
from locust.exception import LocustError
from locust.runners import WorkerRunner

# isort: on
import argparse
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import httpx

from loadtests.llm_metrics import (
    DEFAULT_MAX_TOKENS,
    ModelRequestError,
    PromptFileError,
    PromptItem,
    StreamResult,
    chat_body,
    chat_url,
    excerpt,
    http_error,
    load_prompt_mix,
    parse_stream,
    pick,
)
from loadtests.records import MODEL_TYPE

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "planner"
"""The default ``--model-name``: the planner role our own chat route serves."""

DEFAULT_CHAT_PATH = "/v1/chat/completions"
DEFAULT_PROMPTS = Path(__file__).resolve().with_name("prompts.jsonl")
"""The example prompt mix shipped next to this file (the default ``--model-prompts``)."""

API_KEY_ENV = "OPENAI_API_KEY"

CONNECT_TIMEOUT_S = 10.0
"""Longest wait for a TCP (and TLS) connection to the server."""

READ_TIMEOUT_S = 120.0
"""Longest wait for the next bytes of a response (the first token's wait included)."""

REQUEST_TIMEOUT_S = 300.0
"""Longest a whole streamed request may take; checked as lines arrive (a silent server is caught by
:data:`READ_TIMEOUT_S`). A request past it fails with a timeout message."""

ERROR_BODY_MAX_BYTES = 4096
"""Most of an error response's body read (the failure message quotes its start)."""

TTFT, ITL, E2E = "ttft", "itl", "e2e"
"""The request event names (:data:`loadtests.records.MODEL_METRICS`)."""

HTTP_CLIENT_LOGGER = "httpx"
HTTP_CLIENT_LOG_LEVEL = logging.WARNING
"""The httpx logger's level unless locust runs with ``--loglevel DEBUG`` (httpx logs each request)."""

PROMPT_FILE_EXIT_CODE = 1
"""Exit status of a worker whose prompt file is bad (locust's own status for a failed init)."""


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    """The model user's command-line options (see the module docstring)."""
    parser.add_argument(
        "--model-name",
        default=DEFAULT_MODEL,
        env_var="LOCUST_MODEL_NAME",
        help=f"model of the chat requests (default {DEFAULT_MODEL!r}, served by our chat route)",
    )
    parser.add_argument(
        "--model-prompts",
        default=str(DEFAULT_PROMPTS),
        metavar="FILE",
        env_var="LOCUST_MODEL_PROMPTS",
        help="JSONL prompt mix: {prompt, weight (>0, default 1), max_tokens} per line",
    )
    parser.add_argument(
        "--model-path",
        default=DEFAULT_CHAT_PATH,
        env_var="LOCUST_MODEL_PATH",
        help=f"chat completions path, joined to --host (default {DEFAULT_CHAT_PATH})",
    )
    parser.add_argument(
        "--model-max-tokens",
        type=_positive_int,
        default=DEFAULT_MAX_TOKENS,
        env_var="LOCUST_MODEL_MAX_TOKENS",
        help=f"max_tokens of prompts that set none (default {DEFAULT_MAX_TOKENS})",
    )


@dataclass(frozen=True)
class ModelSettings:
    """The model user's options; the defaults when locust runs without parsed options (as a library)."""

    model: str = DEFAULT_MODEL
    prompts: str = str(DEFAULT_PROMPTS)
    path: str = DEFAULT_CHAT_PATH
    max_tokens: int = DEFAULT_MAX_TOKENS

    @classmethod
    def from_environment(cls, environment: locust.env.Environment) -> ModelSettings:
        options = environment.parsed_options
        return cls(
            model=getattr(options, "model_name", None) or DEFAULT_MODEL,
            prompts=str(getattr(options, "model_prompts", None) or DEFAULT_PROMPTS),
            path=getattr(options, "model_path", None) or DEFAULT_CHAT_PATH,
            max_tokens=int(getattr(options, "model_max_tokens", None) or DEFAULT_MAX_TOKENS),
        )


_PROMPT_MIXES: dict[tuple[str, int], list[PromptItem]] = {}
"""Loaded prompt mixes by (file, default max_tokens): each process reads a file once."""


def prompt_mix(settings: ModelSettings) -> list[PromptItem]:
    """The prompt mix of ``settings`` (loaded once per process); raises ``PromptFileError``."""
    key = (settings.prompts, settings.max_tokens)
    if key not in _PROMPT_MIXES:
        _PROMPT_MIXES[key] = load_prompt_mix(settings.prompts, settings.max_tokens)
    return _PROMPT_MIXES[key]


@events.init.add_listener
def quiet_http_client_logs(environment: locust.env.Environment, **_kwargs: Any) -> None:
    """httpx logs every request at INFO; keep that to ``--loglevel DEBUG`` runs."""
    loglevel = str(getattr(environment.parsed_options, "loglevel", "INFO")).upper()
    if loglevel != "DEBUG":
        logging.getLogger(HTTP_CLIENT_LOGGER).setLevel(HTTP_CLIENT_LOG_LEVEL)


@events.init.add_listener
def check_prompt_file(environment: locust.env.Environment, **_kwargs: Any) -> None:
    """Fail fast on a bad prompt file: raising in an ``init`` listener makes locust exit with 1."""
    if isinstance(environment.runner, WorkerRunner):
        return  # a worker gets the master's options with its first spawn message (test_start)
    try:
        prompt_mix(ModelSettings.from_environment(environment))
    except PromptFileError as exc:
        logger.error("model user: %s", exc)
        raise


@events.test_start.add_listener
def load_prompt_file(environment: locust.env.Environment, **_kwargs: Any) -> None:
    """Load the prompt mix for this run's options; on a worker, quit (status 1) if it is bad."""
    try:
        prompt_mix(ModelSettings.from_environment(environment))
    except PromptFileError as exc:
        logger.error("model user: %s; quitting", exc)
        environment.process_exit_code = PROMPT_FILE_EXIT_CODE
        if environment.runner is not None:
            gevent.spawn(environment.runner.quit)  # not from this greenlet, which quit() kills


# --------------------------------------------------------------------------------------------------
# The user
# --------------------------------------------------------------------------------------------------


def _read_error_body(response: httpx.Response) -> str:
    """The start of an error response's body (at most :data:`ERROR_BODY_MAX_BYTES`)."""
    body = b""
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= ERROR_BODY_MAX_BYTES:
            break
    return body[:ERROR_BODY_MAX_BYTES].decode("utf-8", errors="replace")


class ModelUser(User):
    """One closed-loop client of the chat endpoint (see the module docstring)."""

    abstract = False
    wait_time = constant(0)

    def __init__(self, environment: locust.env.Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError(
                "ModelUser needs the server's base URL: --host, or a host attribute on the class"
            )
        self.settings = ModelSettings.from_environment(environment)
        self.api_key = os.environ.get(API_KEY_ENV) or None
        self.url = chat_url(self.host, self.settings.path)
        self.rng = random.Random()
        self.prompts: list[PromptItem] = []
        self.client: httpx.Client | None = None

    def on_start(self) -> None:
        """Load the prompt mix (cached by the listeners) and open this user's HTTP client."""
        self.prompts = prompt_mix(self.settings)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            follow_redirects=False,
        )

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    @task
    def chat(self) -> None:
        """One streamed chat completion of a prompt drawn from the mix, reported as LLM events."""
        item = pick(self.prompts, self.rng)
        started = time.perf_counter()
        try:
            result = self._stream(item, started)
        except ModelRequestError as exc:
            self._fire(E2E, time.perf_counter() - started, exception=exc)
            return
        self._report(result)

    def _stream(self, item: PromptItem, started: float) -> StreamResult:
        """Send the request and parse its stream; raises ``ModelRequestError`` before the stream."""
        assert self.client is not None, "on_start opens the client"
        try:
            with self.client.stream("POST", self.url, json=chat_body(self.settings.model, item)) as response:
                if not response.is_success:
                    raise http_error(response.status_code, _read_error_body(response), self.api_key)
                return parse_stream(
                    response.iter_lines(), time.perf_counter, started=started, timeout_s=REQUEST_TIMEOUT_S
                )
        except httpx.HTTPError as exc:
            detail = excerpt(str(exc), self.api_key) or "no detail"
            raise ModelRequestError(f"request failed: {type(exc).__name__}: {detail}") from exc

    def _report(self, result: StreamResult) -> None:
        """The request events of one parsed stream (only a failed ``e2e`` when it failed)."""
        if not result.ok:
            error = ModelRequestError(result.error or "the stream failed")
            self._fire(E2E, result.e2e_s, length=result.bytes_read, exception=error)
            return
        if result.ttft_s is not None:
            self._fire(TTFT, result.ttft_s)
        if result.itl_s is not None:
            self._fire(ITL, result.itl_s)
        context = {"tokens": result.tokens, "tokens_per_s": result.tokens_per_s}
        self._fire(E2E, result.e2e_s, length=result.bytes_read, context=context)

    def _fire(
        self,
        name: str,
        seconds: float,
        *,
        length: int = 0,
        exception: Exception | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.environment.events.request.fire(
            request_type=MODEL_TYPE,
            name=name,
            response_time=seconds * 1000.0,
            response_length=length,
            exception=exception,
            context=context or {},
        )
