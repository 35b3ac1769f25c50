"""The metrics of a running system, scraped from Ray's Prometheus endpoint.

The package's stack (its settings set ``telemetry.metrics.export_port`` and a 1 s report interval,
which :func:`cluster.runtime.init_ray` passes to the local Ray instance) runs tasks over HTTP: one
the embedded planner plans (a sandbox step, planner and reviewer calls) and that announces itself to
a webhook receiver on loopback, one it cannot plan (failed: the dead-letter queue). Then every
metric of :data:`officeray.metrics.CATALOG` must be on ``http://127.0.0.1:<port>/metrics`` with a
value that fits what ran.

The stack's model chains hold one tier each, so no fallback can happen there: a Ray task on the same
instance walks a real :class:`~serving.router.Router` over a failing and an answering scripted tier
with :class:`~actors.metrics.RayMetrics`, as a model replica does, and its fallback must be
scraped too.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from cluster.runtime import LocalStack
from officeray.metrics import CATALOG

pytestmark = pytest.mark.integration

SCRAPE_TIMEOUT_S = 60.0
"""How long the metrics may take to show up (processes report every second; shard 0 counts the
DLQ every 5 s; a loaded machine is slower)."""
TASK_TIMEOUT_S = 120.0
FAILING_TIER = "openai(scrape-test-failing)"
"""The router tier of the Ray task that fails, so that its router falls back."""

Samples = dict[str, list[tuple[dict[str, str], float]]]
"""Scraped samples by series name (``..._bucket``, ``..._count`` for histograms): labels and value."""


def _scrape(port: int) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_officeray_"):
                samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def _total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that have ``labels``."""
    found = samples.get(name, [])
    return sum(value for have, value in found if all(have.get(k) == v for k, v in labels.items()))


def _values(samples: Samples, name: str, **labels: str) -> list[float]:
    found = samples.get(name, [])
    return [value for have, value in found if all(have.get(k) == v for k, v in labels.items())]


