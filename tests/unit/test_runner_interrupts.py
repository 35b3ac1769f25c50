"""Interrupts that overtake their step: ``interrupt`` runs in the runners' control group, so it can
reach a runner before the step's ``run`` call started there (all host threads busy, say). The step
then starts cancelled instead of running on; an interrupt that comes after its step ended is not
kept for the step's next attempt. The runners are built in process (no Ray), ``ToolRunner`` on the
``local`` sandbox backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.tool_runner import (
    EARLY_INTERRUPT_MAX,
    EARLY_INTERRUPT_TTL_S,
    LATE_INTERRUPT_S,
    EarlyInterrupts,
    HostToolRunner,
    ToolRunner,
)
from officeray.config import Settings
from officeray.contracts import ErrorType, PlanStep, StepOutcome

WAIT_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings_in(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "workspace_root": str(tmp_path),
            "telemetry": {"trace_file": str(tmp_path / "traces.jsonl")},
            "sandbox": {"backend": "local", "spares": 0},
        }
    )


def run_in_thread(runner: Any, task_id: str, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
    """The step's run on its own (daemon) thread, as the actor runs it; fails if it takes WAIT_S."""
    outcome: list[StepOutcome] = []
    thread = threading.Thread(
        target=lambda: outcome.append(runner.run(task_id, step, inputs, {})), daemon=True
    )
    started = time.monotonic()
    thread.start()
    thread.join(WAIT_S)
    assert outcome, f"the step still ran after {time.monotonic() - started:.1f}s"
    return outcome[0]


def test_an_early_interrupt_is_used_once_when_its_step_starts() -> None:
    early = EarlyInterrupts(clock=Clock())
    assert early.ask(("t1", "s1"))
    assert not early.starting(("t1", "s2"))  # another step is not touched
    assert early.starting(("t1", "s1"))
    assert not early.starting(("t1", "s1"))  # used up: the next attempt runs


def test_an_early_interrupt_is_forgotten_after_its_time() -> None:
    clock = Clock()
    early = EarlyInterrupts(clock=clock)
    early.ask(("t1", "s1"))
    clock.now += EARLY_INTERRUPT_TTL_S + 1
    assert not early.starting(("t1", "s1"))


def test_an_interrupt_just_after_its_step_ended_is_not_kept_for_the_next_attempt() -> None:
    clock = Clock()
    early = EarlyInterrupts(clock=clock)
    assert not early.starting(("t1", "s1"))
    early.ended(("t1", "s1"))
    assert not early.ask(("t1", "s1"))  # late, for the run that ended
    assert not early.starting(("t1", "s1"))
    early.ended(("t1", "s1"))
    clock.now += LATE_INTERRUPT_S + 1
    assert early.ask(("t1", "s1"))  # long after: the next attempt's, which has not started
    assert early.starting(("t1", "s1"))


def test_early_interrupts_are_bounded() -> None:
    early = EarlyInterrupts(clock=Clock())
    for i in range(EARLY_INTERRUPT_MAX + 10):
        early.ask((f"t{i}", "s1"))
    assert not early.starting(("t0", "s1"))  # the oldest were forgotten
    assert early.starting((f"t{EARLY_INTERRUPT_MAX + 9}", "s1"))


@pytest.fixture
def host_runner(tmp_path: Path) -> Iterator[HostToolRunner]:
    yield HostToolRunner(settings_in(tmp_path))


def test_a_host_step_interrupted_before_it_started_starts_cancelled(host_runner: HostToolRunner) -> None:
    step = PlanStep(step_id="s1", action="sleep", inputs={"seconds": 600}, idempotency_key="k1")
    assert host_runner.interrupt("t1", "s1")  # its run call is still queued behind busy threads

    outcome = run_in_thread(host_runner, "t1", step, {"seconds": 600})  # not a 600 s wait

    assert outcome.error is not None and outcome.error.type == ErrorType.CANCELLED
    again = run_in_thread(
        host_runner, "t1", step.model_copy(update={"inputs": {"seconds": 0}}), {"seconds": 0}
    )
    assert again.error is None  # the interrupt was used up
    assert not host_runner.interrupt("t1", "s1")  # late: that step just ended here


def test_a_sandbox_step_interrupted_before_it_started_starts_cancelled(tmp_path: Path) -> None:
    runner = ToolRunner(settings_in(tmp_path))
    try:
        step = PlanStep(
            step_id="s1", action="math_calculator", inputs={"expression": "6 * 7"}, idempotency_key="k1"
        )
        assert runner.interrupt("t1", "s1")

        outcome = run_in_thread(runner, "t1", step, {"expression": "6 * 7"})

        assert outcome.error is not None and outcome.error.type == ErrorType.CANCELLED
        again = run_in_thread(runner, "t1", step, {"expression": "6 * 7"})
        assert again.error is None and again.output is not None and again.output["value"] == 42
    finally:
        runner.shutdown()
