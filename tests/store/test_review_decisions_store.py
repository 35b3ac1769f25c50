"""Review decisions in every store (in-memory, SQLite, PostgreSQL): a person's decision on a task's
escalated results, the first per task and round wins."""

from __future__ import annotations

import pytest

from officeray.contracts import ReviewDecision
from officeray.store import TaskStore

LONG_TASK_ID = "t" * 100


async def test_the_first_review_decision_of_a_round_wins(store: TaskStore) -> None:
    assert await store.get_review_decision("task-1", 1) is None
    assert await store.decide_review("task-1", 1, "revise", "key-alice", "use four")
    assert not await store.decide_review("task-1", 1, "accept", "key-bob")
    decided = await store.get_review_decision("task-1", 1)
    assert isinstance(decided, ReviewDecision)
    assert (decided.task_id, decided.iteration, decided.decision) == ("task-1", 1, "revise")
    assert (decided.decided_by, decided.feedback) == ("key-alice", "use four")
    assert decided.decided_at.tzinfo is not None

    # another round, another task: decided on their own
    assert await store.decide_review("task-1", 2, "accept", "key-bob")
    assert await store.decide_review(LONG_TASK_ID, 1, "reject", "key-carol", "wrong")
    second = await store.get_review_decision("task-1", 2)
    assert second is not None and (second.decision, second.feedback) == ("accept", "")
    other = await store.get_review_decision(LONG_TASK_ID, 1)
    assert other is not None and other.decision == "reject"
    assert await store.get_review_decision("task-2", 1) is None


async def test_an_unknown_review_decision_is_refused(store: TaskStore) -> None:
    with pytest.raises(ValueError, match="decision must be one of"):
        await store.decide_review("task-1", 1, "approve", "key-alice")  # type: ignore[arg-type]
    assert await store.get_review_decision("task-1", 1) is None


async def test_clearing_a_tasks_review_decisions_lets_its_rounds_be_decided_again(store: TaskStore) -> None:
    assert await store.decide_review("task-1", 1, "reject", "key-bob", "no")
    assert await store.decide_review("task-1", 2, "revise", "key-bob", "more")
    assert await store.decide_review("task-2", 1, "accept", "key-alice")

    assert await store.clear_review_decisions("task-1") == 2
    assert await store.get_review_decision("task-1", 1) is None
    assert await store.get_review_decision("task-1", 2) is None
    assert await store.decide_review("task-1", 1, "accept", "key-alice")  # a new wait, a new first decision
    assert not await store.decide_review("task-1", 1, "reject", "key-bob")
    kept = await store.get_review_decision("task-2", 1)  # another task's are kept
    assert kept is not None and kept.decision == "accept"
    assert await store.clear_review_decisions("task-3") == 0
