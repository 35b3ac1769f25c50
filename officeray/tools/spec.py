"""A tool's metadata (:class:`ToolSpec`) and what host-side tools are given (:class:`HostContext`).

Input models are pydantic and strict (unknown keys are refused). A field whose type admits
:class:`~officeray.contracts.StepReference` may take ``{"from_step": ..., "path": ...}`` in a plan;
the scheduler substitutes the referenced output before the step runs and the inputs are validated
again with the real values.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from officeray.contracts import ErrorType
from officeray.tools.plugins import RiskLevel


class ToolRuntime(StrEnum):
    SANDBOX = "sandbox"
    """Runs inside the tool runner's Docker sandbox (no network, no host files)."""
    HOST = "host"
    """Runs in the tool runner's process, outside the sandbox: tools that need the network behind
    the SSRF guard (http_client, web_search) or the model router (ai_tool). Never user code."""


HostFunction = Callable[[BaseModel, "HostContext"], Any]
"""A host-side tool: ``fn(validated_inputs, context) -> JSON-able output``; raises
:class:`HostToolError` for a typed failure. A spec names it as ``"package.module:function"`` so the
catalog imports it only when the tool runs."""


class HostToolError(Exception):
    """A host-side tool failed; ``error_type`` is an :class:`~officeray.contracts.ErrorType`."""

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


@dataclass
class HostContext:
    """What host-side tools may use: their settings (``settings[tool_name]``) and shared services."""

    settings: dict[str, Any] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)


_M = TypeVar("_M", bound=BaseModel)


def tool_settings(context: HostContext | None, name: str, model: type[_M]) -> _M:
    """The tool's section of ``context.settings`` as ``model`` (defaults when absent; a dict is validated)."""
    raw = None if context is None else context.settings.get(name)
    if raw is None:
        return model()
    if isinstance(raw, model):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    return model.model_validate(raw)


@dataclass(frozen=True)
class PluginRef:
    """Where a plugin tool's code is: what the executor sends to the agent with each call."""

    module: str
    function: str
    path: str
    """The module's source file on the host (for messages; the source itself is in :attr:`source`)."""
    source: str
    """The module's source as read when the catalog was built: the code the sandbox runs."""

    def protocol_field(self) -> dict[str, str]:
        """The ``plugin`` field of an agent ``call`` request."""
        return {"module": self.module, "function": self.function, "source": self.source}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_model: type[BaseModel]
    outputs: tuple[str, ...]
    risk: RiskLevel = RiskLevel.LOW
    staged_folder_input: str | None = None
    """Name of an input holding a host folder whose files are copied into the sandbox workspace."""
    runtime: ToolRuntime = ToolRuntime.SANDBOX
    host_function: str | None = None
    """For ``runtime == HOST``: ``"module:function"`` of the :data:`HostFunction` that runs it."""
    calls_model: bool = False
    """Whether the tool calls a model (``ai_tool``): its steps count toward the tenant's
    ``daily_token_budget`` and do not run once it is spent."""
    settings_model: type[BaseModel] | None = None
    """The model of this tool's section in the config's ``tools:`` mapping (validated at start)."""
    fails_on_nonzero_exit: bool = False
    """The tool runs a program and returns its ``exit_code`` (and ``stderr``) as a result: when set,
    a non-zero ``exit_code`` fails the step with ``tool_error`` (the result is kept as its output)."""
    plugin: PluginRef | None = None
    """A plugin tool's code (sent to the sandbox with each call); None for a built-in tool."""

    def validate_inputs(self, inputs: dict[str, Any]) -> BaseModel:
        return self.input_model.model_validate(inputs)

    def load_host_function(self) -> HostFunction:
        if self.host_function is None:
            raise LookupError(f"tool {self.name!r} is not a host tool")
        module_name, _, attr = self.host_function.partition(":")
        fn: HostFunction = getattr(importlib.import_module(module_name), attr)
        return fn


def describe_input_errors(exc: ValidationError) -> list[str]:
    """pydantic's errors as short ``field: message`` lines."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(inputs)"
        lines.append(f"{where}: {err['msg']}")
    return lines
