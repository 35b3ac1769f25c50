"""The tool catalog: every tool a plan may call, its input model, its outputs and where it runs.

Input models are pydantic and strict (unknown keys are refused). A field whose type admits
:class:`~officeray.contracts.StepReference` may take ``{"from_step": ..., "path": ...}`` in a plan; the
scheduler substitutes the referenced output before the step runs and the inputs are validated again
with the real values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from officeray.contracts import StepReference

MAX_PYTHON_CODE_CHARS = 100_000
"""Longest ``python_exec`` program accepted."""

MAX_EXPRESSION_CHARS = 1_000
"""Longest ``math_calculator`` expression accepted (the evaluator enforces the same limit)."""


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


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_model: type[BaseModel]
    outputs: tuple[str, ...]
    risk: RiskLevel = RiskLevel.LOW
    staged_folder_input: str | None = None
    """Name of an input holding a host folder whose files are copied into the sandbox workspace."""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate_inputs(self, inputs: dict[str, Any]) -> BaseModel:
        return self.input_model.model_validate(inputs)


BUILTIN_TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            name="python_exec",
            description="Run a Python program in the sandbox; returns stdout, stderr and exit_code.",
            input_model=PythonExecInput,
            outputs=("stdout", "stderr", "exit_code"),
            risk=RiskLevel.MEDIUM,
        ),
        ToolSpec(
            name="code_analyzer",
            description=(
                "Find the shortest call path from start_func to end_func in a folder of Python "
                "sources; returns found, path (qualified names with file and line) and message."
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
    )
}


def get_tool(name: str) -> ToolSpec:
    try:
        return BUILTIN_TOOLS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_TOOLS))
        raise KeyError(f"unknown tool {name!r}; registered tools: {known}") from None


def describe_input_errors(exc: ValidationError) -> list[str]:
    """pydantic's errors as short ``field: message`` lines."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(inputs)"
        lines.append(f"{where}: {err['msg']}")
    return lines
