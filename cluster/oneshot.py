"""``officeray tool NAME --input JSON``: one tool call exactly as a plan step would run it.

Same path as a step on a tool runner (input validation, staging, the configured sandbox backend
with its limits, host-side tools behind their guards), without Ray: a user debugging a tool gets
the answer in about a second.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from pydantic import ValidationError

from cluster.prepare import prepare_settings
from officeray.config import Settings
from officeray.contracts import DEFAULT_STEP_TIMEOUT_SECONDS, MAX_STEP_TIMEOUT_SECONDS, PlanStep
from officeray.tools.catalog import build_catalog
from officeray.tools.spec import HostContext, ToolRuntime, describe_input_errors


class ToolUsageError(ValueError):
    """The tool name, the input JSON or the inputs are not acceptable (exit code 2)."""


def parse_inputs(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ToolUsageError(
            f"--input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(value, dict):
        raise ToolUsageError(f"--input must be a JSON object, not {type(value).__name__}")
    return value


def step_timeout(timeout_s: float | None) -> int:
    if timeout_s is None:
        return DEFAULT_STEP_TIMEOUT_SECONDS
    if not 0 < timeout_s <= MAX_STEP_TIMEOUT_SECONDS:
        raise ToolUsageError(f"--timeout must be between 0 and {MAX_STEP_TIMEOUT_SECONDS} seconds")
    return max(1, math.ceil(timeout_s))


def run_tool(
    settings: Settings, name: str, inputs: dict[str, Any], timeout_s: float | None = None
) -> dict[str, Any]:
    """Run one call of tool ``name``; returns ``{tool, status, output, error, duration_ms}``."""
    from tools_sandbox.backends import make_sandbox
    from tools_sandbox.executor import run_step

    catalog = build_catalog(settings)  # the plugins are imported here (no Ray)
    try:
        spec = catalog.get_tool(name)
    except KeyError as exc:
        raise ToolUsageError(str(exc.args[0])) from None
    try:
        spec.validate_inputs(inputs)
    except ValidationError as exc:
        raise ToolUsageError(f"{name} inputs: " + "; ".join(describe_input_errors(exc))) from None
    step = PlanStep(
        step_id="cli",
        action=name,
        inputs=inputs,
        timeout_seconds=step_timeout(timeout_s),
        idempotency_key="cli",
    )
    settings = prepare_settings(settings) if spec.runtime == ToolRuntime.SANDBOX else settings
    host_context = HostContext(settings=catalog.check_settings(settings.tools))
    box = settings.sandbox
    # Host-side tools (http_client, web_search, ai_tool) need no sandbox, nor Docker.
    sandbox = (
        make_sandbox(box.backend, image=box.image, limits=box.limits)
        if spec.runtime == ToolRuntime.SANDBOX
        else None
    )
    try:
        if sandbox is not None:
            sandbox.start()
        started = time.perf_counter()
        outcome = run_step(
            sandbox,
            step,
            inputs,
            settings.workspace_root,
            host_context,
            workspace_confined=settings.workspace_confined,
            catalog=catalog,
        )
        duration_ms = (time.perf_counter() - started) * 1000
    finally:
        if sandbox is not None:
            sandbox.stop()
    return {
        "tool": name,
        "status": "succeeded" if outcome.error is None else "failed",
        "output": outcome.output,
        "error": None if outcome.error is None else outcome.error.model_dump(mode="json"),
        "duration_ms": round(duration_ms, 3),
    }
