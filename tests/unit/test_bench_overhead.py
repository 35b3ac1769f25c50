"""``bench overhead``'s issue-18 parts without a cluster: the targets and their met/missed table, the
memory summed over every process, the idle CPU table, the scaling options and table, the store
choice, the gateway run's report, and the driver's routing to orchestrator shards (on the fake
shards of :mod:`actors.testing`)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from actors.client import OrchestratorClient
from actors.testing import FakeOrchestrator, FakeTaskStore, LocalActors
from loadtests import bench_overhead as bo
from loadtests import bench_shards as bs
from officeray.contracts import TaskRecord, TaskRequest


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", exit_on_error=False)
    bo.add_arguments(parser)
    return parser.parse_args(list(argv))


def _level(
    concurrency: int,
    latencies: list[float],
    *,
    failures: int = 0,
    cpu_s: float = 1.0,
    wall_s: float = 10.0,
    session_rss: int | None = None,
) -> bo.LevelRun:
    return bo.LevelRun(
        concurrency=concurrency,
        tasks=len(latencies) + failures,
        latencies_s=latencies,
        failures=Counter({"timeout": failures}) if failures else Counter(),
        wall_s=wall_s,
        peak_in_flight=concurrency,
        rss_peak=200 * bo.MIB,
        session_rss_peak=session_rss,
        cpu_s={"orchestrator": cpu_s / 2, "raylet": cpu_s / 2},
        processes=Counter({"orchestrator": 1, "raylet": 1}),
    )


# -- targets ----------------------------------------------------------------------------------------


def _targets(**kwargs: Any) -> dict[str, bo.Target]:
    return {f"{t.name}: {t.description}": t for t in bo.targets_of(**kwargs)}


def test_every_target_of_the_issue_is_printed_and_not_measured_without_figures() -> None:
    targets = bo.targets_of([], [])
    lines = [t.line() for t in targets]
    assert all(line.endswith("not measured") for line in lines)
    wanted = [
        "instant CPU per task (every process) at 100 concurrent <= 6 ms",
        "instant throughput at 100 concurrent >= 150 tasks/s",
        "instant median latency at 1 concurrent <= 6 ms",
        "latency median / ideal at 100 concurrent <= 1.03",
        "latency median / ideal at 500 concurrent <= 1.25",
        "latency median / ideal at 1000 concurrent <= 1.9",
        "latency failed tasks at 1000 concurrent <= 0",
        "memory RSS growth per in-flight task (every process) at 1000 concurrent <= 60 KiB",
        "idle CPU of the started, settled system (every process) <= 0.03 cores",
        "gateway submit p99 at 100 users (auth and rate limits on) <= 50 ms",
    ]
    for want in wanted:
        assert any(line == f"target {want}: not measured" for line in lines), want


def test_instant_targets_are_met_or_missed_at_c100_and_c1() -> None:
    # c=100: 200 tasks in 1 s = 200 tasks/s, 1 s CPU / 200 = 5 ms a task; c=1: 5 ms median
    fast = bo.level_row(_level(100, [0.01] * 200, cpu_s=1.0, wall_s=1.0), None, None)
    alone = bo.level_row(_level(1, [0.005] * 10), None, None)
    targets = _targets(latency_rows=[], instant_rows=[alone, fast])
    assert targets["instant: CPU per task (every process) at 100 concurrent"].met is True
    assert targets["instant: throughput at 100 concurrent"].met is True
    assert targets["instant: median latency at 1 concurrent"].met is True
    slow = bo.level_row(_level(100, [0.01] * 200, cpu_s=2.0, wall_s=2.0), None, None)  # 10 ms, 100/s
    alone_slow = bo.level_row(_level(1, [0.007] * 10), None, None)
    targets = _targets(latency_rows=[], instant_rows=[alone_slow, slow])
    assert (
        targets["instant: CPU per task (every process) at 100 concurrent"]
        .line()
        .endswith("missed (10.00 ms)")
    )
    assert targets["instant: throughput at 100 concurrent"].met is False
    assert targets["instant: median latency at 1 concurrent"].met is False
    # the c=100 targets are at c=100, not at the largest level run
    other = bo.level_row(_level(50, [0.01] * 200, cpu_s=1.0, wall_s=1.0), None, None)
    assert (
        _targets(latency_rows=[], instant_rows=[other])["instant: throughput at 100 concurrent"].met is None
    )


@pytest.mark.parametrize(
    ("level", "ratio", "met"),
    [(100, 1.03, True), (100, 1.04, False), (500, 1.25, True), (500, 1.3, False), (1000, 1.89, True)],
)
def test_latency_ratio_targets_are_per_level(level: int, ratio: float, met: bool) -> None:
    row = bo.level_row(_level(level, [4.5 * ratio] * 5), 4.5, None)
    targets = _targets(latency_rows=[row], instant_rows=[])
    assert targets[f"latency: median / ideal at {level} concurrent"].met is met
    assert targets[f"latency: failed tasks at {level} concurrent"].met is True


def test_a_failed_task_misses_the_latency_target_of_its_level() -> None:
    row = bo.level_row(_level(500, [4.6] * 499, failures=1), 4.5, None)
    targets = _targets(latency_rows=[row], instant_rows=[])
    assert targets["latency: failed tasks at 500 concurrent"].line().endswith("missed (1)")


def test_idle_and_gateway_targets_take_their_figures() -> None:
    targets = _targets(latency_rows=[], instant_rows=[], idle_cores=0.02, gateway_p99_ms=51.0)
    assert targets["idle: CPU of the started, settled system (every process)"].met is True
    assert (
        targets["gateway: submit p99 at 100 users (auth and rate limits on)"]
        .line()
        .endswith("missed (51.0 ms)")
    )


# -- memory over every process ----------------------------------------------------------------------


def test_memory_target_is_the_growth_of_every_process_over_in_flight_tasks() -> None:
    run = _level(1000, [5.0] * 1000, session_rss=1100 * bo.MIB)
    row = bo.level_row(run, 4.5, 100 * bo.MIB, 1000 * bo.MIB)
    assert row["session_rss_peak_mib"] == pytest.approx(1100)
    assert row["session_kib_per_in_flight_task"] == pytest.approx(102.4)  # 100 MiB / 1000
    assert row["kib_per_in_flight_task"] == pytest.approx(102.4)  # the orchestrator's column stays
    target = _targets(latency_rows=[row], instant_rows=[])[
        "memory: RSS growth per in-flight task (every process) at 1000 concurrent"
    ]
    assert target.met is False and target.value == pytest.approx(102.4)
    unsampled = bo.level_row(_level(1000, [5.0] * 1000), 4.5, 100 * bo.MIB, None)
    assert unsampled["session_kib_per_in_flight_task"] is None


class _Proc:
    def __init__(self, rss: int | None) -> None:
        self._rss = rss

    def memory_info(self) -> SimpleNamespace:
        if self._rss is None:
            raise psutil.NoSuchProcess(1)
        return SimpleNamespace(rss=self._rss)


def test_rss_sum_counts_every_process_and_skips_those_gone() -> None:
    assert bo.sum_rss([(_Proc(10), None), (_Proc(None), "x"), (_Proc(5), "postgres")]) == 15
    assert bo.sum_rss([]) == 0


def test_an_extra_root_and_its_children_count_once_under_its_group() -> None:
    # a child that starts a grandchild: the child is both this process's descendant and the extra
    # root; it and the grandchild are counted once, as "postgres"
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"  # noqa: E501
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        root = psutil.Process(child.pid)
        for _ in range(100):  # bounded: the grandchild starts within a few seconds
            if root.children():
                break
            psutil.wait_procs([], timeout=0.05)
        grandchild = root.children()[0].pid
        cpu = bo.SessionCpu(orchestrator_pids=[], extra_roots={child.pid: bs.PG_GROUP})
        pids = [proc.pid for proc, _group in cpu.processes()]
        assert len(pids) == len(set(pids))
        snapshot = cpu.snapshot()
        assert snapshot[child.pid][0] == snapshot[grandchild][0] == bs.PG_GROUP
        assert snapshot[psutil.Process().pid][0] == "driver (this process)"
        assert cpu.rss() >= psutil.Process().memory_info().rss
    finally:
        for proc in psutil.Process(child.pid).children(recursive=True):
            proc.kill()
        child.kill()
        child.wait()


# -- idle CPU ---------------------------------------------------------------------------------------


def test_idle_cpu_is_printed_by_process_largest_first_and_totalled_in_the_target() -> None:
    cfg = bo.BenchConfig(levels=(1,), instant_levels=(1,))
    idle = {"raylet": 0.01, "orchestrator": 0.03, "gcs_server": 0.0}
    instant = bo.RunOutcome(levels=[_level(1, [0.005] * 5)], idle_cores=idle)
    result = bo.build_result(cfg, None, [instant])
    table = next(t for t in result.tables if t.title == "idle CPU by process")
    assert [r["group"] for r in table.rows] == ["orchestrator", "raylet", "gcs_server"]
    assert table.rows[0]["share_pct"] == pytest.approx(75.0)
    target = next(t for t in result.targets if t.name == "idle")
    assert target.value == pytest.approx(0.04) and target.met is False
    assert result.to_dict()["idle_cores"] == idle
    assert bo.IDLE_SETTLE_S >= 5 and bo.IDLE_CPU_SAMPLE_S >= 5


# -- scaling: arguments, store, table ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--shards", "0"],
        ["--shards", str(bs.MAX_SHARDS + 1)],
        ["--shards", "1,x"],
        ["--shards", ","],
        ["--store-url", "mysql://u@127.0.0.1/db"],
        ["--store-url", "postgresql+psycopg://u@10.0.0.5/db"],
        ["--store-url", "postgresql+psycopg://u@db.example.com:5432/db"],
        ["--store-url", "not a url"],
        ["--gateway-duration", "0"],
        ["--gateway-duration", str(bo.MAX_GATEWAY_DURATION_S + 1)],
    ],
)
def test_bad_scaling_and_gateway_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(argparse.ArgumentError):
        _parse(*argv)


def test_scaling_arguments_reach_the_config() -> None:
    cfg = bo.config_from_args(_parse())
    assert (cfg.shards, cfg.store_url, cfg.postgres, cfg.skip_gateway) == ((1,), None, False, False)
    assert cfg.gateway_duration_s == bo.DEFAULT_GATEWAY_DURATION_S
    url = "postgresql+psycopg://postgres@127.0.0.1:5433/bench"
    cfg = bo.config_from_args(_parse("--shards", "1,2,2", "--store-url", url, "--skip-gateway"))
    assert (cfg.shards, cfg.store_url, cfg.skip_gateway) == ((1, 2), url, True)
    assert bs.store_url_arg("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_postgres_and_a_store_url_together_are_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("--postgres", "--store-url", "postgresql+psycopg://postgres@localhost/db")
    assert bo.run_from_args(args) == 2
    assert "not both" in capsys.readouterr().err


def test_settings_have_the_shards_and_the_store(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:5433/bench"
    settings = bo.bench_settings(None, tmp_path, 10, None, None, store_url=url, shards=2)
    assert settings.workflow.orchestrators == 2 and settings.store.url == url
    default = bo.bench_settings(None, tmp_path, 10, None, None)
    assert default.workflow.orchestrators == 1 and default.store.url == f"sqlite:///{tmp_path}/bench.db"


def test_store_choice_gives_each_stack_its_store(tmp_path: Path) -> None:
    sqlite = bs.StoreChoice()
    assert sqlite.url_for(tmp_path) == f"sqlite:///{tmp_path}/bench.db" and sqlite.extra_roots() == {}
    given = bs.StoreChoice(url="postgresql+psycopg://postgres:secret@127.0.0.1:6543/db", server_pid=42)
    assert given.url_for(tmp_path) == given.url and given.extra_roots() == {42: bs.PG_GROUP}
    assert "secret" not in given.kind and "6543" in given.kind
    assert bs.url_port("postgresql+psycopg://u@127.0.0.1/db") == 5432 and bs.url_port("sqlite://") is None


def test_the_server_of_a_loopback_url_is_found_by_its_listening_port() -> None:
    def conn(port: int, ip: str = "127.0.0.1", status: str = psutil.CONN_LISTEN, pid: int | None = 7) -> Any:
        return SimpleNamespace(laddr=SimpleNamespace(ip=ip, port=port), status=status, pid=pid)

    conns = [
        conn(5432, status=psutil.CONN_ESTABLISHED, pid=1),
        conn(5433, pid=2),
        conn(5432, ip="10.1.1.1", pid=3),
        conn(5432, pid=4),
    ]
    assert bs.listening_pid(5432, conns) == 4
    assert bs.listening_pid(5999, conns) is None
    assert bs.listening_pid(5432, [conn(5432, pid=None)]) is None


def test_the_scaling_table_compares_each_shard_count_with_the_first() -> None:
    one = [{"concurrency": 100, "tasks": 200, "failed": 0, "tasks_per_s": 70.0, "cpu_ms_per_task": 20.0}]
    two = [{"concurrency": 100, "tasks": 200, "failed": 0, "tasks_per_s": 105.0, "cpu_ms_per_task": 22.0}]
    rows = bs.scaling_rows([(1, one), (2, two)])
    assert [(r["shards"], r["speedup"]) for r in rows] == [(1, 1.0), (2, pytest.approx(1.5))]
    assert rows[1]["cpu_ms_per_task"] == 22.0 and rows[1]["db_cpu_ms_per_task"] is None


def test_several_shard_counts_print_a_scaling_table_and_the_first_gives_the_targets() -> None:
    cfg = bo.BenchConfig(levels=(1,), instant_levels=(100,), shards=(1, 2))
    one = bo.RunOutcome(levels=[_level(100, [0.01] * 200, cpu_s=4.0, wall_s=2.0)], shards=1)
    two = bo.RunOutcome(levels=[_level(100, [0.01] * 200, cpu_s=1.0, wall_s=1.0)], shards=2)
    two.levels[0].cpu_s[bs.PG_GROUP] = 0.2
    result = bo.build_result(cfg, None, [one, two], store="PostgreSQL (test)")
    titles = [t.title for t in result.tables]
    assert "instant models and tools, 1 shard" in titles and "instant models and tools, 2 shards" in titles
    scaling = next(t for t in result.tables if t.title.startswith("scaling"))
    assert [(r["shards"], r["tasks_per_s"]) for r in scaling.rows] == [(1, 100.0), (2, 200.0)]
    assert scaling.rows[1]["db_cpu_ms_per_task"] == pytest.approx(1.0)
    throughput = next(t for t in result.targets if t.description == "throughput at 100 concurrent")
    assert throughput.value == pytest.approx(100.0)  # the first shard count's
    data = result.to_dict()
    assert data["config"]["shards"] == [1, 2] and len(data["scaling"]) == 2
    assert "store: PostgreSQL (test); orchestrator shards: 1, 2" in result.format_text()


# -- the gateway run --------------------------------------------------------------------------------


def test_the_gateway_run_is_the_issue_s_load_test_on_a_system_with_auth() -> None:
    command = bo.gateway_command(Path("/tmp/out"), 100, 30.0)
    assert command[1:3] == ["-m", "loadtests.loadtest"]
    joined = " ".join(command)
    assert "--users 100 --think-time 5 --duration 30" in joined and "--out /tmp/out" in joined
    assert "--host" not in command and "--config" not in command  # its own system: stack.yaml, a key


def test_the_gateway_p99_comes_from_the_load_test_report() -> None:
    report = {
        "submit": {"count": 300, "failures": 0, "p50_ms": 12.0, "p95_ms": 30.0, "p99_ms": 48.5},
        "completion": {"p50_ms": 900.0},
        "trace_completeness": 1.0,
    }
    run = bo.gateway_of_report(report, 100, 30.0, 0)
    assert run.p99_ms == 48.5 and run.problem is None
    row = bo.gateway_row(run)
    assert (row["count"], row["p99_ms"], row["completion_p50_ms"]) == (300, 48.5, 900.0)
    stopped = bo.gateway_of_report(None, 100, 30.0, None)
    assert stopped.p99_ms is None and "deadline" in (stopped.problem or "")
    assert "exit 2" in (bo.gateway_of_report(None, 100, 30.0, 2).problem or "")
    cfg = bo.BenchConfig(levels=(1,), instant_levels=(1,))
    result = bo.build_result(cfg, None, [], gateway=run)
    target = next(t for t in result.targets if t.name == "gateway")
    assert target.met is True and result.to_dict()["gateway"]["p99_ms"] == 48.5
    assert result.tables[0].title.startswith("gateway: officeray loadtest --users 100 --think-time 5")


# -- the driver: tasks routed to shards -------------------------------------------------------------


class _Shard(FakeOrchestrator):
    """A fake shard with the two calls the benchmark makes beyond the client's."""

    async def run(self, request: TaskRequest) -> TaskRecord:
        record, _created = await self.submit(request)
        return await self.wait(record.task_id)

    async def pid(self) -> int:
        return 1000 + self.shard


async def test_the_driver_routes_tasks_to_every_shard_in_turn() -> None:
    store = FakeTaskStore()
    actors = LocalActors(lambda shard: _Shard(shard, 2, store), 2)
    driver = bo.TaskDriver(OrchestratorClient(actors.connect, 2))
    run = await bo.run_level(driver, "say hi", 4, 2, timeout_s=10)
    assert (run.tasks, run.failed, len(run.latencies_s)) == (8, 0, 8)
    assert [c.shard for c in actors.calls_of("run")].count(1) == 4
    assert await driver.pids() == [1000, 1001]
    assert await driver.in_flight() == 0
    assert await bo._settle(driver) is True
