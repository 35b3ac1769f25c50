"""The embedded (deterministic, weight-free) planner and reviewer."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from officeray.contracts import (
    MAX_STEP_TIMEOUT_SECONDS,
    ErrorType,
    Plan,
    PlanRequest,
    ReviewRequest,
    ReviewVerdict,
    StepError,
    StepResult,
    StepStatus,
)
from officeray.errors import PlanningError
from officeray.tools.builtin import BUILTIN_TOOLS
from serving.tiers.embedded import (
    CODE_ANALYZER_TIMEOUT_SECONDS,
    MATH_TIMEOUT_SECONDS,
    PYTHON_EXEC_TIMEOUT_SECONDS,
    TIMEOUT_FEEDBACK,
    TIMEOUT_FEEDBACK_MARKER,
    EmbeddedPlanner,
    EmbeddedReviewer,
    plan_task,
    review_results,
)

ALL_TOOLS = sorted(BUILTIN_TOOLS)
MATH = "math_calculator"
CODE = "code_analyzer"
PY = "python_exec"


def make_plan(description: str, *, allowed: list[str] | None = None, **kwargs: Any) -> Plan:
    request = PlanRequest(
        task_id="t1",
        description=description,
        allowed_tools=ALL_TOOLS if allowed is None else allowed,
        **kwargs,
    )
    plan = plan_task(request)
    check_plan(plan)
    return plan


def check_plan(plan: Plan) -> None:
    """The plan survives a JSON round trip and every step's inputs satisfy its tool's input model."""
    assert Plan.model_validate(plan.model_dump(mode="json")) == plan
    for step in plan.steps:
        BUILTIN_TOOLS[step.action].input_model.model_validate(step.inputs)


def shape(plan: Plan) -> list[tuple[str, dict[str, Any], list[str]]]:
    return [(s.action, s.inputs, s.dependencies) for s in plan.steps]


def ans_ref(step_id: str, name: str = "ans") -> dict[str, Any]:
    return {name: {"from_step": step_id, "path": "value"}}


# --------------------------------------------------------------------------------------------------
# Planner: single phrasings
# --------------------------------------------------------------------------------------------------

TRACE_INPUTS = {"folder": "examples/sample_project", "start_func": "main", "end_func": "save_report"}


@pytest.mark.parametrize(
    "description",
    [
        "Trace the call sequence from main to save_report in examples/sample_project",
        "trace the call sequence from main to save_report in examples/sample_project.",
        "TRACE THE CALL SEQUENCE FROM main TO save_report IN examples/sample_project!",
        "Trace the call path from main to save_report in examples/sample_project",
        "Trace the call chain from main to save_report in examples/sample_project",
        "Find the call path from main to save_report in examples/sample_project",
        "Trace the call sequence from `main` to `save_report` in `examples/sample_project`.",
        "Trace the call sequence from 'main' to \"save_report\" in 'examples/sample_project'",
        "Trace the call sequence from main() to `save_report()` in examples/sample_project",
        "  Trace the call sequence from main to save_report in the folder examples/sample_project  ",
        "Trace the call sequence from main to save_report in `examples/sample_project`?",
    ],
)
def test_trace_phrasings(description: str) -> None:
    plan = make_plan(description)
    assert shape(plan) == [(CODE, TRACE_INPUTS, [])]
    assert plan.steps[0].timeout_seconds == CODE_ANALYZER_TIMEOUT_SECONDS


@pytest.mark.parametrize(
    ("description", "inputs"),
    [
        (
            "Find the call path from pkg.app.main to pkg.io.save in .",
            {"folder": ".", "start_func": "pkg.app.main", "end_func": "pkg.io.save"},
        ),
        (
            "Trace the call sequence from a to b in ../src.",
            {"folder": "../src", "start_func": "a", "end_func": "b"},
        ),
        (
            "Trace the call sequence from a to b in `my project/src`",
            {"folder": "my project/src", "start_func": "a", "end_func": "b"},
        ),
    ],
)
def test_trace_folders_and_qualified_names(description: str, inputs: dict[str, str]) -> None:
    assert shape(make_plan(description)) == [(CODE, inputs, [])]


@pytest.mark.parametrize(
    ("description", "expression"),
    [
        ("Compute 6*7", "6*7"),
        ("compute 6 * 7.", "6 * 7"),
        ("Calculate (1 + 2) ** 3", "(1 + 2) ** 3"),
        ("CALCULATE 10 / 4!", "10 / 4"),
        ("What is 2.5 * 4?", "2.5 * 4"),
        ("what is 2.5 * 4.", "2.5 * 4"),
        ("What is 3.75?", "3.75"),
        ("Compute `6*7`.", "6*7"),
        ("Compute '2 + 2'", "2 + 2"),
        ('What is "1.5 + 1.5"?', "1.5 + 1.5"),
        ("Evaluate sqrt(16) + 1", "sqrt(16) + 1"),
        ("What's 2 ** 10?", "2 ** 10"),
        ("What is the value of 7 - 2?", "7 - 2"),
    ],
)
def test_math_phrasings(description: str, expression: str) -> None:
    plan = make_plan(description)
    assert shape(plan) == [(MATH, {"expression": expression}, [])]
    assert plan.steps[0].timeout_seconds == MATH_TIMEOUT_SECONDS


@pytest.mark.parametrize(
    ("description", "code"),
    [
        ("Run python:\nprint(6 * 7)", "print(6 * 7)\n"),
        ("run python:\n    x = 1\n    print(x)\n", "x = 1\nprint(x)\n"),
        ("Run python: print('same line')", "print('same line')\n"),
        ("Run python code:\nprint(1)", "print(1)\n"),
        ("```python\nprint('fenced')\n```", "print('fenced')\n"),
        ("```\nprint('bare fence')\n```", "print('bare fence')\n"),
        ("```py\nprint(1)\n```", "print(1)\n"),
        (
            "Run python:\n```python\nfor i in range(3):\n    print(i)\n```",
            "for i in range(3):\n    print(i)\n",
        ),
        ("Run this:\n```python\nprint(2)\n```.", "print(2)\n"),
        # Words that split clauses are code inside a block.
        ("Run python:\nx = 1\nif x: print('then and also')\n", "x = 1\nif x: print('then and also')\n"),
        (
            "```python\nprint('a then b')\nprint('c and also d')\n```",
            "print('a then b')\nprint('c and also d')\n",
        ),
    ],
)
def test_python_phrasings(description: str, code: str) -> None:
    plan = make_plan(description)
    assert shape(plan) == [(PY, {"code": code}, [])]
    assert plan.steps[0].timeout_seconds == PYTHON_EXEC_TIMEOUT_SECONDS


# --------------------------------------------------------------------------------------------------
# Planner: composition
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        (
            "Compute 1+1 then compute 2+2",
            [(MATH, {"expression": "1+1"}, []), (MATH, {"expression": "2+2"}, ["s1"])],
        ),
        (
            "Compute 1+1; then compute 2+2, then compute 3+3",
            [
                (MATH, {"expression": "1+1"}, []),
                (MATH, {"expression": "2+2"}, ["s1"]),
                (MATH, {"expression": "3+3"}, ["s2"]),
            ],
        ),
        (
            "Compute 1+1\nthen compute 2+2\nThen compute 3+3.",
            [
                (MATH, {"expression": "1+1"}, []),
                (MATH, {"expression": "2+2"}, ["s1"]),
                (MATH, {"expression": "3+3"}, ["s2"]),
            ],
        ),
        (
            "Compute 1+1 and also compute 2+2 and also what is 3.5?",
            [
                (MATH, {"expression": "1+1"}, []),
                (MATH, {"expression": "2+2"}, []),
                (MATH, {"expression": "3.5"}, []),
            ],
        ),
        (
            "Compute 1+1 and also compute 2+2 then compute 3+3",
            [
                (MATH, {"expression": "1+1"}, []),
                (MATH, {"expression": "2+2"}, []),
                (MATH, {"expression": "3+3"}, ["s1", "s2"]),
            ],
        ),
        (
            "Compute 1 then compute 2 and also compute 3 then compute 4",
            [
                (MATH, {"expression": "1"}, []),
                (MATH, {"expression": "2"}, ["s1"]),
                (MATH, {"expression": "3"}, ["s1"]),
                (MATH, {"expression": "4"}, ["s2", "s3"]),
            ],
        ),
        (
            "Trace the call sequence from main to save_report in examples/sample_project and also "
            "compute 2*3 then run python:\nprint('then')\n",
            [
                (CODE, TRACE_INPUTS, []),
                (MATH, {"expression": "2*3"}, []),
                (PY, {"code": "print('then')\n"}, ["s1", "s2"]),
            ],
        ),
        (
            "```python\nprint('a then b')\n```\nthen compute 5.",
            [(PY, {"code": "print('a then b')\n"}, []), (MATH, {"expression": "5"}, ["s1"])],
        ),
        (
            "Compute 1 then ```python\nprint(1)\n``` and also ```\nprint(2)\n```",
            [
                (MATH, {"expression": "1"}, []),
                (PY, {"code": "print(1)\n"}, ["s1"]),
                (PY, {"code": "print(2)\n"}, ["s1"]),
            ],
        ),
    ],
)
def test_composition(description: str, expected: list[tuple[str, dict[str, Any], list[str]]]) -> None:
    plan = make_plan(description)
    assert shape(plan) == expected
    assert [s.step_id for s in plan.steps] == [f"s{i}" for i in range(1, len(expected) + 1)]


def test_sequence_is_not_parallelizable_and_parallel_is() -> None:
    sequential = make_plan("Compute 1 then compute 2")
    assert [s.parallelizable for s in sequential.steps] == [False, False]
    parallel = make_plan("Compute 1 and also compute 2")
    assert [s.parallelizable for s in parallel.steps] == [True, True]
    mixed = make_plan("Compute 1 and also compute 2 then compute 3")
    assert [s.parallelizable for s in mixed.steps] == [True, True, False]


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        (
            "Compute 6*7 then calculate ans / 2",
            [
                (MATH, {"expression": "6*7"}, []),
                (MATH, {"expression": "ans / 2", "variables": ans_ref("s1")}, ["s1"]),
            ],
        ),
        (
            "Compute 6*7 then what is previous + 1?",
            [
                (MATH, {"expression": "6*7"}, []),
                (MATH, {"expression": "previous + 1", "variables": ans_ref("s1", "previous")}, ["s1"]),
            ],
        ),
        (
            "Compute 2 then compute result * 3 then compute ans - 1",
            [
                (MATH, {"expression": "2"}, []),
                (MATH, {"expression": "result * 3", "variables": ans_ref("s1", "result")}, ["s1"]),
                (MATH, {"expression": "ans - 1", "variables": ans_ref("s2")}, ["s2"]),
            ],
        ),
        (
            # One math step in the previous stage, next to a python step: ans is that math step.
            "Run python:\n```\nprint(1)\n``` and also compute 10 then compute ans * 2",
            [
                (PY, {"code": "print(1)\n"}, []),
                (MATH, {"expression": "10"}, []),
                (MATH, {"expression": "ans * 2", "variables": ans_ref("s2")}, ["s1", "s2"]),
            ],
        ),
    ],
)
def test_ans_chaining(description: str, expected: list[tuple[str, dict[str, Any], list[str]]]) -> None:
    assert shape(make_plan(description)) == expected


@pytest.mark.parametrize(
    ("description", "needle"),
    [
        ("Compute ans + 1", "no step comes before it"),
        ("Compute 1 and also compute 2 then compute ans * 2", "has 2 math steps"),
        ("Run python:\n```\nprint(1)\n```\nthen compute ans * 2", "has 0 math steps"),
    ],
)
def test_ans_needs_exactly_one_previous_math_step(description: str, needle: str) -> None:
    with pytest.raises(PlanningError, match=needle):
        make_plan(description)


def test_plan_fields() -> None:
    plan = make_plan(
        "Trace the call sequence from main to save_report in examples/sample_project and also compute 1 "
        "then run python:\nprint(2)",
        iteration=3,
    )
    assert plan.plan_id == "t1-plan-3"
    assert plan.task_id == "t1"
    assert plan.confidence == 1.0
    assert plan.metadata.required_tools == sorted({CODE, MATH, PY})
    assert [s.idempotency_key for s in plan.steps] == ["t1:3:s1", "t1:3:s2", "t1:3:s3"]
    for step in plan.steps:
        assert step.outputs_expectation == {"keys": list(BUILTIN_TOOLS[step.action].outputs)}
    assert [s.timeout_seconds for s in plan.steps] == [
        CODE_ANALYZER_TIMEOUT_SECONDS,
        MATH_TIMEOUT_SECONDS,
        PYTHON_EXEC_TIMEOUT_SECONDS,
    ]
    # Critical path: the slower of the parallel stage, then the python step.
    single = {
        a: make_plan(d).metadata.estimated_duration_seconds
        for a, d in [
            (CODE, "Trace the call sequence from a to b in src"),
            (MATH, "Compute 1"),
            (PY, "Run python:\nprint(1)"),
        ]
    }
    expected = max(single[CODE], single[MATH]) + single[PY]
    assert plan.metadata.estimated_duration_seconds == pytest.approx(expected)


def test_same_words_same_plan() -> None:
    description = "Compute 1 and also compute 2 then compute ans"
    first = make_plan(description.replace("ans", "3"))
    second = make_plan(description.replace("ans", "3"))
    assert first.model_dump(exclude={"generated_at"}) == second.model_dump(exclude={"generated_at"})


# --------------------------------------------------------------------------------------------------
# Planner: refusals
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "quoted"),
    [
        ("Make me a sandwich", "Make me a sandwich"),
        ("What is the capital of France?", "the capital of France"),
        ("Compute 1+1 then write a poem", "write a poem"),
        ("Compute 1+1 and also summarize the README", "summarize the README"),
        ("Compute 1 then", ""),
        ("Trace the call sequence from the main function to save in src", "the main function"),
        ("```bash\nls\n```", "bash"),
    ],
)
def test_unplannable(description: str, quoted: str) -> None:
    with pytest.raises(PlanningError) as caught:
        make_plan(description)
    message = str(caught.value)
    assert "could not understand the task" in message
    assert repr(quoted) in message
    for phrase in (
        "Trace the call sequence from",
        "Compute EXPR",
        "What is 2.5 * 4?",
        "Run python:",
        "then",
        "and also",
    ):
        assert phrase in message
    assert "set models.planner in the config file (--config FILE or OFFICERAY_CONFIG)" in message
    assert "openai-compatible or vllm tier" in message


@pytest.mark.parametrize(
    ("description", "allowed", "needed"),
    [
        ("Compute 1", [PY, CODE], MATH),
        ("Run python:\nprint(1)", [MATH], PY),
        ("Compute 1 then trace the call sequence from a to b in src", [MATH], CODE),
        ("Compute 1", [], MATH),
    ],
)
def test_disallowed_tool(description: str, allowed: list[str], needed: str) -> None:
    with pytest.raises(PlanningError, match=rf"needs the tool '{needed}'.*not allowed for this task"):
        make_plan(description, allowed=allowed)


# --------------------------------------------------------------------------------------------------
# Planner: feedback
# --------------------------------------------------------------------------------------------------

SEQ = "Compute 1 then run python:\nprint(2)"


def test_timeout_feedback_doubles_that_step_only() -> None:
    first = make_plan(SEQ)
    feedback = [TIMEOUT_FEEDBACK.format(step_id="s2", timeout_seconds=first.steps[1].timeout_seconds)]
    second = make_plan(SEQ, iteration=2, feedback=feedback, previous_plan=first)
    assert [s.timeout_seconds for s in second.steps] == [
        MATH_TIMEOUT_SECONDS,
        2 * PYTHON_EXEC_TIMEOUT_SECONDS,
    ]
    # Another timeout doubles again from the previous plan; the earlier increase is kept otherwise.
    third = make_plan(SEQ, iteration=3, feedback=feedback, previous_plan=second)
    assert third.steps[1].timeout_seconds == 4 * PYTHON_EXEC_TIMEOUT_SECONDS
    fourth = make_plan(SEQ, iteration=4, feedback=["step s1 had no output"], previous_plan=third)
    assert [s.timeout_seconds for s in fourth.steps] == [
        MATH_TIMEOUT_SECONDS,
        4 * PYTHON_EXEC_TIMEOUT_SECONDS,
    ]


def test_timeout_feedback_without_previous_plan_and_several_steps() -> None:
    feedback = ["validator: fine", "step s1 timed out after 60s; step s2 timed out after 120s"]
    plan = make_plan(SEQ, iteration=2, feedback=feedback)
    assert [s.timeout_seconds for s in plan.steps] == [
        2 * MATH_TIMEOUT_SECONDS,
        2 * PYTHON_EXEC_TIMEOUT_SECONDS,
    ]


def test_timeout_doubling_is_capped() -> None:
    previous = make_plan("Run python:\nprint(1)")
    previous.steps[0].timeout_seconds = MAX_STEP_TIMEOUT_SECONDS - 100
    plan = make_plan(
        "Run python:\nprint(1)", feedback=["step s1 timed out after 3500s"], previous_plan=previous
    )
    assert plan.steps[0].timeout_seconds == MAX_STEP_TIMEOUT_SECONDS


def test_feedback_without_timeouts_gives_the_same_plan() -> None:
    first = make_plan(SEQ)
    again = make_plan(
        SEQ, feedback=["step s2 (python_exec) failed (sandbox_error): lost"], previous_plan=first
    )
    assert again.model_dump(exclude={"generated_at"}) == first.model_dump(exclude={"generated_at"})


def test_reviewer_timeout_feedback_round_trips_to_planner() -> None:
    plan = make_plan(SEQ)
    results = [ok(plan, "s1", {"value": 1}), failed(plan, "s2", ErrorType.TIMEOUT, "deadline")]
    review = review_results(review_request(plan, results))
    assert review.verdict == ReviewVerdict.REVISE
    assert TIMEOUT_FEEDBACK_MARKER.format(step_id="s2") in review.feedback
    new = make_plan(SEQ, iteration=2, feedback=[review.feedback], previous_plan=plan)
    assert new.steps[1].timeout_seconds == 2 * plan.steps[1].timeout_seconds


# --------------------------------------------------------------------------------------------------
# Reviewer
# --------------------------------------------------------------------------------------------------


def _step(plan: Plan, step_id: str) -> Any:
    return next(s for s in plan.steps if s.step_id == step_id)


def ok(plan: Plan, step_id: str, output: Any) -> StepResult:
    step = _step(plan, step_id)
    return StepResult(
        step_id=step_id,
        action=step.action,
        idempotency_key=step.idempotency_key,
        status=StepStatus.SUCCEEDED,
        attempts=1,
        output=output,
    )


def failed(
    plan: Plan, step_id: str, error_type: ErrorType, message: str, *, skipped: bool = False
) -> StepResult:
    step = _step(plan, step_id)
    return StepResult(
        step_id=step_id,
        action=step.action,
        idempotency_key=step.idempotency_key,
        status=StepStatus.SKIPPED if skipped else StepStatus.FAILED,
        attempts=1,
        error=StepError(type=error_type, message=message),
    )


def review_request(plan: Plan, results: list[StepResult]) -> ReviewRequest:
    return ReviewRequest(task_id="t1", description="d", iteration=1, plan=plan, results=results)


FOUND = {
    "found": True,
    "path": [
        {"qualified_name": "app.main", "file": "app.py", "line": 3},
        {"qualified_name": "io.save_report", "file": "io.py", "line": 10},
    ],
    "hops": 1,
    "message": "found a path of 1 hop",
}
PY_OUT = {"stdout": "  42\n", "stderr": "", "exit_code": 0}


@pytest.mark.parametrize(
    ("description", "outputs", "final"),
    [
        ("Compute 6*7", {"s1": {"value": 42}}, 42),
        ("Run python:\nprint(42)", {"s1": PY_OUT}, "42"),
        (
            "Trace the call sequence from main to save_report in src",
            {"s1": FOUND},
            {
                "path": ["app.main (app.py:3)", "io.save_report (io.py:10)"],
                "message": "found a path of 1 hop",
            },
        ),
        ("Compute 6*7 then calculate ans / 2", {"s1": {"value": 42}, "s2": {"value": 21}}, 21),
        (
            "Compute 1 and also run python:\nprint(42)",
            {"s1": {"value": 1}, "s2": PY_OUT},
            {"s1": 1, "s2": "42"},
        ),
        (
            "Compute 1 and also compute 2 then compute 3 and also compute 4",
            {"s1": {"value": 1}, "s2": {"value": 2}, "s3": {"value": 3}, "s4": {"value": 4}},
            {"s3": 3, "s4": 4},
        ),
    ],
)
def test_review_approves(description: str, outputs: dict[str, Any], final: Any) -> None:
    plan = make_plan(description)
    review = review_results(review_request(plan, [ok(plan, sid, out) for sid, out in outputs.items()]))
    assert review.verdict == ReviewVerdict.APPROVED
    assert review.final_output == final
    assert review.feedback and "\n" not in review.feedback
    assert "succeeded" in review.feedback


def test_review_code_analyzer_not_found_fails_with_its_message() -> None:
    plan = make_plan("Trace the call sequence from main to nowhere in src")
    message = "no call path from main to nowhere in src"
    output = {"found": False, "path": [], "hops": 0, "message": message}
    review = review_results(review_request(plan, [ok(plan, "s1", output)]))
    assert review.verdict == ReviewVerdict.FAILED
    assert review.feedback == message
    assert review.final_output is None


@pytest.mark.parametrize(
    "error_type", [ErrorType.TIMEOUT, ErrorType.SANDBOX_ERROR, ErrorType.INTERNAL, ErrorType.BAD_INPUT]
)
def test_review_transient_failure_revises(error_type: ErrorType) -> None:
    plan = make_plan(SEQ)
    results = [ok(plan, "s1", {"value": 1}), failed(plan, "s2", error_type, "container lost")]
    review = review_results(review_request(plan, results))
    assert review.verdict == ReviewVerdict.REVISE
    assert "s2" in review.feedback
    if error_type == ErrorType.TIMEOUT:
        assert review.feedback == f"step s2 timed out after {PYTHON_EXEC_TIMEOUT_SECONDS}s"
    else:
        assert error_type.value in review.feedback and "container lost" in review.feedback


@pytest.mark.parametrize("error_type", [ErrorType.TOOL_ERROR, ErrorType.OUTPUT_LIMIT])
def test_review_deterministic_failure_fails(error_type: ErrorType) -> None:
    plan = make_plan(SEQ)
    results = [
        ok(plan, "s1", {"value": 1}),
        failed(plan, "s2", error_type, "ZeroDivisionError: division by zero"),
    ]
    review = review_results(review_request(plan, results))
    assert review.verdict == ReviewVerdict.FAILED
    assert "s2" in review.feedback and PY in review.feedback
    assert "ZeroDivisionError: division by zero" in review.feedback


@pytest.mark.parametrize(
    ("root_type", "verdict"),
    [(ErrorType.TOOL_ERROR, ReviewVerdict.FAILED), (ErrorType.TIMEOUT, ReviewVerdict.REVISE)],
)
@pytest.mark.parametrize("skipped", [True, False])
def test_review_dependency_failed_is_not_a_root_cause(
    root_type: ErrorType, verdict: ReviewVerdict, skipped: bool
) -> None:
    plan = make_plan("Compute 1 then compute ans + 1 then compute ans + 1")
    results = [
        failed(plan, "s1", root_type, "boom"),
        failed(plan, "s2", ErrorType.DEPENDENCY_FAILED, "s1 failed", skipped=skipped),
        failed(plan, "s3", ErrorType.DEPENDENCY_FAILED, "s2 failed", skipped=skipped),
    ]
    review = review_results(review_request(plan, results))
    assert review.verdict == verdict
    assert "s1" in review.feedback
    assert "s2" not in review.feedback and "s3" not in review.feedback


def test_review_transient_and_deterministic_root_causes_revise() -> None:
    plan = make_plan("Compute 1 and also compute 2")
    results = [
        failed(plan, "s1", ErrorType.TOOL_ERROR, "bad"),
        failed(plan, "s2", ErrorType.SANDBOX_ERROR, "lost"),
    ]
    review = review_results(review_request(plan, results))
    assert review.verdict == ReviewVerdict.REVISE
    assert "s1" in review.feedback and "s2" in review.feedback


@pytest.mark.parametrize("output", [{"stdout": "x", "exit_code": 0}, "not a dict", None])
def test_review_missing_expected_keys_revises(output: Any) -> None:
    plan = make_plan("Run python:\nprint(1)")
    review = review_results(review_request(plan, [ok(plan, "s1", output)]))
    assert review.verdict == ReviewVerdict.REVISE
    assert "s1" in review.feedback and "stderr" in review.feedback


def test_review_step_without_result_revises() -> None:
    plan = make_plan(SEQ)
    review = review_results(review_request(plan, [ok(plan, "s1", {"value": 1})]))
    assert review.verdict == ReviewVerdict.REVISE
    assert "s2" in review.feedback


def test_review_clips_long_messages() -> None:
    plan = make_plan("Run python:\nprint(1)")
    message = "Traceback\n" + "x" * 10_000 + "\nValueError: the end"
    review = review_results(review_request(plan, [failed(plan, "s1", ErrorType.TOOL_ERROR, message)]))
    assert review.verdict == ReviewVerdict.FAILED
    assert len(review.feedback) < 1_000
    assert review.feedback.endswith("ValueError: the end")


# --------------------------------------------------------------------------------------------------
# Async wrappers
# --------------------------------------------------------------------------------------------------


async def test_async_wrappers() -> None:
    request = PlanRequest(
        task_id="t9", description="Compute 6*7 then calculate ans / 2", allowed_tools=ALL_TOOLS
    )
    plan = await EmbeddedPlanner().plan(request)
    check_plan(plan)
    results = [ok(plan, "s1", {"value": 42}), ok(plan, "s2", {"value": 21.0})]
    review = await EmbeddedReviewer().review(review_request(plan, results))
    assert review.verdict == ReviewVerdict.APPROVED
    assert review.final_output == 21.0


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "description",
    [
        "Compute " + " " * 19_000 + "1",
        "Compute 1" + " " * 19_000 + "then compute 2",
        "Compute 1 and" + " " * 19_000 + "also compute 2",
        "Calculate 1 ;" + " " * 9_000 + ";" + " " * 9_000 + "then",
        "Trace the call path from " + " " * 6_000 + " to " + " " * 6_000 + " in " + " " * 6_000,
    ],
)
def test_long_runs_of_whitespace_do_not_stall_the_planner(description: str) -> None:
    """A regex that backtracks on whitespace froze the planner for minutes (ReDoS); this must stay linear."""
    request = PlanRequest(task_id="t", description=description, allowed_tools=sorted(BUILTIN_TOOLS))
    with contextlib.suppress(PlanningError):
        plan_task(request)


# --------------------------------------------------------------------------------------------------
# The documented wordings, one phrasing per built-in tool, and revisions from feedback
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "inputs"),
    [
        (
            "Analyze the Python files in the ./src folder and create a call sequence where the start "
            "function is main and the end function is process_data",
            {"folder": "./src", "start_func": "main", "end_func": "process_data"},
        ),
        (
            "Analyze the Python files in /abs/path/to/project and create a call sequence from main to "
            "process_data.",
            {"folder": "/abs/path/to/project", "start_func": "main", "end_func": "process_data"},
        ),
        (
            "Trace the call sequence from main to process_data in the ./src folder",
            {"folder": "./src", "start_func": "main", "end_func": "process_data"},
        ),
        (
            "Create a call chain from `main()` to 'process_data' in src",
            {"folder": "src", "start_func": "main", "end_func": "process_data"},
        ),
    ],
)
def test_call_sequence_wordings(description: str, inputs: dict[str, str]) -> None:
    plan = make_plan(description)
    assert shape(plan) == [(CODE, inputs, [])]


PER_TOOL = [
    ("Run python:\nprint(1)", PY, {"code": "print(1)\n"}),
    (
        "Trace the call sequence from a to b in src",
        CODE,
        {"folder": "src", "start_func": "a", "end_func": "b"},
    ),
    ("Compute 2 + 2", MATH, {"expression": "2 + 2"}),
    ("Read the file notes/todo.txt", "file_operations", {"operation": "read", "path": "notes/todo.txt"}),
    ("List the files in the src folder", "file_operations", {"operation": "list", "path": "src"}),
    (
        "List all files in data recursively",
        "file_operations",
        {"operation": "list", "path": "data", "recursive": True},
    ),
    (
        "Write 'hello, world' to the file out/hello.txt",
        "file_operations",
        {"operation": "write", "path": "out/hello.txt", "content": "hello, world"},
    ),
    ("Delete the file out/hello.txt", "file_operations", {"operation": "delete", "path": "out/hello.txt"}),
    ("Fetch https://example.com/page.", "http_client", {"url": "https://example.com/page", "method": "GET"}),
    ("Search the docs for retry policy", "web_search", {"query": "retry policy"}),
    (
        "Summarize: Ray runs tasks. Serve serves models.",
        "ai_tool",
        {"prompt": "Summarize: Ray runs tasks. Serve serves models."},
    ),
    ("Ask the model: name three colours", "ai_tool", {"prompt": "name three colours"}),
    ("Wait 1 second", "sleep", {"seconds": 1.0}),
]


@pytest.mark.parametrize(("description", "action", "inputs"), PER_TOOL, ids=[a for _, a, _ in PER_TOOL])
def test_one_phrasing_per_built_in_tool(description: str, action: str, inputs: dict[str, Any]) -> None:
    plan = make_plan(description)
    assert shape(plan) == [(action, inputs, [])]


def test_every_built_in_tool_has_a_phrasing() -> None:
    assert {action for _, action, _ in PER_TOOL} == set(BUILTIN_TOOLS)


AMBIGUOUS = (
    "step s1 (code_analyzer) failed (bad_input): end_func 'process_data' is ambiguous: it matches 2 "
    "functions: app.a.process_data (app/a.py:3), app.b.process_data (app/b.py:7). Neither is reachable "
    "from main. Use a qualified name such as 'app.a.process_data'"
)
UNKNOWN = (
    "step s1 (code_analyzer) failed (bad_input): start_func 'mian' not found among 12 functions in "
    "3 files; did you mean: app.main, app.cli.main?"
)


def _revision(description: str, feedback: str, previous: Plan) -> PlanRequest:
    return PlanRequest(
        task_id="t1",
        description=description,
        iteration=previous_iteration(previous) + 1,
        allowed_tools=ALL_TOOLS,
        feedback=[feedback],
        previous_plan=previous,
    )


def previous_iteration(plan: Plan) -> int:
    return int(plan.plan_id.rsplit("-", 1)[1])


def test_planner_qualifies_an_ambiguous_name_from_the_listed_candidates() -> None:
    description = "Trace the call sequence from main to process_data in src"
    first = make_plan(description)
    second = plan_task(_revision(description, AMBIGUOUS, first))
    assert second.steps[0].inputs["end_func"] == "app.a.process_data"
    assert second.steps[0].inputs["start_func"] == "main"
    # the next round names the first candidate: the planner moves on to the second one
    third = plan_task(
        _revision(description, AMBIGUOUS.replace("'process_data' is", "'app.a.process_data' is"), second)
    )
    assert third.steps[0].inputs["end_func"] == "app.b.process_data"
    # a later round whose feedback is about something else keeps the qualified name
    fourth = plan_task(_revision(description, "step s1 timed out after 120s", third))
    assert fourth.steps[0].inputs["end_func"] == "app.b.process_data"
    assert fourth.steps[0].timeout_seconds == 2 * CODE_ANALYZER_TIMEOUT_SECONDS


def test_planner_takes_a_suggested_name_for_an_unknown_one() -> None:
    description = "Trace the call sequence from mian to process_data in src"
    first = make_plan(description)
    second = plan_task(_revision(description, UNKNOWN, first))
    assert second.steps[0].inputs["start_func"] == "app.main"


def test_planner_refuses_to_answer_the_same_plan_to_bad_input_it_cannot_fix() -> None:
    description = "Trace the call sequence from main to process_data in missing_folder"
    first = make_plan(description)
    feedback = "step s1 (code_analyzer) failed (bad_input): folder 'missing_folder' does not exist"
    with pytest.raises(PlanningError, match="cannot revise the plan.*does not exist"):
        plan_task(_revision(description, feedback, first))
