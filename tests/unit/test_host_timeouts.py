"""``timeout_seconds`` bounds host tools too: a host step past its timeout fails with ``timeout`` and
its cancel event is set; the network tools use the smaller of their own timeout and the step's; the
runner's ai_tool call waits at most the step's timeout (capped). Slow tools here are fakes: no test
waits more than about a second."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from actors.tool_runner import AI_TOOL_CALL_TIMEOUT_S, AiToolService, HostToolRunner
from officeray.config import Settings
from officeray.contracts import ErrorType, PlanStep
from officeray.tools.catalog import ToolCatalog, builtin_catalog
from officeray.tools.host_inputs import WebSearchSettings
from officeray.tools.spec import HostContext, ToolRuntime, ToolSpec
from tools_sandbox.executor import run_host_step
from tools_sandbox.host_tools import CANCELLED_SERVICE, STEP_TIMEOUT_SERVICE, within_step
from tools_sandbox.host_tools.web_search import ApiSearchProvider, make_provider

RELEASE_S = 5.0
"""Longest a fake slow tool blocks its (daemon) thread before giving up on its own."""


class SlowInput(BaseModel):
    wait_s: float = 30.0


SEEN: dict[str, Any] = {}
RELEASE = threading.Event()


def stubborn(inputs: BaseModel, context: HostContext) -> dict[str, Any]:
    """A host tool that ignores its cancel event (a blocking client call)."""
    SEEN["stubborn_services"] = dict(context.services)
    RELEASE.wait(RELEASE_S)
    return {"done": True}


def polite(inputs: BaseModel, context: HostContext) -> dict[str, Any]:
    """A host tool that waits on its cancel event, as ``sleep`` does."""
    cancelled = context.services[CANCELLED_SERVICE]
    SEEN["polite_woken"] = cancelled.wait(RELEASE_S)
    return {"done": True}


def _catalog() -> ToolCatalog:
    specs = [
        ToolSpec(
            name=name,
            description=f"a slow fake host tool ({name})",
            input_model=SlowInput,
            outputs=("done",),
            runtime=ToolRuntime.HOST,
            host_function=f"{__name__}:{name}",
        )
        for name in ("stubborn", "polite")
    ]
    return ToolCatalog([*builtin_catalog().values(), *specs])


def _step(action: str, timeout_s: int = 1, **inputs: Any) -> PlanStep:
    return PlanStep(
        step_id="s1", action=action, inputs=inputs, timeout_seconds=timeout_s, idempotency_key=f"t:{action}"
    )


@pytest.fixture(autouse=True)
def _released() -> Any:
    SEEN.clear()
    RELEASE.clear()
    yield
    RELEASE.set()  # let a stubborn tool's thread end


def test_a_host_tool_that_ignores_cancellation_still_times_out(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome = run_host_step(_step("stubborn"), {}, tmp_path, HostContext(), catalog=_catalog())
    elapsed = time.monotonic() - started

    assert outcome.error is not None and outcome.error.type == ErrorType.TIMEOUT
    assert "timed out after 1s" in outcome.error.message
    assert 0.9 <= elapsed < 2.5
    services = SEEN["stubborn_services"]
    assert services[STEP_TIMEOUT_SERVICE] == 1.0
    assert services[CANCELLED_SERVICE].is_set()  # set at the timeout


def test_a_waiting_host_tool_is_woken_at_its_timeout(tmp_path: Path) -> None:
    outcome = run_host_step(_step("polite"), {}, tmp_path, HostContext(), catalog=_catalog())

    assert outcome.error is not None and outcome.error.type == ErrorType.TIMEOUT
    deadline = time.monotonic() + 2
    while "polite_woken" not in SEEN and time.monotonic() < deadline:
        time.sleep(0.01)
    assert SEEN["polite_woken"] is True


def test_a_host_tool_within_its_timeout_answers(tmp_path: Path) -> None:
    outcome = run_host_step(_step("sleep", seconds=0.05), {"seconds": 0.05}, tmp_path, HostContext())
    assert outcome.error is None and outcome.output["slept_s"] >= 0.05


def test_host_runner_reports_the_timeout_not_a_cancel(tmp_path: Path) -> None:
    settings = Settings.model_validate({"workspace_root": str(tmp_path), "sandbox": {"backend": "local"}})
    runner = HostToolRunner(settings)
    started = time.monotonic()
    outcome = runner.run("t1", _step("sleep", seconds=600), {"seconds": 600}, {})

    assert outcome.error is not None and outcome.error.type == ErrorType.TIMEOUT, outcome
    assert time.monotonic() - started < 2.5  # not a 600 s wait


@pytest.mark.parametrize(
    ("own", "services", "expected"),
    [
        (None, {}, None),
        (20.0, {}, 20.0),
        (None, {STEP_TIMEOUT_SERVICE: 5.0}, 5.0),
        (20.0, {STEP_TIMEOUT_SERVICE: 5.0}, 5.0),
        (2.0, {STEP_TIMEOUT_SERVICE: 5.0}, 2.0),
        (20.0, {STEP_TIMEOUT_SERVICE: "5"}, 20.0),  # not a number: ignored
        (20.0, {STEP_TIMEOUT_SERVICE: 0}, 20.0),
    ],
)
def test_within_step(own: float | None, services: dict[str, Any], expected: float | None) -> None:
    assert within_step(own, services) == expected


def test_web_search_api_provider_gets_the_steps_timeout() -> None:
    settings = WebSearchSettings(provider="api", endpoint="https://search.example.com/s", api_key_env="KEY")
    provider = make_provider(settings, HostContext(services={STEP_TIMEOUT_SERVICE: 7.0}))
    assert isinstance(provider, ApiSearchProvider) and provider.timeout_s == 7.0
    assert make_provider(settings, HostContext()).timeout_s is None  # type: ignore[attr-defined]


# -- the runner's ai_tool call --------------------------------------------------------------------


class _Pending:
    def __init__(self, handle: _FakeAiHandle) -> None:
        self.handle = handle

    def result(self, timeout_s: float | None = None) -> Any:
        self.handle.timeouts.append(timeout_s)
        raise TimeoutError("Timed out waiting for result.")


class _Method:
    def __init__(self, handle: _FakeAiHandle) -> None:
        self.handle = handle

    def remote(self, *args: Any) -> _Pending:
        return _Pending(self.handle)


class _FakeAiHandle:
    """The ai_tool deployment's handle, never answering in time."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []
        self.answer = _Method(self)


@pytest.mark.parametrize(("step_timeout", "expected"), [(5, 5.0), (600, AI_TOOL_CALL_TIMEOUT_S)])
def test_the_runners_ai_tool_call_waits_at_most_the_steps_timeout(
    tmp_path: Path, step_timeout: int, expected: float
) -> None:
    handle = _FakeAiHandle()
    context = HostContext(services={"ai_tool": AiToolService(handle)})
    step = _step("ai_tool", timeout_s=step_timeout, prompt="hello")

    outcome = run_host_step(step, {"prompt": "hello"}, tmp_path, context)

    assert handle.timeouts == [expected]
    assert outcome.error is not None and outcome.error.type == ErrorType.TIMEOUT
    assert "did not answer in time" in outcome.error.message


def test_ai_tool_service_without_a_step_timeout_uses_the_cap() -> None:
    handle = _FakeAiHandle()
    with pytest.raises(TimeoutError):
        AiToolService(handle).answer("hello", 10)
    assert handle.timeouts == [AI_TOOL_CALL_TIMEOUT_S]
