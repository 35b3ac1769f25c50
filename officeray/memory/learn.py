"""What the memory learns from a finished task, and how the planner uses what it recalls.

Pure functions of data: :func:`entry_from_record` turns a final task record into a
:class:`~officeray.memory.entries.MemoryEntry` with a one-sentence lesson; :func:`reusable_plan`
decides whether a remembered success may be planned again as it is; :func:`memory_prompt` writes
the examples and warnings an LLM planner reads, within a token budget; :func:`plan_similarity` says
how close a new plan is to a recorded failure's.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from officeray.contracts import (
    FailedStep,
    MemoryHit,
    MemoryOutcome,
    Plan,
    Recall,
    StepStatus,
    TaskRecord,
    TaskStatus,
    utcnow,
)
from officeray.memory.entries import MAX_LESSON_CHARS, MAX_STEP_ERROR_CHARS, MemoryEntry

_OUTCOMES: dict[TaskStatus, MemoryOutcome] = {
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "cancelled",
}

MAX_REVIEW_FEEDBACK_ITEMS = 5
"""Reviewer feedback lines kept per entry."""

MAX_PROMPT_PLAN_CHARS = 1_500
"""Longest plan shown to a planner as one example (longer ones are left out)."""

_SPACE = re.compile(r"\s+")


def _clip(text: str, limit: int) -> str:
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


CHARS_PER_TOKEN = 4
"""Characters a model token holds on average (English text and JSON)."""

MAX_PROMPT_DESCRIPTION_CHARS = 300
"""Longest past task's text shown to a planner (longer ones are cut)."""


