"""Fair task slots: tasks wait in their tenant's queue beyond the caps; freed slots go to the tenant
served longest ago, within a tenant by priority then arrival; a cancelled waiter leaves cleanly.

No clock and no sleeps: each test lets the event loop run until nothing more can move (:func:`settle`)
and looks at which tasks got a slot, in which order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from officeray.scheduling import FairScheduler

SETTLE_ROUNDS = 20
"""Event loop turns that let every task that can move do so (each grant takes one or two)."""


async def settle() -> None:
    for _ in range(SETTLE_ROUNDS):
        await asyncio.sleep(0)


def caps(default: int = 1000, **by_tenant: int) -> Callable[[str], int]:
    return lambda tenant: by_tenant.get(tenant, default)


class Jobs:
    """Tasks that take a slot and keep it until the test releases it; ``started`` is the order in
    which they got their slots."""

    def __init__(self, scheduler: FairScheduler) -> None:
        self.scheduler = scheduler
        self.started: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.tenant_of: dict[str, str] = {}

    def add(self, name: str, tenant: str, priority: int = 0) -> None:
        self.tenant_of[name] = tenant
        self.tasks[name] = asyncio.ensure_future(self._run(name, tenant, priority))

    async def _run(self, name: str, tenant: str, priority: int) -> None:
        await self.scheduler.acquire(tenant, priority)
        self.started.append(name)

    async def finish(self, name: str) -> None:
        """``name`` ends: its slot is released and the loop runs until the next task started."""
        assert name in self.started, f"{name} never started"
        self.scheduler.release(self.tenant_of[name])
        await settle()


async def test_tasks_beyond_the_slots_wait_and_start_as_slots_free() -> None:
    jobs = Jobs(FairScheduler(2, caps()))
    for name in ("a1", "a2", "a3"):
        jobs.add(name, "acme")
    await settle()
    assert jobs.started == ["a1", "a2"]
    assert jobs.scheduler.queued_by_tenant() == {"acme": 1}
    await jobs.finish("a1")
    assert jobs.started == ["a1", "a2", "a3"]
    assert jobs.scheduler.stats() == {
        "slots": 2,
        "running": 2,
        "queued": 0,
        "running_by_tenant": {"acme": 2},
        "queued_by_tenant": {},
    }


async def test_a_tenants_backlog_delays_another_tenants_task_by_one_freed_slot_at_most() -> None:
    jobs = Jobs(FairScheduler(2, caps()))
    for i in range(50):
        jobs.add(f"a{i}", "acme")
    await settle()
    jobs.add("g0", "globex")
    await settle()
    assert jobs.started == ["a0", "a1"]
    await jobs.finish("a0")
    assert jobs.started[-1] == "g0"  # the first slot that frees is globex's
    assert jobs.scheduler.queued_by_tenant() == {"acme": 48}


async def test_tenants_with_backlogs_take_turns() -> None:
    jobs = Jobs(FairScheduler(1, caps()))
    jobs.add("first", "acme")
    for i in range(3):
        for tenant in ("acme", "globex", "initech"):
            jobs.add(f"{tenant}{i}", tenant)
    await settle()
    for _ in range(9):
        await jobs.finish(jobs.started[-1])
    assert jobs.started[1:] == [
        "globex0", "initech0", "acme0",
        "globex1", "initech1", "acme1",
        "globex2", "initech2", "acme2",
    ]  # fmt: skip


async def test_within_a_tenant_higher_priority_first_then_arrival() -> None:
    jobs = Jobs(FairScheduler(1, caps()))
    jobs.add("running", "acme")
    await settle()
    for name, priority in [("low", 0), ("high1", 5), ("mid", 1), ("high2", 5), ("low2", 0), ("top", 1000)]:
        jobs.add(name, "acme", priority)
    await settle()
    for _ in range(6):
        await jobs.finish(jobs.started[-1])
    assert jobs.started == ["running", "top", "high1", "high2", "mid", "low", "low2"]


async def test_priority_does_not_jump_another_tenants_turn() -> None:
    jobs = Jobs(FairScheduler(1, caps()))
    jobs.add("a0", "acme")
    await settle()
    jobs.add("urgent", "acme", 1000)
    jobs.add("g0", "globex", 0)
    await settle()
    await jobs.finish("a0")
    assert jobs.started == ["a0", "g0"]


async def test_a_tenant_at_its_cap_waits_while_others_use_the_free_slots() -> None:
    jobs = Jobs(FairScheduler(10, caps(acme=2)))
    for i in range(4):
        jobs.add(f"a{i}", "acme")
    jobs.add("g0", "globex")
    await settle()
    assert sorted(jobs.started) == ["a0", "a1", "g0"]
    assert jobs.scheduler.queued_by_tenant() == {"acme": 2}
    await jobs.finish("g0")  # a free slot of another tenant does not lift acme's cap
    assert sorted(jobs.started) == ["a0", "a1", "g0"]
    await jobs.finish("a1")
    assert jobs.started[-1] == "a2"


async def test_a_cap_read_at_each_decision_so_a_raised_cap_applies_to_the_next_slot() -> None:
    limits = {"acme": 1}
    jobs = Jobs(FairScheduler(10, lambda tenant: limits.get(tenant, 1000)))
    for i in range(3):
        jobs.add(f"a{i}", "acme")
    await settle()
    assert jobs.started == ["a0"]
    limits["acme"] = 3
    await jobs.finish("a0")
    assert jobs.started == ["a0", "a1", "a2"]


async def test_a_cancelled_waiter_leaves_its_queue_and_holds_nothing() -> None:
    jobs = Jobs(FairScheduler(1, caps()))
    jobs.add("a0", "acme")
    jobs.add("a1", "acme")
    jobs.add("a2", "acme")
    await settle()
    jobs.tasks["a1"].cancel()
    await settle()
    assert jobs.tasks["a1"].cancelled()
    assert jobs.scheduler.queued_by_tenant() == {"acme": 1}
    await jobs.finish("a0")
    assert jobs.started == ["a0", "a2"]
    await jobs.finish("a2")
    assert jobs.scheduler.stats()["running"] == 0
    assert jobs.scheduler.queued_by_tenant() == {}


async def test_the_last_waiter_of_a_tenant_cancelled_removes_the_tenant_from_the_turns() -> None:
    jobs = Jobs(FairScheduler(1, caps()))
    jobs.add("a0", "acme")
    jobs.add("g0", "globex")
    jobs.add("i0", "initech")
    await settle()
    jobs.tasks["g0"].cancel()
    await settle()
    await jobs.finish("a0")
    assert jobs.started == ["a0", "i0"]
    assert jobs.scheduler.queued_by_tenant() == {}


async def test_a_waiter_cancelled_just_after_it_was_granted_hands_the_slot_on() -> None:
    scheduler = FairScheduler(1, caps())
    jobs = Jobs(scheduler)
    jobs.add("a0", "acme")
    jobs.add("a1", "acme")
    jobs.add("a2", "acme")
    await settle()
    scheduler.release("acme")  # a0 ends: a1 is granted the slot...
    jobs.tasks["a1"].cancel()  # ...and cancelled before it could run on
    await settle()
    assert jobs.tasks["a1"].cancelled()
    assert jobs.started == ["a0", "a2"]
    assert scheduler.running_by_tenant() == {"acme": 1}


async def test_the_slot_context_releases_on_error_and_on_cancel() -> None:
    scheduler = FairScheduler(1, caps())

    async def failing() -> None:
        async with scheduler.slot("acme"):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await failing()
    assert scheduler.running == 0

    entered = asyncio.Event()

    async def forever() -> None:
        async with scheduler.slot("acme"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(forever())
    await entered.wait()
    task.cancel()
    await settle()
    assert scheduler.running == 0
    async with scheduler.slot("globex"):  # the slot is free again
        assert scheduler.running_by_tenant() == {"globex": 1}


async def test_many_tenants_leave_no_state_behind() -> None:
    scheduler = FairScheduler(4, caps(default=1))
    jobs = Jobs(scheduler)
    for i in range(2000):
        jobs.add(f"t{i}", f"tenant-{i % 500}")
    await settle()
    while len(jobs.started) < 2000:
        running = [n for n in jobs.started if n in jobs.tasks]
        for name in running:
            jobs.tasks.pop(name)
            scheduler.release(jobs.tenant_of[name])
        await settle()
    for name in list(jobs.tasks):
        jobs.tasks.pop(name)
        scheduler.release(jobs.tenant_of[name])
    assert scheduler.stats()["running"] == 0
    assert scheduler.queued_by_tenant() == {}
    assert scheduler._served == {}  # noqa: SLF001 - the state a long-lived orchestrator must not keep


def test_releasing_a_slot_not_held_is_a_bug_that_says_so() -> None:
    with pytest.raises(RuntimeError, match="did not hold"):
        FairScheduler(1, caps()).release("acme")


def test_zero_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FairScheduler(0, caps())
