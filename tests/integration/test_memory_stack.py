"""The memory on the running stack: the encoder deployment, the memory actor, the gateway's routes.

A task, then a near-duplicate of it over HTTP: the second is planned from memory (its record and its
trace say so), the memory search finds the first, and negative feedback hides it.
"""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import pytest

from tests.integration.test_tracing_export import _finished

pytestmark = pytest.mark.integration


def _submit(api: httpx.Client, description: str) -> dict[str, Any]:
    answer = api.post("/v1/tasks", json={"description": description})
    assert answer.status_code == 202, answer.text
    return _finished(api, answer.json()["task_id"])


def _span(api: httpx.Client, task_id: str, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        spans = api.get(f"/v1/tasks/{task_id}/trace").json()["spans"]
        found = [s for s in spans if s["name"] == name]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {name} span in the trace of {task_id}"
        time.sleep(0.3)


def test_a_near_duplicate_is_planned_from_memory_and_feedback_hides_it(api: httpx.Client) -> None:
    a, b = random.randint(1000, 9999), random.randint(1000, 9999)  # no other test's task is as near
    first = _submit(api, f"Compute {a} * {b}")
    second = _submit(api, f"Please compute {a} * {b}")

    assert first["result"] == second["result"]
    assert first["model_calls"][0]["reused_from"] is None
    assert second["model_calls"][0]["reused_from"] == first["task_id"]
    assert second["model_calls"][0]["usage"]["completion_tokens"] == 0
    assert second["memory"][0]["task_id"] == first["task_id"] and second["memory"][0]["score"] > 0.9
    search_span = _span(api, second["task_id"], "memory.search")
    assert search_span["attributes"]["officeray.memory.hits"] >= 1
    assert search_span["attributes"]["officeray.memory.best_score"] > 0.9

    found = api.get("/v1/memory/search", params={"q": f"compute {a} * {b}", "k": 5}).json()["hits"]
    assert first["task_id"] in [h["task_id"] for h in found]

    feedback = api.post(f"/v1/tasks/{first['task_id']}/feedback", json={"rating": -1})
    assert feedback.status_code == 201, feedback.text
    found = api.get("/v1/memory/search", params={"q": f"compute {a} * {b}", "k": 5}).json()["hits"]
    assert first["task_id"] not in [h["task_id"] for h in found]
    assert second["task_id"] in [h["task_id"] for h in found]
