"""The reviewers' side of escalation: the embedded reviewer escalates results it would approve when the
task asks for a person's sign-off (with the would-be result as the proposal); LLM reviewers are told
about ESCALATE and confidence, and their answers are accepted."""

from __future__ import annotations

import json

import pytest

from officeray.contracts import (
    ErrorType,
    ReviewRequest,
    ReviewVerdict,
    StepError,
    StepResult,
    StepStatus,
)
from officeray.testing import make_plan
from serving.roles import REVIEWER_SYSTEM, accept_review, reviewer_call
from serving.tiers.base import ModelAnswer
from serving.tiers.embedded import review_results

PLAN = make_plan("t1", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "2 + 3"}}])


def request(description: str, *, sign_off: bool = False, ok: bool = True) -> ReviewRequest:
    step = PLAN.steps[0]
    result = StepResult(
        step_id="s1",
        action=step.action,
        idempotency_key=step.idempotency_key,
        status=StepStatus.SUCCEEDED if ok else StepStatus.FAILED,
        attempts=1,
        output={"value": 5} if ok else None,
        error=None if ok else StepError(type=ErrorType.TOOL_ERROR, message="division by zero"),
    )
    return ReviewRequest(
        task_id="t1",
        description=description,
        iteration=1,
        plan=PLAN,
        results=[result],
        require_sign_off=sign_off,
    )


@pytest.mark.parametrize(
    ("description", "sign_off", "verdict"),
    [
        ("compute 2 + 3", False, ReviewVerdict.APPROVED),
        ("compute 2 + 3", True, ReviewVerdict.ESCALATE),
        ("compute 2 + 3; a human must sign off on it", False, ReviewVerdict.ESCALATE),
        ("compute 2 + 3 and ask for human review", False, ReviewVerdict.ESCALATE),
    ],
)
def test_the_embedded_reviewer_escalates_what_it_would_approve_when_sign_off_is_asked(
    description: str, sign_off: bool, verdict: ReviewVerdict
) -> None:
    approved = review_results(request("compute 2 + 3"))
    review = review_results(request(description, sign_off=sign_off))
    assert review.verdict == verdict
    assert review.final_output == approved.final_output  # the proposal is the would-be result
    if verdict == ReviewVerdict.ESCALATE:
        assert review.feedback.startswith("the task asks for a person's sign-off")


def test_failed_results_are_not_escalated_even_with_sign_off() -> None:
    review = review_results(request("compute 2 + 3", sign_off=True, ok=False))
    assert review.verdict == ReviewVerdict.FAILED


def test_llm_reviewers_are_told_about_escalate_and_confidence() -> None:
    assert '"ESCALATE"' in REVIEWER_SYSTEM and '"confidence"' in REVIEWER_SYSTEM
    plain = json.loads(reviewer_call(request("compute 2 + 3")).messages[1]["content"])
    assert "require_sign_off" not in plain  # the prompt of a review without sign-off is unchanged
    asked = json.loads(reviewer_call(request("compute 2 + 3", sign_off=True)).messages[1]["content"])
    assert asked["require_sign_off"] is True
    schema = reviewer_call(request("x")).json_schema
    assert schema is not None and "ESCALATE" in json.dumps(schema) and "confidence" in schema["properties"]


def test_an_llm_reviewers_escalation_and_confidence_are_accepted() -> None:
    data = {"verdict": "ESCALATE", "feedback": "unsure about units", "final_output": 5, "confidence": 0.4}
    review = accept_review(ModelAnswer(data=data))
    assert (review.verdict, review.confidence, review.final_output) == (ReviewVerdict.ESCALATE, 0.4, 5)
    with pytest.raises(ValueError, match="confidence"):
        accept_review(ModelAnswer(data={"verdict": "APPROVED", "confidence": 1.5}))
