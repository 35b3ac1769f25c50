"""``officeray loadtest`` before anything starts: input checks, the plan, the locust command lines,
the CLI's exit codes, and the live progress read from growing sample files. No Ray, no locust run."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pytest

from cluster import cli
from loadtests.loadtest import (
    DEFAULT_SLOS,
    LOCUSTFILE,
    MAX_WORKERS,
    MODEL_LOCUSTFILE,
    SHAPE_LOCUSTFILE,
    LoadtestError,
    Plan,
    Progress,
    _Tail,
    add_arguments,
    check,
    locust_commands,
)
from loadtests.records import COMPLETION_TYPE, SAMPLES_FILE, SUBMIT_NAME, SUBMIT_TYPE, TIMELINE_FILE
from loadtests.shapes import MAX_RUN_S

LOCUST_TIMESPAN = re.compile(r"^(?=\d)(\d+h)?(\d+m)?(\d+s)?$")
"""What locust's ``parse_timespan`` accepts with a unit (``20s``, ``3m``, ``1h20m``)."""


def _args(tmp_path: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    if "--out" not in argv:
        argv = (*argv, "--out", str(tmp_path / "out"))
    return parser.parse_args(list(argv))


def _plan(tmp_path: Path, *argv: str) -> Plan:
    return check(_args(tmp_path, *argv))


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


# --------------------------------------------------------------------------------------------------
# check: bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--users", "0"], ["--users"]),
        (["--users", "-3"], ["--users"]),
        (["--users", "100001"], ["--users"]),
        (["--spawn-rate", "0"], ["--spawn-rate"]),
        (["--duration", "0"], ["--duration"]),
        (["--duration", str(MAX_RUN_S + 1)], ["--duration"]),
        (["--workers", "-1"], ["--workers", str(MAX_WORKERS)]),
        (["--workers", str(MAX_WORKERS + 1)], ["--workers", str(MAX_WORKERS)]),
        (["--arrival-rate", "-0.5"], ["--arrival-rate"]),
        (["--think-time", "-1"], ["--think-time"]),
        (["--task-timeout", "0"], ["--task-timeout"]),
        (["--drain", "-1"], ["--drain"]),
        (["--drain", "3601"], ["--drain"]),
        (["--trace-checks", "-1"], ["--trace-checks"]),
        (["--host", "127.0.0.1:8000"], ["--host", "'127.0.0.1:8000'"]),
        (["--host", "ftp://example.org"], ["--host"]),
        (["--shape", "wobble"], ["wobble"]),
        (["--shape", "spike:colour=red"], ["colour"]),
        (["--slo", "nonsense"], ["nonsense"]),
        (["--scenario", "model"], ["--host"]),
    ],
)
def test_bad_input_is_refused_with_what_to_fix(tmp_path: Path, argv: list[str], words: list[str]) -> None:
    with pytest.raises(LoadtestError) as exc:
        _plan(tmp_path, *argv)
    message = str(exc.value)
    for word in words:
        assert word in message, message
    assert not (tmp_path / "out").exists()  # nothing was started or written


def test_bad_task_mix_file_is_refused(tmp_path: Path) -> None:
    mix = tmp_path / "mix.jsonl"
    mix.write_text('{"kind": "a", "description": "x", "weight": 0}\n', encoding="utf-8")
    with pytest.raises(LoadtestError, match="line 1") as exc:
        _plan(tmp_path, "--task-mix", str(mix))
    assert str(mix) in str(exc.value)
    with pytest.raises(LoadtestError, match="cannot read task mix"):
        _plan(tmp_path, "--task-mix", str(tmp_path / "absent.jsonl"))


def test_missing_shape_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LoadtestError, match="cannot read shape file"):
        _plan(tmp_path, "--shape", str(tmp_path / "absent.yaml"))


def test_bad_slo_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LoadtestError, match="SLO file"):
        _plan(tmp_path, "--slo-file", str(tmp_path / "absent.yaml"))
    slo_file = tmp_path / "slos.yaml"
    slo_file.write_text("slos: [oops]\n", encoding="utf-8")
    with pytest.raises(LoadtestError, match="oops"):
        _plan(tmp_path, "--slo-file", str(slo_file))


def test_non_empty_out_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "used"
    out.mkdir()
    (out / "report.json").write_text("{}", encoding="utf-8")
    with pytest.raises(LoadtestError, match="not empty") as exc:
        _plan(tmp_path, "--out", str(out))
    assert str(out) in str(exc.value)


# --------------------------------------------------------------------------------------------------
# check: the plan
# --------------------------------------------------------------------------------------------------


