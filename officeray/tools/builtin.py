"""The built-in tools: their specs (:data:`BUILTIN_TOOLS`) and the sandbox tools' input models.

The host-side tools' input and settings models are in :mod:`officeray.tools.host_inputs`. The
limits the sandbox tools' models check are the agent's own, from :mod:`officeray.limits` (shipped
in the sandbox image, so the tool checks the same numbers again).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from officeray.contracts import StepReference
from officeray.limits import (
    MAX_EXPRESSION_CHARS,
    MAX_PATH_CHARS,
    MAX_PYTHON_CODE_CHARS,
    MAX_WRITE_BYTES,
    relative_path_problem,
)
from officeray.tools.host_inputs import (
    AiToolInput,
    HttpClientInput,
    HttpClientSettings,
    SleepInput,
    WebSearchInput,
    WebSearchSettings,
)
from officeray.tools.plugins import RiskLevel
from officeray.tools.spec import ToolRuntime, ToolSpec

MAX_FUNCTION_NAME_CHARS = 300
"""Longest ``code_analyzer`` ``start_func`` / ``end_func``."""


class _Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PythonExecInput(_Inputs):
    code: str = Field(min_length=1, max_length=MAX_PYTHON_CODE_CHARS)
    stdin: str | StepReference = ""


class CodeAnalyzerInput(_Inputs):
    folder: str = Field(min_length=1, description="Folder of Python sources, relative to the workspace root.")
    start_func: str = Field(min_length=1, max_length=MAX_FUNCTION_NAME_CHARS)
    end_func: str = Field(min_length=1, max_length=MAX_FUNCTION_NAME_CHARS)


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
        problem = relative_path_problem(path)
        if problem is not None:
            raise ValueError(problem)
        return path

    @model_validator(mode="after")
    def _fields_fit_the_operation(self) -> FileOperationsInput:
        if self.operation == "write" and self.content is None:
            raise ValueError("write needs content")
        if self.operation != "write" and self.content is not None:
            raise ValueError(f"content applies to write only, not to {self.operation}")
        if self.recursive and self.operation not in ("list", "delete"):
            raise ValueError(f"recursive applies to list and delete, not to {self.operation}")
        return self


BUILTIN_TOOLS: Mapping[str, ToolSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            ToolSpec(
                name="python_exec",
                description="Run a Python program in the sandbox; returns stdout, stderr and exit_code.",
                input_model=PythonExecInput,
                outputs=("stdout", "stderr", "exit_code"),
                risk=RiskLevel.HIGH,  # model-written code (see officeray.gatekeeper)
                fails_on_nonzero_exit=True,
            ),
            ToolSpec(
                name="code_analyzer",
                description=(
                    "Find the shortest call path from start_func to end_func in a folder of Python "
                    "sources; returns found, path (qualified names with file and line) and message. A "
                    "bare name matching several functions is resolved by reachability: paths lists every "
                    "path found between the candidates (shortest first) and unreachable_candidates the "
                    "ones on none; only when no candidate pair is joined is the name an error listing them."
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
                    "Read, write, list or delete a file of the task workspace (paths relative to it; "
                    "nothing outside is reachable). Returns operation and path, plus: read -> content, "
                    "bytes; write -> bytes; list -> entries [{name, type, bytes}], truncated; delete -> "
                    "deleted."
                ),
                input_model=FileOperationsInput,
                outputs=("operation", "path"),
                risk=RiskLevel.MEDIUM,
            ),
            ToolSpec(
                name="http_client",
                description=(
                    "Fetch an http(s) URL (GET, HEAD or POST) from the host behind an SSRF guard: "
                    "internal addresses are refused unless allowlisted, redirects are re-checked, the "
                    "body is capped; returns status, headers, body, truncated, url and redirects."
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
                    "Without a configured model (models.ai_tool) only 'summarize: TEXT', 'keywords: "
                    "TEXT', 'count words: TEXT' and 'classify sentiment: TEXT' are answered."
                ),
                input_model=AiToolInput,
                outputs=("answer",),
                runtime=ToolRuntime.HOST,
                host_function="tools_sandbox.host_tools.ai_tool:run",
                calls_model=True,
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
)
"""Every built-in tool by name, in the order ``officeray tools`` lists them (read-only)."""
