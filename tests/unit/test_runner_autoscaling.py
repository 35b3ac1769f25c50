"""The tool-runner pool's scaling decisions and their settings (pure functions, no Ray)."""

from __future__ import annotations

import pytest

from actors.tool_runner import (
    missing_resources,
    runners_to_add,
    runners_to_stop,
    start_backoff_s,
    starts_to_cancel,
)
from officeray.config import SANDBOX_RESOURCE, RunnerAutoscaling, load_settings
from officeray.errors import ConfigError

POLICY = RunnerAutoscaling(min_runners=1, max_runners=4, idle_timeout_s=10)


@pytest.mark.parametrize(
    ("running", "starting", "waiting", "expected"),
    [
        (1, 0, 0, 0),  # nothing waits: nothing starts
        (1, 0, 2, 2),  # one start per waiting step
        (1, 1, 2, 1),  # a start already under way covers one waiting step
        (1, 0, 10, 3),  # never past max_runners
        (3, 1, 5, 0),  # at the max (running + starting)
        (0, 0, 1, 1),  # from zero
    ],
)
def test_runners_to_add_covers_waiting_steps_up_to_the_max(
    running: int, starting: int, waiting: int, expected: int
) -> None:
    assert runners_to_add(POLICY, running, starting, waiting) == expected


@pytest.mark.parametrize(
    ("running", "idle_for", "expected"),
    [
        (4, [0.0, 5.0, 9.9], 0),  # nobody idle long enough
        (4, [10.0, 12.0, 3.0], 2),  # the two past the timeout
        (2, [30.0, 30.0], 1),  # never below min_runners
        (1, [30.0], 0),
    ],
)
def test_runners_to_stop_only_long_idle_ones_and_not_below_min(
    running: int, idle_for: list[float], expected: int
) -> None:
    assert runners_to_stop(POLICY, running, idle_for) == expected


def test_unneeded_starts_are_cancelled_only_after_a_quiet_timeout() -> None:
    assert starts_to_cancel(POLICY, starting=3, waiting=0, quiet_for_s=2.0) == 0
    assert starts_to_cancel(POLICY, starting=3, waiting=0, quiet_for_s=10.0) == 3
    assert starts_to_cancel(POLICY, starting=3, waiting=2, quiet_for_s=10.0) == 1


def test_runner_settings_default_to_a_fixed_pool_asking_for_the_docker_resource() -> None:
    runners = load_settings(None).runners
    assert runners.autoscaling is None
    assert runners.resources == {SANDBOX_RESOURCE: 1.0}
    assert runners.initial_runners == runners.max_runners == runners.count


def test_runner_autoscaling_bounds_come_from_yaml_keys_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFICERAY_RUNNERS__AUTOSCALING__MAX_RUNNERS", "12")
    monkeypatch.setenv("OFFICERAY_RUNNERS__RESOURCES", '{"docker": 1, "sandbox_ssd": 0.5}')
    runners = load_settings(None, **{"runners.autoscaling.min_runners": 2}).runners
    assert (runners.initial_runners, runners.max_runners) == (2, 12)
    assert runners.resources == {"docker": 1.0, "sandbox_ssd": 0.5}


def test_min_runners_above_max_is_a_config_error_naming_the_key() -> None:
    expected = "runners.autoscaling.*min_runners \\(5\\) is above max_runners \\(2\\)"
    with pytest.raises(ConfigError, match=expected):
        load_settings(None, **{"runners.autoscaling": {"min_runners": 5, "max_runners": 2}})


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"CPU": 1}, "\\['CPU'\\] are not custom resources"),
        ({"docker": 1, "GPU": 1}, "\\['GPU'\\] are not custom resources"),
        ({"docker": 0}, "amounts must be above 0: \\['docker'\\]"),
    ],
)
def test_runner_resources_must_be_custom_and_positive(resources: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=f"runners.resources.*{message}"):
        load_settings(None, **{"runners.resources": resources})


def test_start_backoff_doubles_up_to_its_cap() -> None:
    assert [start_backoff_s(n) for n in range(8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_missing_resources_names_what_no_alive_node_advertises() -> None:
    nodes = [
        {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 2.0, "docker": 8.0}},  # a dead node does not count
    ]
    assert missing_resources({"docker": 1.0}, nodes) == ["docker"]
    assert missing_resources({"docker": 1.0}, [*nodes, {"Alive": True, "Resources": {"docker": 2.0}}]) == []
    assert missing_resources({}, nodes) == []
