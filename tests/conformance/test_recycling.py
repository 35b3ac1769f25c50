"""Tasks on one runner never see each other: recycling between tasks, pre-warmed spares."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from tools_sandbox.recycling import TaskSandboxes
from tools_sandbox.sandbox import Sandbox
from tools_sandbox.testing import LocalProcessSandbox

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.integration)]
SPARE_WAIT_S = 30


@pytest.fixture(params=BACKENDS)
def factory(request: pytest.FixtureRequest) -> Callable[[], Sandbox]:
    if request.param == "local":
        return LocalProcessSandbox
    from tools_sandbox.docker_sandbox import DockerSandbox

    image = request.getfixturevalue("sandbox_image")
    return lambda: DockerSandbox(image=image)


@pytest.fixture
def pools() -> Iterator[list[TaskSandboxes]]:
    made: list[TaskSandboxes] = []
    yield made
    for pool in made:
        pool.close()


def _py(sandbox: Sandbox, code: str) -> str:
    result = sandbox.call("python_exec", {"code": code, "stdin": ""}, timeout_s=20)
    assert result["exit_code"] == 0, result
    return str(result["stdout"]).strip()


LIST_WORKSPACE = (
    "import os, json\nroot = os.environ['OFFICERAY_WORKSPACE']\n"
    "print(json.dumps(sorted(p for p in os.listdir(root) if not p.startswith('exec-'))))"
)


def _wait_for_spares(pool: TaskSandboxes, count: int) -> None:
    deadline = time.monotonic() + SPARE_WAIT_S
    while pool.spare_count < count:
        assert time.monotonic() < deadline, "spare sandbox never became ready"
        time.sleep(0.05)


@pytest.mark.parametrize("recycle", ["reset", "replace"])
def test_a_task_never_sees_the_files_of_the_previous_task(
    factory: Callable[[], Sandbox], pools: list[TaskSandboxes], recycle: str
) -> None:
    pool = TaskSandboxes(factory, recycle=recycle, spares=1)  # type: ignore[arg-type]
    pools.append(pool)
    first = pool.for_task("task-a")
    first.write_file("secret.txt", "task a's data")
    assert json.loads(_py(first, LIST_WORKSPACE)) == ["secret.txt"]
    # the same task keeps its files between its steps
    assert pool.for_task("task-a") is first
    assert first.read_file("secret.txt") == "task a's data"

    second = pool.for_task("task-b")
    assert json.loads(_py(second, LIST_WORKSPACE)) == []
    assert (second is first) == (recycle == "reset")
    assert pool.recycled == 1


def test_replace_mode_hands_over_a_prewarmed_container(
    factory: Callable[[], Sandbox], pools: list[TaskSandboxes]
) -> None:
    pool = TaskSandboxes(factory, recycle="replace", spares=1)
    pools.append(pool)
    first = pool.for_task("t1")
    _wait_for_spares(pool, 1)
    started = time.monotonic()
    sandbox = pool.for_task("t2")
    handover_s = time.monotonic() - started
    assert sandbox.alive and sandbox is not first
    assert pool.replaced == 1
    # the spare was already running: handing it over needs no cold start
    assert handover_s < 1.0, handover_s
    _wait_for_spares(pool, 1)  # and a new spare is warmed behind it


def test_a_failed_sandbox_is_replaced_by_a_spare(
    factory: Callable[[], Sandbox], pools: list[TaskSandboxes]
) -> None:
    pool = TaskSandboxes(factory, recycle="reset", spares=1)
    pools.append(pool)
    broken = pool.for_task("t1")
    _wait_for_spares(pool, 1)
    pool.retire_failed()
    assert pool.active is not broken and pool.active.alive
    assert _py(pool.for_task("t1"), "print(6 * 7)") == "42"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="recycle"):
        TaskSandboxes(LocalProcessSandbox, recycle="never")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spares"):
        TaskSandboxes(LocalProcessSandbox, spares=99)
