"""Task workspaces: the pure checks (hostile artifact paths, caps, per-risk policies) and the pool
with two real tool runners on the local sandbox backend, sharing a task workspace through the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.testing import LocalActorHandle
from actors.tool_runner import PoolLimits, RunnerPool, ToolRunner
from officeray.config import RiskPolicy, SandboxPolicies, Settings
from officeray.contracts import ErrorType, PlanStep, StepOutcome, TaskRecord, TaskRequest
from officeray.limits import relative_path_problem
from officeray.sandbox_policy import call_limits, capped_timeout, policy_for, policy_refusal
from officeray.testing import InMemoryStore
from officeray.tools.plugins import RiskLevel
from officeray.workspaces import (
    WorkspaceCaps,
    WorkspaceChanges,
    artifact_path_problem,
    check_caps,
    local_artifact_target,
    merged_sizes,
    workspace_owner,
)

pytestmark = pytest.mark.timeout(120)

# -- hostile artifact paths (the gateway's 400 invalid_path) ----------------------------------------

HOSTILE_PATHS = [
    "",
    "../etc/passwd",
    "..%2fetc/passwd".replace("%2f", "/"),  # what the server sees once ..%2f is decoded
    "a/../../b",
    "a/..",
    "..",
    ".",
    "./a",
    "/etc/passwd",
    "//host/share",
    "C:/windows",
    "c:evil",
    "a\\..\\b",
    "..\\secret",
    "a\x00b",
    "a\nb",
    "a//b",
    "a/",
    "x" * 1025,
    "/".join(["d"] * 33),
    # blank names: the agent refuses them, so a stored one would break every later sync
    " ",
    "   ",
    "\t",
    "a/ /b",
    " /a",
    "a/ ",
    "a/\u3000",  # an ideographic space is blank too
]


@pytest.mark.parametrize("path", [*HOSTILE_PATHS, "~", "a/b", "x y.txt", " lead.txt", "/x", "a/../b"])
def test_artifact_paths_refuse_all_that_the_agent_refuses(path: str) -> None:
    if relative_path_problem(path) is not None:
        assert artifact_path_problem(path) is not None


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_artifact_paths_are_refused(path: str, tmp_path: Path) -> None:
    assert artifact_path_problem(path) is not None
    assert local_artifact_target(tmp_path, path) is None


@pytest.mark.parametrize("path", ["notes.txt", "out/report.md", "a/b/c.d", "dots..ok", ".hidden", "ünï.txt"])
def test_plain_artifact_paths_are_accepted(path: str, tmp_path: Path) -> None:
    assert artifact_path_problem(path) is None
    target = local_artifact_target(tmp_path, path)
    assert target is not None and target.is_relative_to(tmp_path.resolve())


def test_a_link_in_the_target_folder_is_not_followed_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "sub").symlink_to(outside)
    assert local_artifact_target(folder, "sub/x.txt") is None
    assert local_artifact_target(folder, "ok.txt") == (folder / "ok.txt").resolve()


def test_caps() -> None:
    caps = WorkspaceCaps(max_task_bytes=10, max_task_files=2, max_tenant_bytes=15)
    assert check_caps({"a": 5, "b": 5}, 5, caps) is None
    assert "max_task_files" in str(check_caps({"a": 1, "b": 1, "c": 1}, 0, caps))
    assert "max_task_bytes" in str(check_caps({"a": 11}, 0, caps))
    assert "max_tenant_bytes" in str(check_caps({"a": 10}, 6, caps))
    changes = WorkspaceChanges(written={"b": b"123"}, deleted=["a"])
    assert merged_sizes({"a": 9, "c": 1}, changes) == {"b": 3, "c": 1}
    assert changes.paths() == ["a", "b"]


# -- per-risk sandbox policies ----------------------------------------------------------------------

POLICIES = SandboxPolicies(
    low=RiskPolicy(max_timeout_s=100), high=RiskPolicy(network_tools=False, memory_mb=256)
)


@pytest.mark.parametrize(
    ("risk", "expected"),
    [
        (RiskLevel.LOW, POLICIES.low),
        ("low", POLICIES.low),
        (RiskLevel.MEDIUM, POLICIES.medium),
        (RiskLevel.HIGH, POLICIES.high),
        ("HIGH", POLICIES.high),
        ("critical", POLICIES.critical),
        ("unheard-of", POLICIES.critical),  # an unknown risk is never treated as a low one
    ],
)
def test_policy_for(risk: Any, expected: RiskPolicy) -> None:
    assert policy_for(risk, POLICIES) == expected


def test_default_policies_are_stricter_for_high_risk() -> None:
    defaults = SandboxPolicies()
    assert defaults.high.memory_mb < defaults.medium.memory_mb
    assert defaults.high.cpu_s < defaults.medium.cpu_s
    assert defaults.high.max_timeout_s < defaults.medium.max_timeout_s
    assert defaults.low.workspace_write and defaults.medium.workspace_write and defaults.high.workspace_write
    assert not defaults.critical.network_tools and not defaults.critical.workspace_write


@pytest.mark.parametrize(
    ("action", "risk", "refused"),
    [
        ("http_client", "high", True),
        ("web_search", "high", True),
        ("http_client", "low", False),
        ("python_exec", "high", False),
        ("file_operations", "high", False),
    ],
)
def test_policy_refusal(action: str, risk: str, refused: bool) -> None:
    problem = policy_refusal(action, risk, policy_for(risk, POLICIES))
    assert (problem is not None) is refused
    if refused:
        assert "sandbox.policies.high.network_tools" in str(problem)


def test_timeout_and_call_limits() -> None:
    assert capped_timeout(300, POLICIES.low) == 100
    assert capped_timeout(30, POLICIES.low) == 30
    assert call_limits(POLICIES.high)["memory_mb"] == 256


async def test_a_subtask_shares_its_roots_workspace_but_never_another_tenants() -> None:
    tasks = {
        "root": TaskRecord(task_id="root", description="d", tenant="acme"),
        "root.s1": TaskRecord(task_id="root.s1", description="d", tenant="acme", parent_id="root"),
        "b-task": TaskRecord(task_id="b-task", description="d", tenant="globex"),
        "forged": TaskRecord(task_id="forged", description="d", tenant="acme", parent_id="b-task"),
        "via": TaskRecord(task_id="via", description="d", tenant="acme", parent_id="forged"),
        "orphan": TaskRecord(task_id="orphan", description="d", tenant="acme", parent_id="gone"),
    }

    async def get_task(task_id: str) -> TaskRecord | None:
        return tasks.get(task_id)

    assert await workspace_owner(get_task, "root.s1") == ("root", "acme")
    assert await workspace_owner(get_task, "root") == ("root", "acme")
    assert await workspace_owner(get_task, "forged") == ("forged", "acme")  # not globex's b-task
    assert await workspace_owner(get_task, "via") == ("forged", "acme")
    assert await workspace_owner(get_task, "orphan") == ("orphan", "acme")
    assert await workspace_owner(get_task, "nope") == ("nope", None)


# -- the pool: two real runners, one task workspace in the store ---------------------------------------


class ThreadedRunner:
    """A :class:`ToolRunner` (local sandbox) behind async methods, for a LocalActorHandle."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.runner = ToolRunner(settings)
        self.name = name
        self.steps: list[str] = []

    async def ready(self) -> bool:
        return await asyncio.to_thread(self.runner.ready)

    async def pid(self) -> int:
        return 100 + int(self.name[-1])

    async def run(self, task_id: str, step: PlanStep, *rest: Any) -> Any:
        self.steps.append(step.step_id)
        return await asyncio.to_thread(self.runner.run, task_id, step, *rest)

    async def interrupt(self, task_id: str, step_id: str) -> bool:
        return self.runner.interrupt(task_id, step_id)

    async def shutdown(self) -> None:
        self.runner.shutdown()


