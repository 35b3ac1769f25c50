"""The self-correcting loop on the call-sequence use case, with the embedded planner and reviewer and
the real code analyzer (called in process through the shipped FunctionExecutor; no sandbox).

A function name the analyzer cannot use fails the step with ``bad_input``; the reviewer asks for a
revision with the error as feedback, and the planner qualifies the name from the candidates the
analyzer listed, so the task completes within ``max_iterations``.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

from officeray.contracts import ErrorType, TaskRequest, TaskStatus
from officeray.testing import FunctionExecutor, InMemoryStore, ToolFailed, in_memory_tracer
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.workflow import Workflow
from serving.tiers.embedded import EmbeddedPlanner, EmbeddedReviewer
from tools_sandbox.agent.errors import ToolInputError
from tools_sandbox.agent.tools.code_analyzer import analyze

TOOLS = {name: spec.input_model for name, spec in BUILTIN_TOOLS.items()}


def code_analyzer(inputs: dict[str, Any]) -> dict[str, Any]:
    try:
        return analyze(inputs["folder"], inputs["start_func"], inputs["end_func"])
    except ToolInputError as exc:
        raise ToolFailed(ErrorType.BAD_INPUT, str(exc)) from None


def project(root: Path) -> Path:
    files = {
        "app/__init__.py": "",
        "app/main.py": """
            from app.pipeline import run

            def main():
                run()
        """,
        "app/pipeline.py": """
            from app.steps import process_data

            def run():
                process_data([1, 2])
        """,
        "app/steps.py": """
            def process_data(rows):
                return [r * 2 for r in rows]
        """,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def run(description: str) -> tuple[Any, FunctionExecutor]:
    executor = FunctionExecutor({"code_analyzer": code_analyzer})
    tracer, _ = in_memory_tracer()
    workflow = Workflow(
        planner=EmbeddedPlanner(),
        reviewer=EmbeddedReviewer(),
        executor=executor,
        store=InMemoryStore(),
        tracer=tracer,
        tools=TOOLS,
        sleep=lambda _s: asyncio.sleep(0),
    )
    record = asyncio.run(workflow.run(TaskRequest(description=description), "task-1"))
    return record, executor


def test_a_misspelt_function_is_corrected_from_the_analyzers_suggestion(tmp_path: Path) -> None:
    folder = project(tmp_path)
    record, executor = run(f"Trace the call sequence from mian to process_data in {folder}")
    assert record.status == TaskStatus.COMPLETED, record.error
    assert record.iterations == 2
    assert [inputs["start_func"] for _, inputs in executor.calls] == ["mian", "app.main.main"]
    assert record.result["path"][0].startswith("app.main.main")
    assert record.result["path"][-1].startswith("app.steps.process_data")
    reviewed = [line.message for line in record.logs if "review REVISE" in line.message]
    assert reviewed and "did you mean" in reviewed[0]


def test_bad_input_the_planner_cannot_fix_fails_at_once_with_the_reason(tmp_path: Path) -> None:
    record, executor = run(f"Trace the call sequence from main to process_data in {tmp_path / 'nowhere'}")
    assert record.status == TaskStatus.FAILED
    assert "cannot revise the plan" in (record.error or "") and "does not exist" in (record.error or "")
    assert len(executor.calls) == 1