def prompt_tokens(text: str) -> int:
    """Tokens as the memory's prompt budget counts them: the words, or the characters over
    :data:`CHARS_PER_TOKEN` where that is more (compact JSON has few spaces)."""
    return max(len(text.split()), -(-len(text) // CHARS_PER_TOKEN))


def entry_from_record(record: TaskRecord, now: datetime | None = None) -> MemoryEntry | None:
    """The memory entry of a finished task attempt; None while the task is not final."""
    outcome = _OUTCOMES.get(record.status)
    if outcome is None:
        return None
    failed = [
        FailedStep(
            step_id=s.step_id,
            action=s.action,
            error_type=s.error.type.value if s.error else "unknown",
            message=_clip(s.error.message if s.error else "", MAX_STEP_ERROR_CHARS),
        )
        for s in record.steps
        if s.status == StepStatus.FAILED
    ]
    finished = record.finished_at or record.updated_at
    at = now or utcnow()
    return MemoryEntry(
        entry_id=entry_id_of(record),
        task_id=record.task_id,
        tenant=record.tenant,
        description=record.description,
        plan=record.plan.model_dump(mode="json") if record.plan is not None else None,
        outcome=outcome,
        failed_steps=failed,
        review_feedback=[_clip(f, MAX_LESSON_CHARS) for f in record.feedback][:MAX_REVIEW_FEEDBACK_ITEMS],
        lesson=lesson_of(record, outcome, failed),
        iterations=record.iterations,
        latency_s=max(0.0, (finished - record.created_at).total_seconds()),
        tokens=record.usage.total_tokens,
        created_at=at,
        updated_at=at,
    )


ENTRY_ID_DIGITS = 20
"""Hex digits of an entry id's hash."""


def entry_id_of(record: TaskRecord) -> str:
    """One id per finished attempt (the task, and when it finished): recording it twice (a retried
    write, the embed job beside a live orchestrator) stores it once."""
    finished = record.finished_at or record.updated_at
    digest = hashlib.blake2b(f"{record.task_id}|{finished.isoformat()}".encode(), digest_size=16)
    return f"mem-{digest.hexdigest()[:ENTRY_ID_DIGITS]}"


def lesson_of(record: TaskRecord, outcome: MemoryOutcome, failed: list[FailedStep]) -> str:
    """One sentence: what to repeat (a success) or avoid (a failure), from the reviewer or the error."""
    if outcome == "completed":
        actions = ", ".join(s.action for s in record.plan.steps) if record.plan else "no steps"
        rounds = record.iterations
        if rounds > 1 and record.feedback:
            text = (
                f"Approved after {rounds} rounds ({actions}); the reviewer first asked: {record.feedback[0]}"
            )
        else:
            text = f"Approved in {max(rounds, 1)} round(s) with the plan {actions}."
        return _clip(text, MAX_LESSON_CHARS)
    if outcome == "cancelled":
        return _clip(f"Cancelled: {record.error or 'by a user'}.", MAX_LESSON_CHARS)
    real = [f for f in failed if f.error_type not in ("dependency_failed", "cancelled")]
    if real:
        first = real[0]
        text = f"Step {first.step_id} ({first.action}) failed with {first.error_type}: {first.message}"
    elif record.feedback:
        text = f"The reviewer refused it: {record.feedback[0]}"
    else:
        text = f"Failed: {record.error or 'no reason given'}"
    return _clip(text, MAX_LESSON_CHARS)


# -- reuse ---------------------------------------------------------------------------------------


def _leaves(value: Any) -> Iterator[Any]:
    """The literal values of a step's inputs (references to other steps' outputs are not literals)."""
    if isinstance(value, dict):
        if "from_step" in value:
            return
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


_BEFORE = r"(?<![\w.\\-])(?<!\w/)"
"""A literal does not start inside a word or a path ("main" is not in "domain", "app" not in
"examples/app"; "./src" holds "src")."""

_AFTER = r"(?![\w\\-])(?![/.]\w)"
"""A literal does not stop inside a word or a path ("examples/app" is not in "examples/app/sub";
a sentence's final period ends it)."""


def _appears(literal: str, text: str) -> bool:
    """Whether ``literal`` is in ``text`` as a whole (case and whitespace aside: "6*7" is "6 * 7";
    "examples/app" is not in "examples/app/sub", nor "main" in "domain")."""
    chars = [re.escape(c) for c in literal.casefold() if not c.isspace()]
    if not chars:
        return True
    pattern = _BEFORE + r"\s*".join(chars) + _AFTER
    return re.search(pattern, text.casefold()) is not None


def _grounded(value: Any, text: str) -> bool:
    """Whether a literal input appears in the task text."""
    if value is None or isinstance(value, bool):
        return True  # flags carry no words of the task
    if isinstance(value, int | float):
        forms = {str(value)}
        if isinstance(value, float) and value.is_integer():
            forms.add(str(int(value)))
        return any(_appears(form, text) for form in forms)
    literal = str(value).strip()
    return _appears(literal, text) or _appears(literal.removeprefix("./").rstrip("/"), text)


_LITERAL = re.compile(r"\"[^\"]+\"|'[^']+'|[\w.-]*[\d/_][\w./-]*|\w+\.\w+")
"""What a task's text names that a plan must carry as an input: numbers, paths, names with ``_``,
quoted text ("and add 1", "to out_2.txt" ask for more than a plan without them does)."""


def _named(text: str) -> list[str]:
    """The literals ``text`` names (:data:`_LITERAL`), without quotes, ``./`` or a final period."""
    return [m.strip("\"'").rstrip(".,;:/").removeprefix("./") for m in _LITERAL.findall(text)]


def reusable_plan(successes: list[MemoryHit], description: str, threshold: float) -> MemoryHit | None:
    """The remembered success whose plan may be run again for ``description``, if any.

    A success qualifies when its similarity reaches ``threshold``, every literal input of its plan
    (paths, names, numbers, expressions, code) appears in the new task's text, and every number,
    path, ``_`` name or quoted text of the new task appears among the plan's inputs: a paraphrase of
    "Compute 6 * 7" reuses its plan; "Compute 6 * 8" and "Compute 6 * 7 and add 1" do not, however
    similar the sentences are.
    """
    text = description
    for hit in successes:
        if hit.score < threshold or not hit.plan or not hit.plan.get("steps"):
            continue
        leaves = [leaf for step in hit.plan["steps"] for leaf in _leaves(step.get("inputs", {}))]
        inputs = " ".join(str(leaf) for leaf in leaves if leaf is not None and not isinstance(leaf, bool))
        if all(_grounded(leaf, text) for leaf in leaves) and all(
            _appears(literal, inputs) for literal in _named(text)
        ):
            return hit
    return None


# -- plans compared ------------------------------------------------------------------------------


def _signature(step: dict[str, Any]) -> str:
    return json.dumps({"action": step.get("action"), "inputs": step.get("inputs", {})}, sort_keys=True)


def plan_similarity(plan: Plan | dict[str, Any], other: dict[str, Any] | None) -> float:
    """How alike two plans are: the Jaccard index of their steps (tool and inputs; step ids and
    keys ignored). 1.0: the same steps."""
    if other is None:
        return 0.0
    data = plan.model_dump(mode="json") if isinstance(plan, Plan) else plan
    mine = {_signature(s) for s in data.get("steps", [])}
    theirs = {_signature(s) for s in other.get("steps", [])}
    if not mine or not theirs:
        return 0.0
    return len(mine & theirs) / len(mine | theirs)


def failure_like(plan: Plan, recall: Recall | None, threshold: float) -> tuple[MemoryHit, float] | None:
    """The recorded failure whose plan this one most resembles, when at least ``threshold``."""
    if recall is None:
        return None
    best: tuple[MemoryHit, float] | None = None
    for hit in recall.failures:
        similarity = plan_similarity(plan, hit.plan)
        if similarity >= threshold and (best is None or similarity > best[1]):
            best = (hit, similarity)
    return best


# -- the planner's prompt ------------------------------------------------------------------------


def _compact_plan(plan: dict[str, Any] | None) -> str:
    if not plan:
        return ""
    steps = [
        {k: s[k] for k in ("step_id", "action", "inputs", "dependencies") if k in s and s[k]}
        for s in plan.get("steps", [])
    ]
    text = json.dumps({"steps": steps}, separators=(",", ":"), default=str)
    return text if len(text) <= MAX_PROMPT_PLAN_CHARS else ""


def memory_prompt(recall: Recall | None, budget_tokens: int) -> str:
    """Examples (similar successes with their plans) and warnings (similar failures with their
    lessons) for an LLM planner, whole lines only, within ``budget_tokens``; empty when none fit."""
    if recall is None or budget_tokens <= 0 or not recall.hits:
        return ""
    lines: list[str] = []
    if recall.successes:
        lines.append("Similar tasks that succeeded before (follow what fits, adapt the inputs):")
        for hit in recall.successes:
            plan = _compact_plan(hit.plan)
            lines.append(
                f'- "{_clip(hit.description, MAX_PROMPT_DESCRIPTION_CHARS)}" (similarity {hit.score:.2f})'
                + (f": {plan}" if plan else "")
            )
    if recall.failures:
        lines.append("Similar tasks that failed before (avoid repeating these mistakes):")
        for hit in recall.failures:
            text = _clip(hit.description, MAX_PROMPT_DESCRIPTION_CHARS)
            lines.append(f'- "{text}" (similarity {hit.score:.2f}): {hit.lesson}')
    kept: list[str] = []
    used = 0
    for line in lines:
        cost = prompt_tokens(line)
        if used + cost > budget_tokens:
            if line.startswith("- "):
                continue  # a shorter line further on may still fit
            break
        kept.append(line)
        used += cost
    if all(not line.startswith("- ") for line in kept):
        return ""
    # a heading whose items were all left out goes too
    return "\n".join(
        line
        for i, line in enumerate(kept)
        if line.startswith("- ") or (i + 1 < len(kept) and kept[i + 1].startswith("- "))
    )