class NoHostRunner:
    async def ready(self) -> bool:
        return True

    async def run(self, *_args: Any) -> StepOutcome:
        raise AssertionError("no host step should run here")


class LocalSandboxActors:
    """Two (or more) :class:`ThreadedRunner` actors (the pool's RunnerActors)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.objects: list[ThreadedRunner] = []

    def start_runner(self) -> LocalActorHandle:
        self.objects.append(ThreadedRunner(self.settings, f"runner{len(self.objects)}"))
        return LocalActorHandle(self.objects[-1])

    def start_host_runner(self) -> LocalActorHandle:
        return LocalActorHandle(NoHostRunner())

    def kill(self, actor: Any) -> None:
        actor.kill()

    def nodes(self) -> list[dict[str, Any]]:
        return [{"Alive": True, "Resources": {"docker": 4.0}}]


def local_settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        workspace_root=tmp_path,
        sandbox={"backend": "local", "spares": 0, **extra.pop("sandbox", {})},
        runners={"count": 2, "resources": {}},
        store={"url": f"sqlite:///{tmp_path}/unused.db"},
        **extra,
    )


Pool = tuple[RunnerPool, InMemoryStore, LocalSandboxActors]


async def make_pool(settings: Settings) -> AsyncIterator[Pool]:
    store = InMemoryStore()
    actors = LocalSandboxActors(settings)
    pool = RunnerPool(settings, actors=actors, store=store, limits=PoolLimits(wait_recheck_s=0.01))
    await pool.wait_ready()
    for task_id in ("t1", "t2"):
        request = TaskRequest(description="x", task_id=task_id, tenant="acme")
        await store.create_task(TaskRecord(task_id=task_id, description="x", tenant="acme"), request)
    try:
        yield pool, store, actors
    finally:
        for obj in actors.objects:
            obj.runner.shutdown()


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    async for made in make_pool(local_settings(tmp_path)):
        yield made


def file_step(
    step_id: str, operation: str, path: str, content: str | None = None
) -> tuple[PlanStep, dict[str, Any]]:
    inputs = {"operation": operation, "path": path, "content": content, "recursive": False}
    step = PlanStep(step_id=step_id, action="file_operations", inputs=inputs, idempotency_key=f"k-{step_id}")
    return step, inputs


async def run(
    pool: RunnerPool, task_id: str, step_id: str, operation: str, path: str, content: str | None = None
) -> StepOutcome:
    step, inputs = file_step(step_id, operation, path, content)
    return await pool.execute(task_id, step, inputs, {})


async def test_a_file_written_on_one_runner_is_read_on_the_other(pool: Pool) -> None:
    runner_pool, store, actors = pool
    written = await run(runner_pool, "t1", "write", "write", "notes.txt", "task one's notes")
    assert written.error is None, written.error
    [stored] = await store.workspace_files("t1")
    assert (stored.path, stored.step_id, stored.size) == ("notes.txt", "write", len("task one's notes"))
    runner_pool._last_task.clear()  # no preference: the runner idle the longest (the other one) takes it
    read = await run(runner_pool, "t1", "read", "read", "notes.txt")
    assert read.error is None, read.error
    assert read.output["content"] == "task one's notes"
    assert [obj.steps for obj in actors.objects] == [["write"], ["read"]]
    # another task sees nothing of it (and the runner's sandbox is recycled for it)
    other = await run(runner_pool, "t2", "read2", "read", "notes.txt")
    assert other.error is not None and "no such file" in other.error.message
    # unchanged files are not written again on the runner that holds them
    again = await run(runner_pool, "t1", "read3", "read", "notes.txt")
    assert again.error is None
    written_before = sum(obj.runner.workspace_sync.files_written for obj in actors.objects)
    await run(runner_pool, "t1", "read4", "read", "notes.txt")
    assert sum(obj.runner.workspace_sync.files_written for obj in actors.objects) == written_before


async def test_deletes_and_failed_steps(pool: Pool) -> None:
    runner_pool, store, _ = pool
    assert (await run(runner_pool, "t1", "w1", "write", "a.txt", "a")).error is None
    assert (await run(runner_pool, "t1", "w2", "write", "b/c.txt", "c")).error is None
    assert (await run(runner_pool, "t1", "d1", "delete", "a.txt")).error is None
    assert [f.path for f in await store.workspace_files("t1")] == ["b/c.txt"]
    failed = await run(runner_pool, "t1", "bad", "read", "missing.txt")
    assert failed.error is not None
    assert [f.path for f in await store.workspace_files("t1")] == ["b/c.txt"]


async def test_a_step_over_the_task_cap_fails_and_keeps_nothing(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, workspace={"max_task_bytes": 10})
    async for runner_pool, store, _ in make_pool(settings):
        assert (await run(runner_pool, "t1", "small", "write", "ok.txt", "12345")).error is None
        over = await run(runner_pool, "t1", "big", "write", "big.txt", "x" * 20)
        assert over.error is not None and over.error.type == ErrorType.OUTPUT_LIMIT
        assert "max_task_bytes" in over.error.message
        assert [f.path for f in await store.workspace_files("t1")] == ["ok.txt"]
        # the next step's sandbox matches the store again: the refused file is gone
        gone = await run(runner_pool, "t1", "read", "read", "big.txt")
        assert gone.error is not None and "no such file" in gone.error.message


async def test_the_tenant_cap_is_checked_by_the_store(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, workspace={"max_tenant_bytes": 12})
    async for runner_pool, store, _ in make_pool(settings):
        assert (await run(runner_pool, "t1", "a", "write", "a.txt", "x" * 8)).error is None
        over = await run(runner_pool, "t2", "b", "write", "b.txt", "y" * 8)  # same tenant
        assert over.error is not None and over.error.type == ErrorType.OUTPUT_LIMIT
        assert "max_tenant_bytes" in over.error.message
        assert await store.workspace_files("t2") == []


async def test_staged_code_is_not_readable_by_a_later_step(tmp_path: Path) -> None:
    project = tmp_path / "project/pkg"
    project.mkdir(parents=True)
    (project / "a.py").write_text("SECRET = 'x'\n\ndef main():\n    run()\n\n\ndef run():\n    pass\n")
    async for runner_pool, store, _ in make_pool(local_settings(tmp_path)):
        inputs = {"folder": "project", "start_func": "main", "end_func": "run"}
        step = PlanStep(step_id="an", action="code_analyzer", inputs=inputs, idempotency_key="k-an")
        analysed = await runner_pool.execute("t1", step, inputs, {})
        assert analysed.error is None, analysed.error
        assert analysed.output["found"] is True
        assert await store.workspace_files("t1") == []  # the staged sources never reach the store
        code = (
            "import glob, os, json\nroot = os.environ['OFFICERAY_WORKSPACE']\n"
            "found = glob.glob(root + '/**/*.py', recursive=True) + glob.glob('/tmp/staged-*/**/*.py')\n"
            "staging = os.environ.get('OFFICERAY_STAGING_ROOT')\n"
            "found += glob.glob(staging + '/**', recursive=True)[1:] if staging else []\n"
            "print(json.dumps([p for p in found if '/exec-' not in p]))"
        )
        py = PlanStep(step_id="py", action="python_exec", inputs={"code": code}, idempotency_key="k-py")
        looked = await runner_pool.execute("t1", py, {"code": code}, {})
        assert looked.error is None, looked.error
        assert looked.output["stdout"].strip() == "[]"
        listed = await run(runner_pool, "t1", "ls", "list", ".")
        assert listed.error is None and "SECRET" not in str(listed.output)


async def test_blank_names_are_never_stored_and_never_break_a_sync(pool: Pool) -> None:
    runner_pool, store, _ = pool
    code = (
        "import os\nos.makedirs('a/ ', exist_ok=True)\n"
        "for name in (' ', 'a/ /b.txt', 'ok.txt'):\n    open(name, 'w').write('x')"
    )
    py = PlanStep(step_id="py", action="python_exec", inputs={"code": code}, idempotency_key="k-py")
    made = await runner_pool.execute("t1", py, {"code": code}, {})
    assert made.error is None, made.error
    assert [f.path for f in await store.workspace_files("t1")] == ["ok.txt"]
    # a blank name kept by an older version is left out of the sync instead of failing every step
    caps = WorkspaceCaps(max_task_bytes=10**6, max_task_files=100, max_tenant_bytes=10**7)
    old = WorkspaceChanges(written={"  ": b"old"})
    await store.apply_workspace_changes("t1", "acme", "old", old, caps)
    for step_id in ("r1", "r2", "r3"):  # on both runners, the second time from their cache
        read = await run(runner_pool, "t1", step_id, "read", "ok.txt")
        assert read.error is None, read.error
    assert (await run(runner_pool, "t1", "w", "write", "new.txt", "n")).error is None
    assert sorted(f.path for f in await store.workspace_files("t1")) == ["  ", "new.txt", "ok.txt"]


async def test_workspace_write_off_discards_the_changes(tmp_path: Path) -> None:
    off = {"workspace_write": False}
    settings = local_settings(tmp_path, sandbox={"policies": {"low": off, "medium": off, "high": off}})
    async for runner_pool, store, _ in make_pool(settings):
        outcome = await run(runner_pool, "t1", "w", "write", "notes.txt", "hello")
        assert outcome.error is None
        assert outcome.output["workspace_discarded"] == ["notes.txt"]
        assert await store.workspace_files("t1") == []


async def test_network_tools_off_refuses_http_client_without_running_it(tmp_path: Path) -> None:
    no_net = {"network_tools": False}
    settings = local_settings(
        tmp_path, sandbox={"policies": {"low": no_net, "medium": no_net, "high": no_net}}
    )
    async for runner_pool, _, _ in make_pool(settings):
        inputs = {"url": "https://example.com/", "method": "GET"}
        step = PlanStep(step_id="h", action="http_client", inputs=inputs, idempotency_key="k-h")
        outcome = await runner_pool.execute("t1", step, inputs, {})
        assert outcome.error is not None and outcome.error.type == ErrorType.POLICY
        assert "network_tools" in outcome.error.message


async def test_the_high_risk_policy_cuts_the_timeout_and_limits_the_call(tmp_path: Path) -> None:
    high = {"max_timeout_s": 1, "memory_mb": 512, "cpu_s": 7}
    settings = local_settings(tmp_path, sandbox={"policies": {"high": high}})
    async for runner_pool, _, _ in make_pool(settings):
        code = "import resource\nprint(resource.getrlimit(resource.RLIMIT_CPU)[0])"
        step = PlanStep(step_id="py", action="python_exec", inputs={"code": code}, idempotency_key="k1")
        outcome = await runner_pool.execute("t1", step, {"code": code}, {})
        assert outcome.error is None, outcome.error
        assert outcome.output["stdout"].strip() == "7"
        slow = "import time\ntime.sleep(30)"
        step = PlanStep(
            step_id="slow",
            action="python_exec",
            inputs={"code": slow},
            timeout_seconds=60,
            idempotency_key="k2",
        )
        outcome = await runner_pool.execute("t1", step, {"code": slow}, {})
        assert outcome.error is not None and outcome.error.type == ErrorType.TIMEOUT