def test_plan_of_a_steady_run_has_the_default_slo(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "--users", "20", "--spawn-rate", "5", "--duration", "30")
    assert [s.expr for s in plan.slos] == list(DEFAULT_SLOS) == ["run.failures <= 0"]
    assert not plan.shaped
    assert [(s.users, s.spawn_rate, s.duration_s) for s in plan.stages] == [(20, 5.0, 30.0)]
    assert plan.length_s == 30.0
    assert plan.out == tmp_path / "out"
    assert plan.locustfiles == [LOCUSTFILE]


def test_an_empty_out_folder_is_fine(tmp_path: Path) -> None:
    out = tmp_path / "fresh"
    out.mkdir()
    assert _plan(tmp_path, "--out", str(out)).out == out


def test_given_slos_replace_the_default(tmp_path: Path) -> None:
    slo_file = tmp_path / "slos.yaml"
    slo_file.write_text("slos: ['completion.p95_ms <= 30000']\n", encoding="utf-8")
    plan = _plan(tmp_path, "--slo", "submit.p99_ms<=50", "--slo-file", str(slo_file))
    assert [s.expr for s in plan.slos] == ["submit.p99_ms<=50", "completion.p95_ms <= 30000"]


def test_plan_of_a_shaped_run_has_its_stages(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "--users", "40", "--shape", "spike:spike_users=200,base_users=5")
    assert plan.shaped
    assert [(s.name, s.users) for s in plan.stages] == [("base", 5), ("spike", 200), ("recovery", 5)]
    assert plan.length_s == 30.0
    assert plan.locustfiles == [LOCUSTFILE, SHAPE_LOCUSTFILE]


def test_model_scenario_with_a_host_skips_the_task_mix(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path, "--scenario", "model", "--host", "http://127.0.0.1:9", "--task-mix", str(tmp_path / "no")
    )
    assert plan.locustfiles == [LOCUSTFILE, MODEL_LOCUSTFILE]


# --------------------------------------------------------------------------------------------------
# locust command lines
# --------------------------------------------------------------------------------------------------


def test_standalone_command(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "--users", "12", "--spawn-rate", "3", "--duration", "45", "--drain", "30")
    (command,) = locust_commands(plan, "http://127.0.0.1:8000", 5557)
    assert command[:3] == [sys.executable, "-m", "locust"]
    assert command[-1] == "TaskUser"
    assert _flag(command, "-u") == "12"
    assert float(_flag(command, "-r")) == 3.0
    assert _flag(command, "-t") == "45s"
    assert _flag(command, "--host") == "http://127.0.0.1:8000"
    assert _flag(command, "-f") == str(LOCUSTFILE)
    assert _flag(command, "--stop-timeout") == "30s"
    assert "--headless" in command
    assert "--master" not in command and "--worker" not in command
    assert Path(_flag(command, "--out-dir")) == (tmp_path / "out").resolve()


@pytest.mark.parametrize(
    ("drain", "expected"), [("0", "0s"), ("2.6", "3s"), ("30", "30s"), ("3600", "3600s")]
)
def test_stop_timeout_is_a_locust_timespan(tmp_path: Path, drain: str, expected: str) -> None:
    (command,) = locust_commands(_plan(tmp_path, "--drain", drain), "http://h", 1)
    value = _flag(command, "--stop-timeout")
    assert value == expected
    assert LOCUST_TIMESPAN.match(value)
    assert LOCUST_TIMESPAN.match(_flag(command, "-t"))


def test_run_time_is_at_least_one_second(tmp_path: Path) -> None:
    (command,) = locust_commands(_plan(tmp_path, "--duration", "0.2"), "http://h", 1)
    assert _flag(command, "-t") == "1s"


def test_distributed_commands(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "--workers", "2", "--users", "8")
    commands = locust_commands(plan, "http://127.0.0.1:8000", 5599)
    assert len(commands) == 3
    master, *workers = commands
    assert "--master" in master
    assert _flag(master, "--expect-workers") == "2"
    assert _flag(master, "--master-bind-host") == "127.0.0.1"
    assert _flag(master, "--master-bind-port") == "5599"
    assert _flag(master, "-u") == "8"
    assert master[-1] == "TaskUser"
    for worker in workers:
        assert "--worker" in worker and "--master" not in worker
        assert _flag(worker, "--master-host") == "127.0.0.1"
        assert _flag(worker, "--master-port") == "5599"
        assert "TaskUser" in worker
        assert "-u" not in worker and "--headless" not in worker
    assert workers[0] is not workers[1]


