"""A local Ray instance's idle loops: the environment its processes start with (read by Ray's modules
as the periods of their loops), applied only while the instance starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluster.runtime import (
    REPORTER_MIN_INTERVAL_MS,
    SERVE_CONTROL_LOOP_INTERVAL_S,
    SERVE_METRICS_EXPORT_INTERVAL_MS,
    local_ray_env,
    process_environment,
)
from officeray.config import Settings

READ_BY_RAY = """
import json
import ray._private.log_monitor as log_monitor
import ray.dashboard.modules.reporter.reporter_consts as reporter
import ray.serve._private.constants as serve
print(json.dumps([serve.CONTROL_LOOP_INTERVAL_S, serve.RAY_SERVE_METRICS_EXPORT_INTERVAL_MS,
                  log_monitor.RAY_LOG_MONITOR_MANY_FILES_THRESHOLD, reporter.REPORTER_UPDATE_INTERVAL_MS]))
"""
"""What Ray's modules make of the variables, in a fresh process (they read them when imported)."""


def _ray_reads(env: dict[str, str]) -> list[float]:
    clean = {k: v for k, v in os.environ.items() if k not in env}
    out = subprocess.run(
        [sys.executable, "-c", READ_BY_RAY], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.slow  # a fresh Python process that imports Ray and Serve
def test_ray_reads_the_periods_a_local_instance_sets() -> None:
    """Fails when a Ray upgrade renames a variable (the setting would silently do nothing: Ray's
    defaults are 0.1 s, 100 ms, 1000 files and 5000 ms)."""
    env = local_ray_env(Settings())
    assert _ray_reads(env) == [
        SERVE_CONTROL_LOOP_INTERVAL_S,
        SERVE_METRICS_EXPORT_INTERVAL_MS,
        0,
        10_000,  # the metrics report interval
    ]


@pytest.mark.parametrize(("report_ms", "reporter_ms"), [(100, REPORTER_MIN_INTERVAL_MS), (30_000, 30_000)])
def test_node_stats_are_collected_as_often_as_metrics_are_exported_but_not_more_than_ray_does(
    report_ms: int, reporter_ms: int
) -> None:
    settings = Settings.model_validate({"telemetry": {"metrics": {"report_interval_ms": report_ms}}})
    assert local_ray_env(settings)["REPORTER_UPDATE_INTERVAL_MS"] == str(reporter_ms)


def test_the_environment_is_set_while_ray_starts_and_restored_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OFFICERAY_TEST_A", raising=False)
    monkeypatch.setenv("OFFICERAY_TEST_B", "mine")
    with process_environment({"OFFICERAY_TEST_A": "1", "OFFICERAY_TEST_B": "2"}):
        assert os.environ["OFFICERAY_TEST_A"] == "1"
        assert os.environ["OFFICERAY_TEST_B"] == "mine"  # already set: the user's value wins
    assert "OFFICERAY_TEST_A" not in os.environ
    assert os.environ["OFFICERAY_TEST_B"] == "mine"
    with pytest.raises(RuntimeError), process_environment({"OFFICERAY_TEST_A": "1"}):
        raise RuntimeError("ray.init failed")
    assert "OFFICERAY_TEST_A" not in os.environ
