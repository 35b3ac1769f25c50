"""The embedded decomposer's rules (:mod:`officeray.decompose`): what splits, the dependencies and
their placeholders, and what stays one subtask (everything else, the shipped examples included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from officeray.contracts import DecomposeRequest, Decomposition, Subtask
from officeray.decompose import (
    MAX_SUBSTITUTED_RESULT_CHARS,
    EmbeddedDecomposer,
    decompose_rules,
    result_text,
    substitute_results,
)
from serving.roles import accept_decomposition, decomposer_call
from serving.tiers.base import ModelAnswer
from serving.tiers.embedded_tier import EmbeddedTier

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tasks.jsonl"

SPLITS = [
    (
        "1) compute 2+3 2) compute the result of part 1 * 4 3) count words: hello big world",
        [("compute 2+3", []), ("compute {result:s1} * 4", ["s1"]), ("count words: hello big world", [])],
    ),
    (
        "Do these:\n1. Compute 2+3\n2. Multiply the output of step 1 by 4\n3. Count words: a b",
        [("Compute 2+3", []), ("Multiply {result:s1} by 4", ["s1"]), ("Count words: a b", [])],
    ),
    (
        "- compute 1+1\n- compute 2+2\n- wait 1 second",
        [("compute 1+1", []), ("compute 2+2", []), ("wait 1 second", [])],
    ),
    (
        "Part A: compute 1+1 Part B: compute the result of part A * 3",
        [("compute 1+1", []), ("compute {result:s1} * 3", ["s1"])],
    ),
    (
        "1) compute 1+1, 2) compute (1) + 2, and 3) compute 5",
        [("compute 1+1", []), ("compute {result:s1} + 2", ["s1"]), ("compute 5", [])],
    ),
    (
        "1. compute 1\n2. compute 2\n3. compute the result of part 1 + the result of part 2",
        [("compute 1", []), ("compute 2", []), ("compute {result:s1} + {result:s2}", ["s1", "s2"])],
    ),
]

ONE = [
    "Compute 6 * 7 then calculate ans / 2",
    "Compute 6*7; then compute ans / 2",
    "Calculate 2 ** 10 and also compute 3 ** 4",
    "compute (3 + 2) * 4",
    "compute (1 + 1) * (2 + 2)",
    "Run python:\n1. not a part\n2. nor this",
    "```python\nprint(1)\n```\n- a\n- b",
    "1) only one part",
    "2) compute 1 3) compute 2",  # not numbered from 1
    "Please do 1) compute 1 2) compute 2",  # an introduction that does not end with ':'
    "1) compute 1 2)",  # an empty part
    "- one bullet",
    "Compute the result of part 1",
    "Summarize: Ray runs tasks. Serve serves models.",
]


@pytest.mark.parametrize(("description", "expected"), SPLITS)
def test_explicit_enumerations_split(description: str, expected: list[tuple[str, list[str]]]) -> None:
    subtasks = decompose_rules(description).subtasks
    assert [(s.description, s.dependencies) for s in subtasks] == expected
    assert [s.subtask_id for s in subtasks] == [f"s{i}" for i in range(1, len(expected) + 1)]


@pytest.mark.parametrize("description", ONE)
def test_everything_else_stays_one_subtask(description: str) -> None:
    subtasks = decompose_rules(description).subtasks
    assert [(s.subtask_id, s.description, s.dependencies) for s in subtasks] == [("s1", description, [])]


BIG_EXAMPLE_PREFIX = "Do these:"
"""The one shipped example that is a big task (numbered parts)."""


def test_every_shipped_example_but_the_big_task_stays_one_subtask() -> None:
    big = []
    for line in EXAMPLES.read_text().splitlines():
        description = json.loads(line)["description"]
        subtasks = decompose_rules(description).subtasks
        if description.startswith(BIG_EXAMPLE_PREFIX):
            big.append([(s.subtask_id, s.dependencies) for s in subtasks])
        else:
            assert len(subtasks) == 1, description
    assert big == [[("s1", []), ("s2", ["s1"]), ("s3", [])]]


def test_too_many_parts_stay_one() -> None:
    description = " ".join(f"{i}) compute {i}" for i in range(1, 18))
    assert len(decompose_rules(description).subtasks) == 1


def test_tool_hints_are_limited_to_the_allowed_tools() -> None:
    subtasks = decompose_rules("- compute 1+1\n- summarize: text", ["math_calculator"]).subtasks
    assert [s.tool_hints for s in subtasks] == [["math_calculator"], []]


def test_results_are_substituted_as_text_or_compact_json_capped() -> None:
    assert substitute_results("x {result:s1} y {result:s2} {result:s9}", {"s1": 5, "s2": {"a": [1, 2]}}) == (
        'x 5 y {"a":[1,2]} {result:s9}'
    )
    assert result_text("hello") == "hello" and result_text(2.5) == "2.5" and result_text(None) == "null"
    long = result_text("x" * (MAX_SUBSTITUTED_RESULT_CHARS + 10))
    assert long.startswith("x" * MAX_SUBSTITUTED_RESULT_CHARS) and long.endswith("…[cut]")


def test_a_decomposition_is_a_dag_of_unique_ids() -> None:
    with pytest.raises(ValidationError, match="unique"):
        Decomposition(
            subtasks=[Subtask(subtask_id="a", description="x"), Subtask(subtask_id="a", description="y")]
        )
    with pytest.raises(ValidationError, match="not earlier"):
        Decomposition(subtasks=[Subtask(subtask_id="a", description="x", dependencies=["b"])])
    with pytest.raises(ValidationError):
        Decomposition(subtasks=[])


async def test_the_embedded_decomposer_and_tier_answer_the_rules() -> None:
    request = DecomposeRequest(
        task_id="t", description="- compute 1\n- compute 2", allowed_tools=["math_calculator"]
    )
    decomposed = await EmbeddedDecomposer().decompose(request)
    assert decomposed.call is None and len(decomposed.decomposition.subtasks) == 2
    answer = EmbeddedTier("decomposer").answer(decomposer_call(request))
    assert accept_decomposition(answer) == decomposed.decomposition


def test_a_model_answer_becomes_a_decomposition() -> None:
    data = {
        "subtasks": [
            {"subtask_id": "s1", "description": "a"},
            {"subtask_id": "s2", "description": "b {result:s1}", "dependencies": ["s1"]},
        ]
    }
    assert len(accept_decomposition(ModelAnswer(data=data)).subtasks) == 2
    with pytest.raises(ValidationError):
        accept_decomposition(
            ModelAnswer(data={"subtasks": [{"subtask_id": "s1", "description": "a", "dependencies": ["s2"]}]})
        )
