"""The ``openai`` tier: any OpenAI-compatible chat-completions endpoint through the ``openai`` SDK.

That covers OpenAI itself, the compatible endpoints of Gemini, Mistral and Groq, and local servers
(Ollama, ``vllm serve``). The SDK's own retries are off (``max_retries=0``): the router retries, so
that backoff, Retry-After, circuit breakers and the fallback to the next tier live in one place.

Failures are mapped onto the typed errors of :mod:`serving.tiers.base`:

=====================================  ==========================================================
SDK / HTTP                             tier error
=====================================  ==========================================================
429 (``RateLimitError``)               :class:`RateLimitedError`, ``retry_after_s`` from
                                       ``Retry-After`` (seconds or HTTP-date) or ``retry-after-ms``
5xx, 408, 409                          :class:`ServerError`
other 4xx (400, 401, 403, 404, 422)    :class:`TierError` (not retryable)
``APITimeoutError``, own deadline      :class:`TierTimeoutError`
``APIConnectionError``                 :class:`ServerError`
no choice / no content / bad JSON      :class:`MalformedAnswerError`
no API key in the environment          :class:`TierUnavailableError` (names the variable)
=====================================  ==========================================================

The API key is read from the environment variable named by ``api_key_env`` and never appears in
an error message (the provider's message is redacted too, in case it echoes the key).

With ``scrub_prompts`` (``telemetry.redaction.scrub_external_prompts``) every message's content is
passed through :func:`officeray.redaction.scrub_prompt` before it is sent: e-mails, phone numbers,
card numbers, IBANs, keys and tokens and IP addresses never reach the provider. That holds for every
``openai`` tier, a loopback one included.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn
from urllib.parse import urlsplit

import openai

from officeray.config import OpenAITierConfig
from officeray.redaction import scrub_prompt
from serving.tiers.base import (
    MalformedAnswerError,
    ModelAnswer,
    ModelCall,
    RateLimitedError,
    ServerError,
    TierError,
    TierTimeoutError,
    TierUnavailableError,
    Usage,
)

LOCAL_PLACEHOLDER_KEY = "not-needed"
"""Key sent to a loopback server (Ollama, ``vllm serve``) when no ``api_key_env`` is configured."""

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
"""Where the key is read from for a remote endpoint without ``api_key_env`` (the SDK's own default)."""

MAX_PROVIDER_MESSAGE_CHARS = 300
"""Longest provider error message quoted in a :class:`TierError`."""

MALFORMED_PREFIX_CHARS = 80
"""Characters of an unparsable answer quoted in a :class:`MalformedAnswerError`."""

DEADLINE_GRACE_S = 0.25
"""Slack on top of ``timeout_s`` for the tier's own deadline around one call (the SDK's timeout is
per connect/read/write; the deadline also bounds an answer that trickles in slowly)."""

_RETRYABLE_4XX = frozenset({408, 409})


def is_loopback_url(base_url: str | None) -> bool:
    """Whether ``base_url`` points at this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if not base_url:
        return False
    host = urlsplit(base_url).hostname
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP-date."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def strip_code_fence(text: str) -> str:
    """``text`` without a surrounding Markdown code fence (```json ... ``` or ``` ... ```)."""
    stripped = text.strip()
    if not stripped.startswith("```"):
        return stripped
    first_newline = stripped.find("\n")
    if first_newline == -1:
        return stripped.strip("`").strip()
    body = stripped[first_newline + 1 :]
    body = body.rstrip()
    if body.endswith("```"):
        body = body[:-3]
    return body.strip()


def parse_json_answer(content: str) -> Any:
    """The JSON value of a structured answer; :class:`MalformedAnswerError` when it is not JSON."""
    try:
        return json.loads(strip_code_fence(content))
    except json.JSONDecodeError as exc:
        reason = exc.msg
    except RecursionError:
        reason = "nested too deeply"
    prefix = " ".join(content.split())[:MALFORMED_PREFIX_CHARS]
    raise MalformedAnswerError(f"the answer is not valid JSON ({reason}): {prefix!r}")


class OpenAITier:
    """A tier backed by an OpenAI-compatible endpoint. See the module docstring."""

    name = "openai"

    def __init__(
        self,
        config: OpenAITierConfig,
        *,
        environ: Mapping[str, str] = os.environ,
        scrub_prompts: bool = False,
    ) -> None:
        self.config = config
        self.scrub_prompts = scrub_prompts
        """Scrub personal data and credentials out of every message before it is sent."""
        self.model = config.model
        self._environ = environ
        self._client: openai.AsyncOpenAI | None = None
        self._api_key: str | None = None

    # ------------------------------------------------------------------------------------------
    # Client
    # ------------------------------------------------------------------------------------------

    def _resolve_api_key(self) -> str:
        env_name = self.config.api_key_env
        if env_name is None:
            if is_loopback_url(self.config.base_url):
                return LOCAL_PLACEHOLDER_KEY
            env_name = DEFAULT_API_KEY_ENV
        key = self._environ.get(env_name, "")
        if not key.strip():
            where = self.config.base_url or "the OpenAI API"
            raise TierUnavailableError(
                f"openai tier (model {self.model!r} at {where}): the API key environment variable "
                f"{env_name} is not set; set it, or set api_key_env to the variable that holds the key"
            )
        return key.strip()

    def _get_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            api_key = self._resolve_api_key()
            self._api_key = api_key
            self._client = openai.AsyncOpenAI(
                base_url=self.config.base_url,
                api_key=api_key,
                timeout=self.config.timeout_s,
                max_retries=0,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections (a later call opens new ones)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # ------------------------------------------------------------------------------------------
    # Requests
    # ------------------------------------------------------------------------------------------

    def _request_kwargs(self, call: ModelCall) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [self._outgoing(m) for m in call.messages],
            "max_tokens": call.max_tokens,
            "temperature": call.temperature,
        }
        if call.json_schema is not None:
            mode = self.config.structured_output
            if mode == "json_schema":
                kwargs["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": call.schema_name, "schema": call.json_schema, "strict": False},
                }
            elif mode == "json_object":
                kwargs["response_format"] = {"type": "json_object"}
        if self.config.extra_headers:
            kwargs["extra_headers"] = dict(self.config.extra_headers)
        return kwargs

    def _outgoing(self, message: Mapping[str, str]) -> dict[str, str]:
        out = dict(message)
        content = out.get("content")
        if self.scrub_prompts and isinstance(content, str):
            out["content"] = scrub_prompt(content)
        return out

    def _deadline_s(self) -> float:
        return self.config.timeout_s + DEADLINE_GRACE_S

    async def generate(self, call: ModelCall) -> ModelAnswer:
        client = self._get_client()
        kwargs = self._request_kwargs(call)
        try:
            async with asyncio.timeout(self._deadline_s()):
                response = await client.chat.completions.create(**kwargs)
        except TimeoutError:
            raise TierTimeoutError(self._timeout_message()) from None
        except openai.OpenAIError as exc:
            self._raise_mapped(exc)
        return self._answer(call, response)

    def _answer(self, call: ModelCall, response: Any) -> ModelAnswer:
        choices = getattr(response, "choices", None)
        if not choices:
            raise MalformedAnswerError(f"{self._who()}: the answer has no choices")
        message = choices[0].message
        content = getattr(message, "content", None)
        if not isinstance(content, str) or not content.strip():
            refusal = getattr(message, "refusal", None)
            detail = f" (refusal: {refusal[:MALFORMED_PREFIX_CHARS]!r})" if refusal else ""
            raise MalformedAnswerError(f"{self._who()}: the answer has no content{detail}")
        data: Any = content
        if call.json_schema is not None:
            try:
                data = parse_json_answer(content)
            except MalformedAnswerError as exc:
                raise MalformedAnswerError(f"{self._who()}: {exc}") from None
        usage = getattr(response, "usage", None)
        return ModelAnswer(
            content=content,
            data=data,
            usage=Usage(
                prompt_tokens=max(0, int(getattr(usage, "prompt_tokens", 0) or 0)),
                completion_tokens=max(0, int(getattr(usage, "completion_tokens", 0) or 0)),
                cost_usd=0.0,
                calls=1,
            ),
            tier=self.name,
            model=self.model,
        )

    async def stream(self, call: ModelCall) -> AsyncIterator[str]:
        """The answer's content as it arrives, one delta at a time (same error mapping)."""
        client = self._get_client()
        kwargs = self._request_kwargs(call)
        try:
            async with asyncio.timeout(self._deadline_s()):
                stream = await client.chat.completions.create(stream=True, **kwargs)
        except TimeoutError:
            raise TierTimeoutError(self._timeout_message()) from None
        except openai.OpenAIError as exc:
            self._raise_mapped(exc)
        try:
            async for chunk in stream:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                text = getattr(delta, "content", None) if delta is not None else None
                if text:
                    yield text
        except openai.OpenAIError as exc:
            self._raise_mapped(exc)
        finally:
            await stream.close()

    # ------------------------------------------------------------------------------------------
    # Errors
    # ------------------------------------------------------------------------------------------

    def _who(self) -> str:
        return f"openai tier (model {self.model!r})"

    def _timeout_message(self) -> str:
        return f"{self._who()}: no answer within {self.config.timeout_s:g}s"

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key != LOCAL_PLACEHOLDER_KEY and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "[redacted]")
        return text

    def _provider_message(self, exc: openai.APIError) -> str:
        body = exc.body
        message: Any = None
        if isinstance(body, Mapping):
            message = body.get("message")
            if message is None and isinstance(body.get("error"), Mapping):
                message = body["error"].get("message")
            if message is None and isinstance(body.get("error"), str):
                message = body["error"]
        if not isinstance(message, str) or not message.strip():
            message = exc.message
        message = " ".join(self._redact(str(message)).split())
        if len(message) > MAX_PROVIDER_MESSAGE_CHARS:
            message = message[: MAX_PROVIDER_MESSAGE_CHARS - 1] + "…"
        return message

    def _raise_mapped(self, exc: openai.OpenAIError) -> NoReturn:
        who = self._who()
        if isinstance(exc, openai.APITimeoutError):
            raise TierTimeoutError(self._timeout_message()) from None
        if isinstance(exc, openai.APIConnectionError):
            raise ServerError(f"{who}: connection failed: {self._provider_message(exc)}") from None
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            text = f"{who}: HTTP {status}: {self._provider_message(exc)}"
            if status == 429:
                retry_after = parse_retry_after(exc.response.headers)
                raise RateLimitedError(text, retry_after_s=retry_after) from None
            if status >= 500 or status in _RETRYABLE_4XX:
                raise ServerError(text) from None
            raise TierError(text) from None
        if isinstance(exc, openai.APIError):
            # An error event inside a stream, or an answer the SDK could not read.
            raise ServerError(f"{who}: {self._provider_message(exc)}") from None
        raise TierError(f"{who}: {self._redact(str(exc))[:MAX_PROVIDER_MESSAGE_CHARS]}") from None