class _Receiver(ThreadingHTTPServer):
    """A webhook receiver on loopback that answers 204."""

    def __init__(self) -> None:
        self.received = 0
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received += 1
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _run(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    created = api.post("/v1/tasks", json=body)
    assert created.status_code == 202, created.text
    task_id = created.json()["task_id"]
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while time.monotonic() < deadline:
        task = api.get(f"/v1/tasks/{task_id}", params={"wait_s": 10}).json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return dict(task)
    raise AssertionError(f"task {task_id} did not finish in {TASK_TIMEOUT_S}s")


# Ray's workers cannot import this test module (``tests`` is not installed): send the function whole.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(num_cpus=0)  # the stack's actors hold the instance's CPUs
def _route_with_a_fallback() -> int:
    """In a Ray worker, as in a model replica: a router whose first tier fails over to the second."""
    import asyncio

    from actors.metrics import RayMetrics
    from officeray.config import RouterSettings
    from serving.router import Router
    from serving.testing import ScriptedTier, chain
    from serving.tiers.base import ModelCall, ServerError

    failing = ScriptedTier("openai", "scrape-test-failing", [ServerError("HTTP 503")])
    answering = ScriptedTier("embedded", "rules", ["fine"])
    router = Router("planner", chain(failing, answering), RouterSettings(), metrics=RayMetrics())
    call = ModelCall(role="planner", messages=[{"role": "user", "content": "hi"}])
    routed = asyncio.run(router.call(call, lambda answer: answer.content))
    time.sleep(3)  # the worker reports every second: let it report before it idles
    return routed.fallbacks


def _problems(samples: Samples, completed_before: float, failed_before: float) -> list[str]:
    """What the scrape does not show yet (empty: every metric is there with a sane value)."""
    problems = [
        f"{spec.exported_name} is missing" for spec in CATALOG if not _has(samples, spec.exported_name)
    ]
    if problems:
        return problems
    checks = {
        "a completed task counted": _total(
            samples, "ray_officeray_tasks_finished_total", tenant="default", status="completed"
        )
        > completed_before,
        "a failed task counted": _total(
            samples, "ray_officeray_tasks_finished_total", tenant="default", status="failed"
        )
        > failed_before,
        "task latencies observed": _total(
            samples, "ray_officeray_task_latency_seconds_count", status="completed"
        )
        >= 1,
        "a math step observed": _total(
            samples, "ray_officeray_step_latency_seconds_count", tool="math_calculator", outcome="ok"
        )
        >= 1,
        "planner and reviewer calls counted": _total(
            samples, "ray_officeray_model_calls_total", role="planner", tier="embedded", outcome="ok"
        )
        >= 1
        and _total(samples, "ray_officeray_model_calls_total", role="reviewer", tier="embedded") >= 1,
        "the unplannable task's planner call failed": _total(
            samples, "ray_officeray_model_calls_total", role="planner", tier="embedded", outcome="error"
        )
        >= 1,
        "model latencies observed": _total(
            samples, "ray_officeray_model_call_latency_seconds_count", role="planner", tier="embedded"
        )
        >= 2,
        "tokens in and out": _total(
            samples, "ray_officeray_model_tokens_total", tier="embedded", direction="in"
        )
        > 0
        and _total(samples, "ray_officeray_model_tokens_total", tier="embedded", direction="out") > 0,
        "the fallback counted": _total(
            samples, "ray_officeray_model_fallbacks_total", tier=FAILING_TIER, reason="ServerError"
        )
        >= 1,
        "the embedded breakers closed": set(_values(samples, "ray_officeray_breaker_state", tier="embedded"))
        == {0.0},
        "the failing tier's breaker still closed (one failure)": _values(
            samples, "ray_officeray_breaker_state", tier=FAILING_TIER
        )
        == [0.0],
        "runners in the pools": _total(samples, "ray_officeray_runner_pool_size") >= 1,
        "busy runners within the pools": 0
        <= _total(samples, "ray_officeray_runner_pool_busy")
        <= _total(samples, "ray_officeray_runner_pool_size"),
        "the default tenant's queue depth": _values(samples, "ray_officeray_tasks_queued", tenant="default")
        != []
        and min(_values(samples, "ray_officeray_tasks_queued", tenant="default")) >= 0,
        "the failed task in the DLQ": max(_values(samples, "ray_officeray_dlq_depth"), default=0) >= 1,
        "a webhook backlog count": min(_values(samples, "ray_officeray_webhook_backlog"), default=-1) >= 0,
        "the webhook delivered": _total(samples, "ray_officeray_webhook_attempts_total", outcome="delivered")
        >= 1,
        "sandboxes started": _total(samples, "ray_officeray_sandbox_starts_total") >= 1,
    }
    return [what for what, ok in checks.items() if not ok]


def _has(samples: Samples, exported: str) -> bool:
    return any(name == exported or name == f"{exported}_count" for name in samples)


def _buckets_grow(samples: Samples, exported: str) -> bool:
    """Each series' cumulative buckets never shrink as ``le`` grows, and ``+Inf`` equals its count."""
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for labels, value in samples.get(f"{exported}_bucket", []):
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        series.setdefault(key, []).append((float(labels["le"]), value))
    counts = {tuple(sorted(labels.items())): value for labels, value in samples.get(f"{exported}_count", [])}
    for key, buckets in series.items():
        values = [value for _, value in sorted(buckets)]
        if values != sorted(values) or values[-1] != counts.get(key):
            return False
    return bool(series)


def test_every_metric_is_scraped_with_a_sane_value(
    stack: LocalStack, api: httpx.Client, receiver: _Receiver
) -> None:
    port = stack.settings.telemetry.metrics.export_port
    assert port is not None
    before = _scrape(port)
    completed_before = _total(
        before, "ray_officeray_tasks_finished_total", tenant="default", status="completed"
    )
    failed_before = _total(before, "ray_officeray_tasks_finished_total", tenant="default", status="failed")

    done = _run(api, {"description": "What is 2 ** 10?", "webhook_url": receiver.url})
    assert done["status"] == "completed", done
    unplannable = _run(api, {"description": f"Book me a flight to Lisbon ({uuid.uuid4().hex[:6]})"})
    assert unplannable["status"] == "failed", unplannable
    assert ray.get(_route_with_a_fallback.remote(), timeout=TASK_TIMEOUT_S) == 1

    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    problems = ["not scraped yet"]
    while problems and time.monotonic() < deadline:
        samples = _scrape(port)
        problems = _problems(samples, completed_before, failed_before)
        if problems:
            time.sleep(1)
    assert not problems, problems
    assert receiver.received >= 1
    for spec in CATALOG:
        if spec.kind == "histogram":
            assert _buckets_grow(samples, spec.exported_name), spec.name
