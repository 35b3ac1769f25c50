"""The tool catalog: every tool a plan may call, its input model, its outputs and where it runs.

Input models are pydantic and strict (unknown keys are refused). A field whose type admits
:class:`~officeray.contracts.StepReference` may take ``{"from_step": ..., "path": ...}`` in a plan; the
scheduler substitutes the referenced output before the step runs and the inputs are validated again
with the real values.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from officeray.contracts import ErrorType, StepReference
from tools_sandbox.agent.errors import ToolInputError
from tools_sandbox.agent.tools.file_operations import MAX_PATH_CHARS, MAX_WRITE_BYTES
from tools_sandbox.agent.tools.math_calculator import MAX_EXPRESSION_CHARS
from tools_sandbox.agent.tools.python_exec import MAX_CODE_CHARS as MAX_PYTHON_CODE_CHARS
from tools_sandbox.agent.workspace import check_relative
from tools_sandbox.host_tools.ai_tool import AiToolInput
from tools_sandbox.host_tools.models import (
    HttpClientInput,
    HttpClientSettings,
    WebSearchInput,
    WebSearchSettings,
)
from tools_sandbox.host_tools.sleep import SleepInput

# MAX_PYTHON_CODE_CHARS (longest python_exec program) and MAX_EXPRESSION_CHARS (longest
# math_calculator expression) are the tools' own limits, imported above: defined once, in the tool.


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class _Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PythonExecInput(_Inputs):
    code: str = Field(min_length=1, max_length=MAX_PYTHON_CODE_CHARS)
    stdin: str | StepReference = ""


class CodeAnalyzerInput(_Inputs):
    folder: str = Field(min_length=1, description="Folder of Python sources, relative to the workspace root.")
    start_func: str = Field(min_length=1, max_length=300)
    end_func: str = Field(min_length=1, max_length=300)


class MathCalculatorInput(_Inputs):
    expression: str = Field(min_length=1, max_length=MAX_EXPRESSION_CHARS)
    variables: dict[str, float | StepReference] = Field(default_factory=dict)


class FileOperationsInput(_Inputs):
    """``file_operations`` (see :mod:`tools_sandbox.agent.tools.file_operations` for the outputs)."""

    operation: Literal["read", "write", "list", "delete"]
    path: str = Field(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        description="File or folder, relative to the workspace root ('.' is the root, for list).",
    )
    content: Annotated[str, Field(max_length=MAX_WRITE_BYTES)] | StepReference | None = Field(
        default=None, description="The text to write (write only; at most 1 MiB of UTF-8)."
    )
    recursive: bool = Field(
        default=False, description="list: descend into sub-folders; delete: remove a non-empty folder."
    )

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        try:
            return check_relative(path)
        except ToolInputError as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _fields_fit_the_operation(self) -> FileOperationsInput:
        if self.operation == "write" and self.content is None:
            raise ValueError("write needs content")
        if self.operation != "write" and self.content is not None:
            raise ValueError(f"content applies to write only, not to {self.operation}")
        if self.recursive and self.operation not in ("list", "delete"):
            raise ValueError(f"recursive applies to list and delete, not to {self.operation}")
        return self


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
    settings_model: type[BaseModel] | None = None
    """The model of this tool's section in the config's ``tools:`` mapping (validated at load)."""
    fails_on_nonzero_exit: bool = False
    """The tool runs a program and returns its ``exit_code`` (and ``stderr``) as a result: when set,
    a non-zero ``exit_code`` fails the step with ``tool_error`` (the result is kept as its output)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate_inputs(self, inputs: dict[str, Any]) -> BaseModel:
        return self.input_model.model_validate(inputs)

    def load_host_function(self) -> HostFunction:
        if self.host_function is None:
            raise LookupError(f"tool {self.name!r} is not a host tool")
        module_name, _, attr = self.host_function.partition(":")
        fn: HostFunction = getattr(importlib.import_module(module_name), attr)
        return fn


