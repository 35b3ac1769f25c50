"""Input and settings models of the built-in host-side tools (http_client, web_search, ai_tool, sleep).

The tools themselves run in :mod:`tools_sandbox.host_tools` (named by their specs as
``"module:function"``); their models live here, in the core, because the validator, the gateway
and the planners check inputs against them and the config's ``tools:`` sections are checked
against the settings models at start. The limits of each model are defined here, once.

Settings models are the sections of the config's ``tools:`` mapping, e.g.::

    tools:
      http_client:
        allow_hosts: ["intranet.example.com", "127.0.0.1:8080"]
        max_response_bytes: 2097152
      web_search:
        provider: api
        endpoint: https://api.search.brave.com/res/v1/web/search
        api_key_env: BRAVE_API_KEY
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from officeray.contracts import StepReference
from officeray.urls import MAX_URL_CHARS, UrlRefused, normalise_allow_entry, parse_url

MAX_HTTP_TIMEOUT_S = 300.0
"""Longest total time one http_client call may be given (settings and inputs)."""

MAX_REQUEST_BODY_CHARS = 1024**2
MAX_REQUEST_HEADERS = 32
MAX_HEADER_VALUE_CHARS = 8_192

FORBIDDEN_REQUEST_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
        "http2-settings",
    }
)
"""Request headers a plan may not set: hop-by-hop headers and those the client itself controls."""

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------
# http_client
# --------------------------------------------------------------------------------------------------


class HttpClientInput(_Strict):
    url: str | StepReference = Field(description="http or https URL; checked by the SSRF guard.")
    method: Literal["GET", "HEAD", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | StepReference | None = Field(default=None, description="Request body (POST only).")
    timeout_s: float | None = Field(
        default=None, gt=0, le=MAX_HTTP_TIMEOUT_S, description="Total time; capped by the settings."
    )

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url_length(cls, value: Any) -> Any:
        if isinstance(value, str) and len(value) > MAX_URL_CHARS:
            raise ValueError(f"URL longer than {MAX_URL_CHARS} characters")
        return value

    @field_validator("body")
    @classmethod
    def _body_length(cls, value: Any) -> Any:
        if isinstance(value, str) and len(value) > MAX_REQUEST_BODY_CHARS:
            raise ValueError(f"body longer than {MAX_REQUEST_BODY_CHARS} characters")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_REQUEST_HEADERS:
            raise ValueError(f"at most {MAX_REQUEST_HEADERS} headers")
        for name, text in value.items():
            if not _TOKEN_RE.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in FORBIDDEN_REQUEST_HEADERS:
                raise ValueError(f"header {name!r} may not be set (hop-by-hop or controlled by the client)")
            if len(text) > MAX_HEADER_VALUE_CHARS or any(c in text for c in "\r\n\0"):
                raise ValueError(f"invalid value for header {name!r}")
        return value

    @model_validator(mode="after")
    def _body_only_with_post(self) -> HttpClientInput:
        if self.body is not None and self.method != "POST":
            raise ValueError(f"a body is only sent with POST, not {self.method}")
        return self


class HttpClientSettings(_Strict):
    allow_hosts: list[str] = Field(default_factory=list)
    """Hosts (``name`` or ``name:port``) exempt from the SSRF address checks: internal services."""
    max_response_bytes: int = Field(default=2 * 1024**2, ge=1, le=64 * 1024**2)
    timeout_s: float = Field(default=20.0, gt=0, le=MAX_HTTP_TIMEOUT_S)
    """Total time for one call, redirects and body included (inputs may only lower it)."""
    max_redirects: int = Field(default=5, ge=0, le=20)
    user_agent: str = Field(default="officeray-http-client/0.1", min_length=1, max_length=200)

    @field_validator("allow_hosts")
    @classmethod
    def _normalise_hosts(cls, value: list[str]) -> list[str]:
        return [normalise_allow_entry(entry) for entry in value]


# --------------------------------------------------------------------------------------------------
# web_search
# --------------------------------------------------------------------------------------------------


class WebSearchInput(_Strict):
    query: str | StepReference = Field(description="Search words.")
    max_results: int | None = Field(default=None, ge=1, le=50, description="Capped by the settings.")

    @field_validator("query")
    @classmethod
    def _query_text(cls, value: Any) -> Any:
        if isinstance(value, str) and not 1 <= len(value.strip()) <= 500:
            raise ValueError("query must have 1 to 500 characters")
        return value


class WebSearchSettings(_Strict):
    provider: Literal["local", "api"] = "local"
    collection: Path = Path("examples/docs")
    """Folder of ``.txt``/``.md`` files for the local provider (relative: to the working directory,
    else to the project root)."""
    max_results: int = Field(default=5, ge=1, le=50)
    """Default and cap of results per query."""
    endpoint: str | None = None
    """API provider: ``GET {endpoint}?{query_param}=...`` (through http_client's SSRF guard/allowlist)."""
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """API provider: the environment variable holding the key (the key itself never goes in config)."""
    api_key_header: str = Field(default="X-Subscription-Token", pattern=_TOKEN_RE.pattern)
    query_param: str = Field(default="q", min_length=1)
    count_param: str | None = "count"
    extra_params: dict[str, str] = Field(default_factory=dict)
    results_path: str = "web.results"
    """Dotted path to the list of results in the API's JSON answer (Brave: ``web.results``)."""
    title_field: str = "title"
    url_field: str = "url"
    snippet_field: str = "description"

    @model_validator(mode="after")
    def _api_needs_endpoint_and_key(self) -> WebSearchSettings:
        if self.provider == "api" and (not self.endpoint or not self.api_key_env):
            raise ValueError("provider 'api' needs endpoint and api_key_env")
        if self.endpoint is not None:
            try:
                parse_url(self.endpoint)
            except UrlRefused as exc:
                raise ValueError(f"endpoint: {exc.reason}") from None
        return self


# --------------------------------------------------------------------------------------------------
# ai_tool
# --------------------------------------------------------------------------------------------------

MAX_PROMPT_CHARS = 50_000
"""Longest prompt accepted."""

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 8_192
"""Largest ``max_tokens`` a step may ask for."""


class AiToolInput(_Strict):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="The prompt, in plain words.")
    max_tokens: int = Field(
        default=DEFAULT_MAX_TOKENS, ge=1, le=MAX_TOKENS_LIMIT, description="Longest answer, in tokens."
    )


# --------------------------------------------------------------------------------------------------
# sleep
# --------------------------------------------------------------------------------------------------

MAX_SLEEP_S = 600.0
"""Longest wait one step may ask for."""


class SleepInput(_Strict):
    seconds: float = Field(ge=0, le=MAX_SLEEP_S, description="How long to wait, in seconds.")
