"""The pure parts of the model user (:mod:`loadtests.model_user`): prompt mixes and SSE stream metrics.

Nothing here imports locust (whose import monkey-patches the process for gevent), so tests and
reports can import this module freely.

Prompt mix file (JSON lines, ``--model-prompts``): one object per line::

    {"prompt": "Compute 6 * 7 then calculate ans / 2", "weight": 3, "max_tokens": 64}

``prompt`` is a non-empty string; ``weight`` a number > 0 (default 1) giving the prompt's share of
requests; ``max_tokens`` an integer >= 1 (default: the caller's default, ``--model-max-tokens``).
Blank lines are skipped; any other problem (unreadable file, bad JSON, an unknown key, a bad value,
no prompts at all) raises :class:`PromptFileError` naming the file and the line.

Stream metrics (:func:`parse_stream`), as llmperf and ``vllm bench serve`` define them:

* **ttft**: from the request's start to the first chunk whose ``delta.content`` is non-empty;
* **itl**: the mean gap between consecutive content chunks after the first (one value per request;
  undefined with fewer than two content chunks);
* **e2e**: from the request's start to ``data: [DONE]`` (or the end of the stream);
* **tokens**: ``usage.completion_tokens`` when the server sent usage, else the number of content
  chunks (a chunk is about one token on vLLM and OpenAI; it is a word on the embedded tier);
* **tokens_per_s**: ``tokens / (e2e - ttft)``, output tokens per second after the first token
  (llmperf's definition); 0.0 when that time is not positive or there was no content.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MAX_TOKENS = 128
"""``max_tokens`` of a prompt line that gives none (and the default of ``--model-max-tokens``)."""

DEFAULT_WEIGHT = 1.0
"""``weight`` of a prompt line that gives none."""

MAX_PROMPT_FILE_BYTES = 16 * 1024 * 1024
"""Largest prompt mix file read (a mix is a handful of prompts, not a data set)."""

PROMPT_KEYS = frozenset({"prompt", "weight", "max_tokens"})
"""The keys a prompt line may have; any other key is refused (it is most likely a typo)."""

ERROR_EXCERPT_CHARS = 200
"""How much of an error body or error event a failure message quotes."""

DONE_PAYLOAD = "[DONE]"
"""The ``data:`` payload that ends an OpenAI stream."""

OPENAI_BASE_SUFFIX = "/v1"
"""The path an OpenAI base URL ends with (``http://host:8000/v1``); see :func:`chat_url`."""


class PromptFileError(ValueError):
    """A prompt mix file that cannot be used; the message names the file (and the line)."""


class ModelRequestError(Exception):
    """Why one model request failed (HTTP status, connection, error event, truncated stream)."""


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a mix: its text, its relative weight and the ``max_tokens`` it is sent with."""

    prompt: str
    weight: float = DEFAULT_WEIGHT
    max_tokens: int = DEFAULT_MAX_TOKENS


# --------------------------------------------------------------------------------------------------
# Prompt mix
# --------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _prompt_item(data: Any, default_max_tokens: int) -> PromptItem:
    """A :class:`PromptItem` from one parsed line; raises ``ValueError`` saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - PROMPT_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(PROMPT_KEYS))}")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError('"prompt" must be a non-empty string')
    weight = data.get("weight", DEFAULT_WEIGHT)
    if not _is_number(weight) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f'"weight" must be a number > 0, got {weight!r}')
    max_tokens = data.get("max_tokens", default_max_tokens)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f'"max_tokens" must be an integer >= 1, got {max_tokens!r}')
    return PromptItem(prompt=prompt, weight=float(weight), max_tokens=max_tokens)


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_PROMPT_FILE_BYTES:
            raise PromptFileError(
                f"prompt file {path}: {size} bytes, more than the {MAX_PROMPT_FILE_BYTES} allowed"
            )
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptFileError(f"prompt file {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"prompt file {path}: not UTF-8 text ({exc.reason})") from None


def load_prompt_mix(path: str | Path, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> list[PromptItem]:
    """The prompts of a JSONL prompt mix file (format in the module docstring), in file order.

    Raises :class:`PromptFileError` with ``prompt file PATH line N: ...`` for the first bad line, or
    ``prompt file PATH: ...`` for a missing, unreadable or empty file.
    """
    path = Path(path)
    items = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(_prompt_item(json.loads(line), default_max_tokens))
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"prompt file {path} line {number}: not valid JSON ({exc.msg})") from None
        except ValueError as exc:
            raise PromptFileError(f"prompt file {path} line {number}: {exc}") from None
    if not items:
        raise PromptFileError(f"prompt file {path}: no prompts (every line is blank)")
    return items


def pick(items: Sequence[PromptItem], rng: random.Random) -> PromptItem:
    """One prompt drawn from ``items`` with probability proportional to its weight."""
    if not items:
        raise ValueError("cannot pick from an empty prompt mix")
    return rng.choices(items, weights=[item.weight for item in items], k=1)[0]


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


def chat_url(host: str, path: str) -> str:
    """The URL a chat request goes to: ``host`` + ``path``, without doubling an OpenAI ``/v1``.

    ``path`` may be a full URL (used as is). A host given as an OpenAI base URL
    (``http://h:8000/v1``) with the default path ``/v1/chat/completions`` gives
    ``http://h:8000/v1/chat/completions``, not ``.../v1/v1/...``.
    """
    if path.startswith(("http://", "https://")):
        return path
    base = host.rstrip("/")
    path = "/" + path.lstrip("/")
    if base.endswith(OPENAI_BASE_SUFFIX) and path.startswith(OPENAI_BASE_SUFFIX + "/"):
        base = base[: -len(OPENAI_BASE_SUFFIX)]
    return base + path


def chat_body(model: str, item: PromptItem) -> dict[str, Any]:
    """The streaming chat-completions request for one prompt (usage asked for in the stream)."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": item.prompt}],
        "max_tokens": item.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def excerpt(text: str, secret: str | None = None, limit: int = ERROR_EXCERPT_CHARS) -> str:
    """The first ``limit`` characters of ``text`` on one line, with ``secret`` (an API key) masked."""
    if secret:
        text = text.replace(secret, "***")
    return " ".join(text.split())[:limit]


def http_error(status: int, body: str, secret: str | None = None) -> ModelRequestError:
    """The failure of an HTTP error answer: its status and the start of its body."""
    return ModelRequestError(f"HTTP {status}: {excerpt(body, secret) or '(empty body)'}")


# --------------------------------------------------------------------------------------------------
# Stream parsing
# --------------------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """What :func:`parse_stream` measured (times in seconds from the request's start)."""

    ttft_s: float | None = None
    """Time to the first content chunk; ``None`` when there was no content."""
    itl_s: float | None = None
    """Mean gap between content chunks after the first; ``None`` with fewer than two."""
    e2e_s: float = 0.0
    """Time to ``[DONE]``, the error event, the timeout or the end of the stream."""
    content_chunks: int = 0
    usage_tokens: int | None = None
    """``usage.completion_tokens`` when the server sent usage."""
    done: bool = False
    """Whether ``data: [DONE]`` arrived."""
    error: str | None = None
    """Why the stream failed (an error event, bad data, a timeout, no ``[DONE]``); ``None`` if fine."""
    bytes_read: int = 0
    """Characters of the lines read (the response length locust reports)."""

    @property
    def ok(self) -> bool:
        return self.done and self.error is None

    @property
    def tokens(self) -> int:
        """Output tokens: the server's usage count, else the number of content chunks."""
        return self.usage_tokens if self.usage_tokens is not None else self.content_chunks

    @property
    def tokens_per_s(self) -> float:
        """``tokens / (e2e - ttft)``; 0.0 when there was no content or no time after it."""
        if self.ttft_s is None or self.e2e_s - self.ttft_s <= 0:
            return 0.0
        return self.tokens / (self.e2e_s - self.ttft_s)


def _data_payload(line: str) -> str | None:
    """The payload of an SSE ``data:`` line; ``None`` for blank, comment and other field lines."""
    if not line.startswith("data:"):
        return None
    payload = line[len("data:") :]
    return payload[1:] if payload.startswith(" ") else payload


def _error_text(event: dict[str, Any]) -> str:
    error = event.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return excerpt(str(message) if message else json.dumps(error))


def _usage_tokens(event: dict[str, Any]) -> int | None:
    usage = event.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None


def _has_content(event: dict[str, Any]) -> bool:
    for choice in event.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            return True
    return False


class _Timing:
    """Content chunk times, turned into ttft and itl at the end."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first: float | None = None
        self.last: float | None = None
        self.count = 0

    def content(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1

    def finish(self, result: StreamResult, now: float) -> StreamResult:
        result.e2e_s = now - self.started
        result.content_chunks = self.count
        if self.first is not None:
            result.ttft_s = self.first - self.started
        if self.first is not None and self.last is not None and self.count >= 2:
            result.itl_s = (self.last - self.first) / (self.count - 1)
        return result


def _event(payload: str) -> dict[str, Any]:
    try:
        event = json.loads(payload)
    except json.JSONDecodeError:
        raise ValueError(f"malformed stream data (not JSON): {excerpt(payload)}") from None
    if not isinstance(event, dict):
        raise ValueError(f"malformed stream data (not a JSON object): {excerpt(payload)}")
    return event


def parse_stream(
    lines: Iterable[bytes | str],
    clock: Callable[[], float],
    *,
    started: float | None = None,
    timeout_s: float | None = None,
) -> StreamResult:
    """Read an OpenAI chat-completions SSE stream line by line and measure it (module docstring).

    ``clock`` is read when each content chunk arrives and at the end (``time.perf_counter`` in the
    model user, a fake in tests); ``started`` is the request's start on that clock (default: now).
    Each ``data:`` line is one JSON chunk; blank, comment (``:``) and other field lines are ignored.
    The stream fails (``error`` set) on an ``{"error": ...}`` event, data that is not a JSON object,
    running past ``timeout_s`` (checked as lines arrive), or ending without ``data: [DONE]``. Reading
    stops at ``[DONE]`` or the first failure.
    """
    timing = _Timing(clock() if started is None else started)
    result = StreamResult()
    for raw in lines:
        line = (raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw).rstrip("\r\n")
        result.bytes_read += len(line)
        now = clock()
        if timeout_s is not None and now - timing.started > timeout_s:
            result.error = f"no [DONE] within the request timeout of {timeout_s:g} s"
            return timing.finish(result, now)
        payload = _data_payload(line)
        if payload is None:
            continue
        if payload.strip() == DONE_PAYLOAD:
            result.done = True
            return timing.finish(result, now)
        try:
            event = _event(payload)
        except ValueError as exc:
            result.error = str(exc)
            return timing.finish(result, now)
        if "error" in event:
            result.error = f"error event in the stream: {_error_text(event)}"
            return timing.finish(result, now)
        tokens = _usage_tokens(event)
        if tokens is not None:
            result.usage_tokens = tokens
        if _has_content(event):
            timing.content(now)
    result.error = f"the stream ended without data: [DONE] (after {timing.count} content chunks)"
    return timing.finish(result, clock())
