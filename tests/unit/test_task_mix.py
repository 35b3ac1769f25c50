"""The task mix: the shipped file plans, bad files name file and line, the picker follows weights."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from loadtests.taskmix import DEFAULT_TASK_MIX, TaskKind, TaskMixError, TaskPicker, load_task_mix
from officeray.contracts import PlanRequest
from officeray.tools.builtin import BUILTIN_TOOLS
from serving.tiers.embedded import plan_task


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "mix.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _line(**fields: object) -> str:
    return json.dumps(fields)


# --------------------------------------------------------------------------------------------------
# The shipped mix
# --------------------------------------------------------------------------------------------------


def test_shipped_mix_loads_with_distinct_kinds() -> None:
    kinds = load_task_mix(DEFAULT_TASK_MIX)
    assert kinds
    names = [k.kind for k in kinds]
    assert len(names) == len(set(names))
    assert all(k.weight > 0 for k in kinds)


@pytest.mark.parametrize("kind", load_task_mix(DEFAULT_TASK_MIX), ids=lambda k: k.kind)
def test_every_shipped_description_is_planned_by_the_embedded_planner(kind: TaskKind) -> None:
    request = PlanRequest(task_id="t", description=kind.description, allowed_tools=sorted(BUILTIN_TOOLS))
    plan = plan_task(request)
    assert plan.steps
    assert all(step.action in BUILTIN_TOOLS for step in plan.steps)


def test_load_accepts_a_string_path_defaults_and_tenant(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _line(kind="a", description="Compute 1 + 1"),
        _line(kind="b.c:d-e_1", description="Wait 1 second", weight=2.5, tenant="acme"),
    )
    kinds = load_task_mix(str(path))
    assert [(k.kind, k.weight, k.tenant) for k in kinds] == [("a", 1.0, None), ("b.c:d-e_1", 2.5, "acme")]


def test_comments_and_blank_lines_are_skipped_and_lines_still_counted(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "# the mix",
        "",
        "   ",
        _line(kind="a", description="Compute 1 + 1"),
        "  # indented comment",
        '{"kind": "b", "description": ""}',
    )
    with pytest.raises(TaskMixError) as exc:
        load_task_mix(path)
    # the bad line is the 6th of the file, comments and blanks included
    assert "line 6" in str(exc.value)
    path = _write(tmp_path, "# only", "", _line(kind="a", description="x"), "# end")
    assert [k.kind for k in load_task_mix(path)] == ["a"]


# --------------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("{not json", ["not JSON"]),
        ('["a", "b"]', []),
        (_line(kind="a", description="x", weight=0), ["weight"]),
        (_line(kind="a", description="x", weight=-1), ["weight"]),
        (_line(kind="a", description=""), ["description"]),
        (_line(kind="a"), ["description"]),
        (_line(kind="has space", description="x"), ["kind"]),
        (_line(kind="slash/kind", description="x"), ["kind"]),
        (_line(kind="", description="x"), ["kind"]),
        (_line(kind="a", description="x", colour="red"), ["colour"]),
        (_line(kind="a", description="x", tenant=""), ["tenant"]),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path: Path, bad: str, words: list[str]) -> None:
    path = _write(tmp_path, _line(kind="ok", description="Compute 1 + 1"), bad)
    with pytest.raises(TaskMixError) as exc:
        load_task_mix(path)
    message = str(exc.value)
    assert str(path) in message
    assert "line 2" in message
    for word in words:
        assert word in message, message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    with pytest.raises(TaskMixError, match="cannot read task mix") as exc:
        load_task_mix(path)
    assert str(path) in str(exc.value)


def test_empty_file_has_no_tasks(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(TaskMixError, match="has no tasks") as exc:
        load_task_mix(path)
    assert str(path) in str(exc.value)


def test_file_of_only_comments_has_no_tasks(tmp_path: Path) -> None:
    path = _write(tmp_path, "# nothing", "", "# here")
    with pytest.raises(TaskMixError, match="has no tasks"):
        load_task_mix(path)


def test_task_mix_errors_are_value_errors() -> None:
    assert issubclass(TaskMixError, ValueError)


# --------------------------------------------------------------------------------------------------
# Picker
# --------------------------------------------------------------------------------------------------


def test_picker_draws_in_proportion_to_weights() -> None:
    kinds = [
        TaskKind(kind="heavy", description="x", weight=3),
        TaskKind(kind="light", description="y", weight=1),
    ]
    picker = TaskPicker(kinds, rng=random.Random(1234))
    draws = 20_000
    counts = Counter(picker.pick().kind for _ in range(draws))
    assert set(counts) == {"heavy", "light"}
    assert counts["heavy"] / draws == pytest.approx(0.75, abs=0.015)
    assert counts["heavy"] / counts["light"] == pytest.approx(3.0, rel=0.08)


def test_picker_follows_the_shipped_weights() -> None:
    kinds = load_task_mix(DEFAULT_TASK_MIX)
    total = sum(k.weight for k in kinds)
    picker = TaskPicker(kinds, rng=random.Random(7))
    draws = 20_000
    counts = Counter(picker.pick().kind for _ in range(draws))
    for kind in kinds:
        assert counts[kind.kind] / draws == pytest.approx(kind.weight / total, abs=0.02), kind.kind


def test_picker_with_one_kind_always_returns_it() -> None:
    only = TaskKind(kind="only", description="x", weight=0.001)
    picker = TaskPicker([only], rng=random.Random(0))
    assert {picker.pick().kind for _ in range(100)} == {"only"}


def test_seeded_pickers_repeat_their_draws() -> None:
    kinds = load_task_mix(DEFAULT_TASK_MIX)
    a = TaskPicker(kinds, rng=random.Random(42))
    b = TaskPicker(kinds, rng=random.Random(42))
    assert [a.pick().kind for _ in range(200)] == [b.pick().kind for _ in range(200)]
