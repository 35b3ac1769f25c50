"""Load shapes: each kind's stages, the CLI and YAML forms, defaults, errors and ``stage_at``."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.shapes import (
    MAX_RUN_S,
    ShapeError,
    Stage,
    expand,
    load_shape,
    parse_cli_shape,
    stage_at,
    steady,
)

DEFAULTS = {"users": 100, "spawn_rate": 10.0, "duration_s": 60.0}


def _shape(source: str, **defaults: float) -> list[Stage]:
    merged = {**DEFAULTS, **defaults}
    return load_shape(
        source,
        users=int(merged["users"]),
        spawn_rate=float(merged["spawn_rate"]),
        duration_s=float(merged["duration_s"]),
    )


# --------------------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------------------


def test_ramp_climbs_in_equal_steps_to_the_target_over_the_duration() -> None:
    stages = _shape("ramp:users=50,duration_s=100,steps=4")
    assert len(stages) == 4
    users = [s.users for s in stages]
    assert users == sorted(users) and len(set(users)) == 4
    assert users[-1] == 50
    assert [s.duration_s for s in stages] == [25.0] * 4
    assert sum(s.duration_s for s in stages) == pytest.approx(100.0)
    assert all(s.spawn_rate == 10.0 for s in stages)


def test_ramp_defaults_to_five_steps_from_the_run_flags() -> None:
    stages = _shape("ramp")
    assert [s.users for s in stages] == [20, 40, 60, 80, 100]
    assert sum(s.duration_s for s in stages) == pytest.approx(60.0)
    assert len({s.name for s in stages}) == 5


def test_ramp_to_fewer_users_than_steps_has_one_step_per_user() -> None:
    stages = _shape("ramp", users=3)
    assert [s.users for s in stages] == [1, 2, 3]
    assert sum(s.duration_s for s in stages) == pytest.approx(60.0)


def test_step_adds_step_users_until_the_target() -> None:
    stages = _shape("step:step_users=30,step_duration_s=5")
    assert [s.users for s in stages] == [30, 60, 90, 100]
    assert all(s.duration_s == 5.0 for s in stages)


def test_step_defaults() -> None:
    stages = _shape("step", users=25)
    assert [s.users for s in stages] == [10, 20, 25]
    assert all(s.duration_s == 10.0 for s in stages)


def test_spike_goes_base_spike_recovery() -> None:
    stages = _shape("spike:spike_users=200,base_users=5")
    assert [s.name for s in stages] == ["base", "spike", "recovery"]
    assert [s.users for s in stages] == [5, 200, 5]
    # the spike is reached at once, not at the run's slow spawn rate
    assert stages[1].spawn_rate >= 200
    assert stages[0].spawn_rate == stages[2].spawn_rate == 10.0


def test_spike_peak_defaults_to_users_and_durations_are_settable() -> None:
    stages = _shape("spike:base_duration_s=3,spike_duration_s=4,after_duration_s=5", users=70)
    assert [s.users for s in stages] == [10, 70, 10]
    assert [s.duration_s for s in stages] == [3.0, 4.0, 5.0]


def test_soak_ramps_then_holds_for_the_rest_of_the_duration() -> None:
    stages = _shape("soak:ramp_s=20", users=40, duration_s=300)
    assert [s.name for s in stages] == ["ramp", "soak"]
    assert [s.users for s in stages] == [40, 40]
    assert [s.duration_s for s in stages] == [20.0, 280.0]
    # fast enough to reach the users within the ramp
    assert stages[0].spawn_rate * 20 >= 40


def test_explicit_stages_from_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "shape.yaml"
    path.write_text(
        "kind: stages\n"
        "stages:\n"
        "  - {name: warm, duration_s: 5, users: 2, spawn_rate: 1}\n"
        "  - {name: hot, duration_s: 7.5, users: 20, spawn_rate: 5, arrival_rate: 3}\n",
        encoding="utf-8",
    )
    stages = _shape(str(path))
    assert [(s.name, s.duration_s, s.users, s.spawn_rate, s.arrival_rate) for s in stages] == [
        ("warm", 5.0, 2, 1.0, None),
        ("hot", 7.5, 20, 5.0, 3.0),
    ]


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_yaml_file_holds_the_same_keys_as_the_cli_form(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"shape{suffix}"
    path.write_text('{"kind": "spike", "spike_users": 200, "base_users": 5}', encoding="utf-8")
    assert _shape(str(path)) == _shape("spike:spike_users=200,base_users=5")


def test_steady_is_one_stage_of_the_run_flags() -> None:
    assert steady(7, 2.0, 30.0) == [Stage(name="steady", duration_s=30.0, users=7, spawn_rate=2.0)]


# --------------------------------------------------------------------------------------------------
# CLI form
# --------------------------------------------------------------------------------------------------


def test_cli_form_parses_kind_and_numbers() -> None:
    assert parse_cli_shape("spike:spike_users=200,base_users=5") == {
        "kind": "spike",
        "spike_users": 200,
        "base_users": 5,
    }
    assert parse_cli_shape(" soak : ramp_s = 2.5 , ") == {"kind": "soak", "ramp_s": 2.5}
    assert parse_cli_shape("ramp") == {"kind": "ramp"}


def test_expand_takes_a_mapping_directly() -> None:
    stages = expand({"kind": "ramp", "steps": 2}, users=10, spawn_rate=1.0, duration_s=20.0)
    assert [(s.users, s.duration_s) for s in stages] == [(5, 10.0), (10, 10.0)]


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("wobble", ["'wobble'", "ramp", "spike", "soak"]),
        ("ramp:speed=3", ["ramp", "speed"]),
        ("spike:base_users=-1", ["spike", "base_users"]),
        ("ramp:users=-5", ["ramp", "users"]),
        ("stages", ["stages"]),
        ("ramp:steps", ["'steps'", "key=value"]),
        ("ramp:=3", ["key=value"]),
        ("soak:ramp_s=60", ["ramp_s", "60", "duration_s"]),
        ("soak:ramp_s=90,duration_s=30", ["ramp_s", "90", "30"]),
        ("step:step_users=1,step_duration_s=21600", ["step", str(int(MAX_RUN_S))]),
        (f"ramp:duration_s={MAX_RUN_S + 1}", ["ramp", "duration_s"]),
        ("ramp:duration_s=nan", ["duration_s"]),
    ],
)
def test_bad_shapes_name_what_is_wrong(source: str, words: list[str]) -> None:
    with pytest.raises(ShapeError) as exc:
        _shape(source)
    message = str(exc.value)
    for word in words:
        assert word in message, message


def test_spike_longer_than_the_longest_run_is_refused() -> None:
    half = MAX_RUN_S / 2
    with pytest.raises(ShapeError, match="at most"):
        _shape(f"spike:base_duration_s={half},spike_duration_s={half},after_duration_s=1")


def test_explicit_stage_with_negative_users_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "neg.yaml"
    path.write_text(
        "kind: stages\nstages: [{name: a, duration_s: 5, users: -1, spawn_rate: 1}]\n", encoding="utf-8"
    )
    with pytest.raises(ShapeError, match=r"stages.*users"):
        _shape(str(path))


def test_explicit_stage_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "extra.yaml"
    path.write_text(
        "kind: stages\nstages: [{name: a, duration_s: 5, users: 1, spawn_rate: 1, colour: red}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ShapeError, match="colour"):
        _shape(str(path))


def test_missing_shape_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ShapeError, match="cannot read shape file") as exc:
        _shape(str(path))
    assert str(path) in str(exc.value)


def test_unreadable_shape_file_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    with pytest.raises(ShapeError, match="cannot read shape file"):
        _shape(str(folder))


def test_shape_file_that_is_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("kind: [spike\n", encoding="utf-8")
    with pytest.raises(ShapeError, match="not valid YAML") as exc:
        _shape(str(path))
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("content", ["- kind: spike\n", "just words\n", ""])
def test_shape_file_that_is_not_a_mapping(tmp_path: Path, content: str) -> None:
    path = tmp_path / "list.yml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ShapeError, match="must hold a mapping"):
        _shape(str(path))


def test_shape_file_without_a_kind(tmp_path: Path) -> None:
    path = tmp_path / "nokind.yaml"
    path.write_text("users: 5\n", encoding="utf-8")
    with pytest.raises(ShapeError, match="kind None"):
        _shape(str(path))


def test_shape_errors_are_value_errors() -> None:
    assert issubclass(ShapeError, ValueError)


# --------------------------------------------------------------------------------------------------
# stage_at
# --------------------------------------------------------------------------------------------------


def test_stage_at_boundaries() -> None:
    stages = _shape("spike:base_duration_s=10,spike_duration_s=5,after_duration_s=20")
    base, spike, recovery = stages
    assert stage_at(stages, 0.0) is base
    assert stage_at(stages, 9.999) is base
    assert stage_at(stages, 10.0) is spike  # a boundary belongs to the next stage
    assert stage_at(stages, 14.5) is spike
    assert stage_at(stages, 15.0) is recovery
    assert stage_at(stages, 34.999) is recovery
    assert stage_at(stages, 35.0) is None  # the run is over
    assert stage_at(stages, 1e9) is None


def test_stage_at_without_stages_is_none() -> None:
    assert stage_at([], 0.0) is None