def test_shaped_command_plays_a_shape_file(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "--shape", "ramp:steps=2")
    (command,) = locust_commands(plan, "http://h", 1)
    assert Path(_flag(command, "--shape-file")) == (tmp_path / "out").resolve() / "shape.json"
    assert _flag(command, "-f") == f"{LOCUSTFILE},{SHAPE_LOCUSTFILE}"
    for flag in ("-u", "-r", "-t"):
        assert flag not in command


def test_model_scenario_runs_model_users_with_their_prompts(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("{}\n", encoding="utf-8")
    plan = _plan(
        tmp_path,
        "--scenario",
        "model",
        "--host",
        "http://127.0.0.1:9",
        "--model-prompts",
        str(prompts),
        "--workers",
        "1",
    )
    master, worker = locust_commands(plan, "http://127.0.0.1:9", 1)
    assert master[-1] == "ModelUser"
    assert "ModelUser" in worker
    for command in (master, worker):
        assert _flag(command, "--model-prompts") == str(prompts.resolve())


# --------------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------------


def test_cli_bad_input_exits_2_with_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["loadtest", "--users", "0", "--out", str(tmp_path / "out")])
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "--users" in lines[0] and "error" in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "out").exists()


def test_cli_non_empty_out_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "old.txt").write_text("x", encoding="utf-8")
    assert cli.main(["loadtest", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["loadtest", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--users", "--shape", "--workers", "--slo", "--out"):
        assert flag in out


def test_cli_without_out_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["loadtest", "--users", "5"])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Live progress from growing files
# --------------------------------------------------------------------------------------------------


def _sample(kind: str, ms: float) -> str:
    if kind == "task":
        sample = {"t": 1.0, "type": COMPLETION_TYPE, "name": "math", "ms": ms, "ok": True}
    else:
        sample = {"t": 1.0, "type": SUBMIT_TYPE, "name": SUBMIT_NAME, "ms": ms, "ok": True}
    return json.dumps(sample)


def test_progress_reads_only_complete_lines_of_growing_files(tmp_path: Path) -> None:
    progress = Progress(tmp_path, quiet=True)
    progress.update()  # no files yet
    assert "completed 0" in progress.line()
    assert "completion p50/p95 -/- ms" in progress.line()

    samples = tmp_path / SAMPLES_FILE
    full = _sample("task", 100.0)
    with open(samples, "w", encoding="utf-8") as fh:
        fh.write(_sample("task", 200.0) + "\n" + _sample("submit", 7.0) + "\n" + full[:10])
    timeline = tmp_path / TIMELINE_FILE
    timeline.write_text(
        json.dumps({"users": 4, "in_flight": 2, "completed": 1, "failures": 0, "stage": "spike"})
        + '\n{"users": 9',
        encoding="utf-8",
    )
    progress.update()
    line = progress.line()
    assert "completion p50/p95 200/200 ms" in line
    assert "submit p50/p95 7/7 ms" in line
    assert "stage spike: users 4, in flight 2, completed 1" in line

    with open(samples, "a", encoding="utf-8") as fh:
        fh.write(full[10:] + "\n")
    with open(timeline, "a", encoding="utf-8") as fh:
        fh.write(', "in_flight": 0, "completed": 5, "failures": 1, "stage": "recovery"}\n')
    progress.update()
    line = progress.line()
    # two samples now, 100 and 200: interpolated as report.json does (officeray.stats.percentile)
    assert "completion p50/p95 150/195 ms" in line
    assert progress.completion_ms == [200.0, 100.0]
    assert "stage recovery: users 9, in flight 0, completed 5, failures 1" in line


def test_progress_prints_the_final_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / SAMPLES_FILE).write_text(_sample("task", 50.0) + "\n", encoding="utf-8")
    Progress(tmp_path, quiet=False).update(final=True)
    out = capsys.readouterr().out
    assert out.endswith("\n")
    assert "completion p50/p95 50/50 ms" in out
    Progress(tmp_path, quiet=True).update(final=True)
    assert capsys.readouterr().out == ""


def test_tail_skips_corrupt_lines_and_keeps_the_partial_one(tmp_path: Path) -> None:
    path = tmp_path / "grow.jsonl"
    tail = _Tail(path)
    assert tail.read() == []  # not there yet
    path.write_bytes(b'{"a": 1}\nnot json\n{"b": ')
    assert tail.read() == [{"a": 1}]
    assert tail.read() == []
    with open(path, "ab") as fh:
        fh.write(b'2}\n{"c": 3}\n')
    assert tail.read() == [{"b": 2}, {"c": 3}]