BUILTIN_TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            name="python_exec",
            description="Run a Python program in the sandbox; returns stdout, stderr and exit_code.",
            input_model=PythonExecInput,
            outputs=("stdout", "stderr", "exit_code"),
            risk=RiskLevel.MEDIUM,
            fails_on_nonzero_exit=True,
        ),
        ToolSpec(
            name="code_analyzer",
            description=(
                "Find the shortest call path from start_func to end_func in a folder of Python "
                "sources; returns found, path (qualified names with file and line) and message. A bare "
                "name matching several functions is resolved by reachability: paths lists every path "
                "found between the candidates (shortest first) and unreachable_candidates the ones on "
                "none; only when no candidate pair is joined is the name an error listing them."
            ),
            input_model=CodeAnalyzerInput,
            outputs=("found", "path", "message"),
            staged_folder_input="folder",
        ),
        ToolSpec(
            name="math_calculator",
            description="Evaluate an arithmetic expression (no eval: an AST whitelist); returns value.",
            input_model=MathCalculatorInput,
            outputs=("value",),
        ),
        ToolSpec(
            name="file_operations",
            description=(
                "Read, write, list or delete a file of the task workspace (paths relative to it; nothing "
                "outside is reachable). Returns operation and path, plus: read -> content, bytes; "
                "write -> bytes; list -> entries [{name, type, bytes}], truncated; delete -> deleted."
            ),
            input_model=FileOperationsInput,
            outputs=("operation", "path"),
            risk=RiskLevel.MEDIUM,
        ),
        ToolSpec(
            name="http_client",
            description=(
                "Fetch an http(s) URL (GET, HEAD or POST) from the host behind an SSRF guard: internal "
                "addresses are refused unless allowlisted, redirects are re-checked, the body is capped; "
                "returns status, headers, body, truncated, url and redirects."
            ),
            input_model=HttpClientInput,
            outputs=("status", "body"),
            risk=RiskLevel.MEDIUM,
            runtime=ToolRuntime.HOST,
            host_function="tools_sandbox.host_tools.http_client:fetch",
            settings_model=HttpClientSettings,
        ),
        ToolSpec(
            name="web_search",
            description=(
                "Search a document collection (or a configured search API) for a query; returns "
                "results, each with title, url_or_path, snippet and score."
            ),
            input_model=WebSearchInput,
            outputs=("results",),
            runtime=ToolRuntime.HOST,
            host_function="tools_sandbox.host_tools.web_search:search",
            settings_model=WebSearchSettings,
        ),
        ToolSpec(
            name="ai_tool",
            description=(
                "Send a prompt to the model router's ai_tool role; returns answer, tier and usage. "
                "Without a configured model (models.ai_tool) only 'summarize: TEXT', 'keywords: TEXT', "
                "'count words: TEXT' and 'classify sentiment: TEXT' are answered."
            ),
            input_model=AiToolInput,
            outputs=("answer",),
            runtime=ToolRuntime.HOST,
            host_function="tools_sandbox.host_tools.ai_tool:run",
        ),
        ToolSpec(
            name="sleep",
            description=(
                "Wait the given number of seconds (at most 600) without using a sandbox; returns "
                "slept_s, the time waited."
            ),
            input_model=SleepInput,
            outputs=("slept_s",),
            runtime=ToolRuntime.HOST,
            host_function="tools_sandbox.host_tools.sleep:run",
        ),
    )
}


_REGISTRY: dict[str, ToolSpec] = dict(BUILTIN_TOOLS)


def register(spec: ToolSpec, *, replace: bool = False) -> ToolSpec:
    """Add a tool to the catalog (plugins do this through ``@tool``)."""
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"a tool named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def all_tools() -> dict[str, ToolSpec]:
    """Every registered tool by name: the built-ins and the loaded plugins."""
    return dict(_REGISTRY)


def input_models() -> dict[str, type[BaseModel]]:
    """Tool name -> input model, what the plan validator checks inputs against."""
    return {name: spec.input_model for name, spec in _REGISTRY.items()}


def get_tool(name: str) -> ToolSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown tool {name!r}; registered tools: {known}") from None


def validate_tool_settings(sections: dict[str, Any]) -> dict[str, BaseModel]:
    """The config's ``tools:`` mapping, each section checked against its tool's settings model.

    Raises ``ValueError`` naming ``tools.<name>.<field>`` for a bad value or an unknown tool.
    """
    checked: dict[str, BaseModel] = {}
    for name, section in sections.items():
        spec = _REGISTRY.get(name)
        if spec is None or spec.settings_model is None:
            raise ValueError(f"tools.{name}: no tool named {name!r} takes settings")
        try:
            checked[name] = spec.settings_model.model_validate(section or {})
        except ValidationError as exc:
            lines = [f"tools.{name}.{line}" for line in describe_input_errors(exc)]
            raise ValueError("; ".join(lines)) from None
    for name, spec in _REGISTRY.items():
        if spec.settings_model is not None and name not in checked:
            checked[name] = spec.settings_model()
    return checked


def describe_input_errors(exc: ValidationError) -> list[str]:
    """pydantic's errors as short ``field: message`` lines."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(inputs)"
        lines.append(f"{where}: {err['msg']}")
    return lines
