"""A planner with sub-agents: one plan step per sub-question, one of them a slow external call.

The planner runs here, on the client: it splits a question ("summarize this text, list its keywords,
count its words and fetch the status page") into sub-questions and gives each to a *sub-agent*, one
parallel plan step that answers it (``ai_tool`` with its embedded answers, or ``http_client`` GET
for the status page). A last step joins them (``math_calculator``, depending on every sub-agent).
The plan is submitted ready-made (``POST /v1/tasks`` with ``plan``), so the server runs it without
its own planner.

The status page is a SLOW EXTERNAL TOOL: a small HTTP server this script starts on 127.0.0.1 that
answers after ``--delay`` seconds (2 by default). While that call is in flight, the script submits a
second, quick task and waits for it: it completes before the slow call answers, because the
orchestrator awaits tool steps instead of blocking on them. Both timings are printed, then the
task's trace as a tree (``GET /v1/tasks/{id}/trace``), where the sub-agents' spans overlap and the
slow call's span is marked.

Run it against a local server whose ``tools.http_client.allow_hosts`` lists ``127.0.0.1`` (see the
README next to this file)::

    python -m examples.subagents.subagents --url http://127.0.0.1:8000 --key "$OFFICERAY_API_KEY"

Exit codes: 0 the demo ran and every sub-agent succeeded; 1 the server could not be reached, refused a
request, or a task did not end as expected; 2 bad usage (an unknown sub-question, a non-loopback URL).
Everything stays on 127.0.0.1, and every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

LOOPBACK = "127.0.0.1"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
"""Hosts ``--url`` may name: the server's runners must reach this script's loopback server."""
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_KEY_FILE = Path(".officeray/admin.key")
"""Where ``officeray serve`` writes the first admin key (used when neither --key nor the env gives one)."""
ADDRESS_ENV = "OFFICERAY_ADDRESS"
KEY_ENV = "OFFICERAY_API_KEY"

SLOW_PATH = "/status"
DEFAULT_DELAY_S = 2.0
"""How long the slow server waits before it answers."""
MAX_DELAY_S = 30.0
SLOW_ANSWER = "All systems nominal. The nightly index finished; the mirror is three minutes behind."
HTTP_TIMEOUT_S = 30.0
"""The slow step's own http_client timeout (well above ``MAX_DELAY_S``)."""
STEP_TIMEOUT_S = 60
"""Every step's ``timeout_seconds``."""

REQUEST_TIMEOUT_S = 30.0
"""One request to the officeray API."""
TASK_TIMEOUT_S = 120.0
"""Longest wait for a task to end."""
LONG_POLL_S = 10.0
"""One long poll (``GET /v1/tasks/{id}?wait_s=``): waits are made of these, up to ``TASK_TIMEOUT_S``."""
SLOW_CALL_WAIT_S = 60.0
"""Longest wait for the slow call to reach the loopback server after the task was submitted."""
TRACE_WAIT_S = 30.0
"""Longest wait for the trace store to hold the spans of every step (spans are flushed in batches)."""
POLL_INTERVAL_S = 0.25

MAX_QUESTION_CHARS = 2_000
MAX_SUBAGENTS = 8
WORDS_PER_MINUTE = 200
"""Reading speed of the join step's estimate."""
TREE_BAR_WIDTH = 32
"""Columns of each span's bar in the printed tree."""

DEFAULT_QUESTION = (
    "Summarize this text, list its keywords, count its words, judge its sentiment and fetch the status page"
)
DEFAULT_TEXT = (
    "Officeray runs agent tasks on Ray. A planner writes a plan whose steps form a graph. "
    "Independent steps run in parallel on warm sandboxes, and slow tools never block the orchestrator. "
    "A reviewer checks the results, and every step leaves a span in the task's trace. "
    "Operators love how easy the timeline makes it to find the slow step."
)
QUICK_EXPRESSION = "6 * 7"

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


class UsageError(ValueError):
    """Bad input from the command line (exit 2)."""


class DemoError(RuntimeError):
    """The server could not be reached, refused a request, or a task did not end as expected (exit 1)."""


# --------------------------------------------------------------------------------------------------
# the client-side planner
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubAgent:
    """One sub-question and the plan step that answers it."""

    step_id: str
    question: str
    action: str
    inputs: dict[str, Any]
    outputs_expectation: dict[str, Any]

    @property
    def slow(self) -> bool:
        """Whether this sub-agent calls the slow external tool."""
        return self.action == "http_client"


@dataclass(frozen=True)
class _Rule:
    name: str
    pattern: re.Pattern[str]
    prompt: str | None
    """The ai_tool form (``summarize``, ...); None for the slow http_client fetch."""


SUBAGENT_RULES: tuple[_Rule, ...] = (
    _Rule("summarize", re.compile(r"\bsummar(?:y|i[sz]e)", re.IGNORECASE), "summarize"),
    _Rule("keywords", re.compile(r"\bkey\s*words?\b|\bkeywords?\b|\btopics?\b", re.IGNORECASE), "keywords"),
    _Rule("count", re.compile(r"\bcount\b|\bhow many words\b|\blength\b", re.IGNORECASE), "count words"),
    _Rule("sentiment", re.compile(r"\bsentiment\b|\btone\b|\bmood\b", re.IGNORECASE), "classify sentiment"),
    _Rule("fetch", re.compile(r"\bfetch\b|\bstatus\b|\bcheck\b.*\bpage\b", re.IGNORECASE), None),
)
"""How a sub-question is recognised, in order: the first rule whose pattern matches answers it."""

_SPLIT_RE = re.compile(r"\s*(?:[;,]|\bthen\b|\band\b|\balso\b)\s*", re.IGNORECASE)


def split_question(question: str) -> list[str]:
    """The sub-questions of ``question``: its parts between commas, semicolons, 'and', 'then'."""
    if len(question) > MAX_QUESTION_CHARS:
        raise UsageError(f"the question is longer than {MAX_QUESTION_CHARS} characters")
    parts = [part.strip(" .?!") for part in _SPLIT_RE.split(question)]
    return [part for part in parts if part]


def plan_subagents(question: str, text: str, slow_url: str) -> list[SubAgent]:
    """One sub-agent per sub-question of ``question`` about ``text``; ``slow_url`` is the status page.

    Raises :class:`UsageError` for a sub-question no rule answers, for none at all, or for more than
    :data:`MAX_SUBAGENTS`. A sub-question asked twice gets one sub-agent.
    """
    agents: list[SubAgent] = []
    seen: set[str] = set()
    for part in split_question(question):
        rule = next((r for r in SUBAGENT_RULES if r.pattern.search(part)), None)
        if rule is None:
            known = ", ".join(r.name for r in SUBAGENT_RULES)
            raise UsageError(f"no sub-agent answers {part!r} (it can: {known})")
        if rule.name in seen:
            continue
        seen.add(rule.name)
        agents.append(_subagent(rule, part, text, slow_url))
    if not agents:
        raise UsageError("the question holds no sub-question")
    if len(agents) > MAX_SUBAGENTS:
        raise UsageError(f"at most {MAX_SUBAGENTS} sub-agents")
    return agents


def _subagent(rule: _Rule, question: str, text: str, slow_url: str) -> SubAgent:
    step_id = f"agent-{rule.name}"
    if rule.prompt is None:
        return SubAgent(
            step_id=step_id,
            question=question,
            action="http_client",
            inputs={"url": slow_url, "method": "GET", "timeout_s": HTTP_TIMEOUT_S},
            outputs_expectation={
                "type": "object",
                "required": ["status", "body"],
                "properties": {"status": {"const": 200}},
            },
        )
    return SubAgent(
        step_id=step_id,
        question=question,
        action="ai_tool",
        inputs={"prompt": f"{rule.prompt}: {text}"},
        outputs_expectation={"keys": ["answer"]},
    )


JOIN_STEP_ID = "join"


def build_plan(agents: Sequence[SubAgent]) -> dict[str, Any]:
    """The ready plan: the sub-agents in parallel, then a join step that depends on all of them.

    The join estimates the reading time from the word count when a sub-agent counts words, else it
    counts the sub-agents that answered.
    """
    steps: list[dict[str, Any]] = [
        {
            "step_id": agent.step_id,
            "action": agent.action,
            "inputs": agent.inputs,
            "outputs_expectation": agent.outputs_expectation,
            "timeout_seconds": STEP_TIMEOUT_S,
            "parallelizable": True,
            "idempotency_key": agent.step_id,
            "dependencies": [],
        }
        for agent in agents
    ]
    counter = next((a for a in agents if a.step_id == "agent-count"), None)
    if counter is not None:
        join_inputs: dict[str, Any] = {
            "expression": f"words / {WORDS_PER_MINUTE}",
            "variables": {"words": {"from_step": counter.step_id, "path": "answer"}},
        }
    else:
        join_inputs = {"expression": f"{len(agents)} * 1"}
    steps.append(
        {
            "step_id": JOIN_STEP_ID,
            "action": "math_calculator",
            "inputs": join_inputs,
            "outputs_expectation": {"keys": ["value"]},
            "timeout_seconds": STEP_TIMEOUT_S,
            "parallelizable": True,
            "idempotency_key": JOIN_STEP_ID,
            "dependencies": [agent.step_id for agent in agents],
        }
    )
    return {
        "plan_id": f"subagents-{uuid.uuid4().hex[:8]}",
        "task_id": "assigned-by-the-server",
        "metadata": {"priority": 0, "required_tools": sorted({s["action"] for s in steps})},
        "steps": steps,
    }


def quick_plan() -> dict[str, Any]:
    """The plan of the quick task submitted while the slow call is in flight."""
    return {
        "plan_id": f"quick-{uuid.uuid4().hex[:8]}",
        "task_id": "assigned-by-the-server",
        "metadata": {"priority": 0, "required_tools": ["math_calculator"]},
        "steps": [
            {
                "step_id": "multiply",
                "action": "math_calculator",
                "inputs": {"expression": QUICK_EXPRESSION},
                "timeout_seconds": STEP_TIMEOUT_S,
                "idempotency_key": "multiply",
            }
        ],
    }


# --------------------------------------------------------------------------------------------------
# the slow external tool: an HTTP server on loopback
# --------------------------------------------------------------------------------------------------


class SlowServer:
    """An HTTP server on 127.0.0.1 whose ``GET /status`` answers after ``delay_s`` seconds.

    It records when each request arrived and was answered (this process's monotonic clock):
    :attr:`arrived` is set as soon as the first request is in. Use it as a context manager.
    """

    def __init__(self, delay_s: float = DEFAULT_DELAY_S) -> None:
        if not 0 <= delay_s <= MAX_DELAY_S:
            raise UsageError(f"the delay must be between 0 and {MAX_DELAY_S:g} seconds")
        self.delay_s = delay_s
        self.arrived = threading.Event()
        self.arrived_at: float | None = None
        self.answered_at: float | None = None
        self.requests = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="slow-server", daemon=True)

    @property
    def url(self) -> str:
        """The status page's URL."""
        return f"http://{LOOPBACK}:{self._httpd.server_address[1]}{SLOW_PATH}"

    def __enter__(self) -> SlowServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                if self.path.split("?", 1)[0] != SLOW_PATH:
                    self._answer(404, b"not found")
                    return
                with server._lock:
                    server.requests += 1
                    if server.arrived_at is None:
                        server.arrived_at = time.monotonic()
                server.arrived.set()
                time.sleep(server.delay_s)  # the slow external system
                self._answer(200, SLOW_ANSWER.encode())
                with server._lock:
                    if server.answered_at is None:
                        server.answered_at = time.monotonic()

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
                return

        return Handler


# --------------------------------------------------------------------------------------------------
# the API client
# --------------------------------------------------------------------------------------------------


class Api:
    """The few officeray API calls the demo makes (``POST /v1/tasks``, ``GET /v1/tasks/{id}``, trace)."""

    def __init__(self, url: str, key: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
            trust_env=False,  # no proxy: the server is on loopback
        )

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DemoError(f"cannot reach {self.http.base_url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
                why = f"{body.get('detail')} ({body.get('code')})"
            except ValueError:
                why = response.text[:300]
            raise DemoError(f"{method} {path} answered {response.status_code}: {why}")
        answer: dict[str, Any] = response.json()
        return answer

    def submit(self, description: str, plan: dict[str, Any]) -> dict[str, Any]:
        """Submit a task with a ready plan: the task's record (queued)."""
        return self._call("POST", "/v1/tasks", json={"description": description, "plan": plan})

    def task(self, task_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        return self._call("GET", f"/v1/tasks/{task_id}", params={"wait_s": wait_s} if wait_s else None)

    def wait_final(self, task_id: str, timeout_s: float = TASK_TIMEOUT_S) -> dict[str, Any]:
        """The task's record once final; :class:`DemoError` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            record = self.task(task_id, wait_s=max(0.1, min(LONG_POLL_S, left)))
            if record["status"] in FINAL_STATUSES:
                return record
            if time.monotonic() >= deadline:
                raise DemoError(f"task {task_id} is still {record['status']} after {timeout_s:g}s")

    def trace(self, task_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/tasks/{task_id}/trace")

    def trace_with(
        self, task_id: str, step_ids: Sequence[str], timeout_s: float = TRACE_WAIT_S
    ) -> dict[str, Any]:
        """The task's trace once it holds a runner's ``tool`` span for every one of ``step_ids`` (or as
        it is after ``timeout_s``: spans reach the trace store in batches)."""
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self.trace(task_id)
            if set(step_ids) <= set(tool_spans_by_step(answer["spans"])) or time.monotonic() >= deadline:
                return answer
            time.sleep(POLL_INTERVAL_S)


# --------------------------------------------------------------------------------------------------
# the demo
# --------------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What the demo saw: both tasks' records, their timings (seconds on this process's clock) and the
    main task's trace."""

    agents: list[SubAgent]
    main: dict[str, Any]
    quick: dict[str, Any]
    trace: dict[str, Any]
    main_elapsed_s: float
    quick_elapsed_s: float
    slow_call_s: float
    quick_done_while_slow_in_flight: bool
    notes: list[str] = field(default_factory=list)

    def step(self, step_id: str) -> dict[str, Any]:
        """The main task's result of step ``step_id``."""
        return next(s for s in self.main["steps"] if s["step_id"] == step_id)

    @property
    def slow_step(self) -> dict[str, Any]:
        return self.step(next(a.step_id for a in self.agents if a.slow))

    def quick_finished_first(self) -> bool:
        """Whether the server finished the quick task before the slow step (its records' times)."""
        return _when(self.quick["finished_at"]) < _when(self.slow_step["finished_at"])


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def step_seconds(step: Mapping[str, Any]) -> float:
    """How long a step of a task record ran (``finished_at - started_at``)."""
    return (_when(step["finished_at"]) - _when(step["started_at"])).total_seconds()


def run_demo(
    api: Api, question: str = DEFAULT_QUESTION, text: str = DEFAULT_TEXT, delay_s: float = DEFAULT_DELAY_S
) -> Report:
    """Plan the question, run it with the slow server up, and a quick task while the slow call is in
    flight; raises :class:`UsageError` for a question the planner cannot split, :class:`DemoError` when
    the server fails the demo."""
    with SlowServer(delay_s) as server:
        agents = plan_subagents(question, text, server.url)
        if not any(agent.slow for agent in agents):
            raise UsageError("the question asks for no slow call: add e.g. 'fetch the status page'")
        description = f"{question} (status page: {server.url})"
        started = time.monotonic()
        main = api.submit(description, build_plan(agents))
        if not server.arrived.wait(SLOW_CALL_WAIT_S):
            record = api.task(main["task_id"])
            raise DemoError(f"the slow call never arrived (task {main['task_id']} is {record['status']})")
        # the slow call is in flight: a quick task now must not wait for it
        quick_started = time.monotonic()
        quick = api.submit(f"Compute {QUICK_EXPRESSION}", quick_plan())
        quick = api.wait_final(quick["task_id"])
        quick_done = time.monotonic()
        main = api.wait_final(main["task_id"])
        main_done = time.monotonic()
        answered = server.answered_at
        arrived = server.arrived_at or quick_started
    if main["status"] != "completed":
        raise DemoError(f"task {main['task_id']} ended {main['status']}: {main.get('error')}")
    if quick["status"] != "completed":
        raise DemoError(f"the quick task {quick['task_id']} ended {quick['status']}: {quick.get('error')}")
    trace = api.trace_with(main["task_id"], [agent.step_id for agent in agents])
    return Report(
        agents=agents,
        main=main,
        quick=quick,
        trace=trace,
        main_elapsed_s=main_done - started,
        quick_elapsed_s=quick_done - quick_started,
        slow_call_s=(answered or main_done) - arrived,
        quick_done_while_slow_in_flight=answered is not None and quick_done < answered,
    )


# --------------------------------------------------------------------------------------------------
# the trace as a tree
# --------------------------------------------------------------------------------------------------


def tool_spans_by_step(spans: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The runners' ``tool ACTION`` spans by step id (attribute ``officeray.step_id``)."""
    out: dict[str, Mapping[str, Any]] = {}
    for span in spans:
        step_id = (span.get("attributes") or {}).get("officeray.step_id")
        if isinstance(step_id, str) and str(span.get("name", "")).startswith("tool "):
            out[step_id] = span
    return out


def max_overlap(intervals: Sequence[tuple[int, int]]) -> int:
    """The most intervals (start, end) open at one instant (an end and a start at the same instant
    do not overlap)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = running = 0
    for _, delta in edges:
        running += delta
        best = max(best, running)
    return best


def _bar(start_ns: int, end_ns: int, origin_ns: int, total_ns: int, width: int) -> str:
    first = min(width - 1, (start_ns - origin_ns) * width // total_ns)
    last = max(first + 1, min(width, -(-(end_ns - origin_ns) * width // total_ns)))
    return " " * first + "█" * (last - first) + " " * (width - last)


def render_tree(
    spans: Sequence[Mapping[str, Any]], slow_step_ids: Sequence[str] = (), bar_width: int = TREE_BAR_WIDTH
) -> list[str]:
    """The spans as a tree (children under their ``parent_span_id``, in start order; a span whose
    parent is not among them is a root): one line each with a bar on the trace's time axis, its
    lane, name, start (ms after the first span) and duration. The runner spans of ``slow_step_ids``
    are marked ``◀ slow call``."""
    if not spans:
        return ["(no spans)"]
    by_id = {str(s["span_id"]): s for s in spans}
    children: dict[str | None, list[Mapping[str, Any]]] = {}
    for span in spans:
        parent = span.get("parent_span_id")
        key = str(parent) if parent is not None and str(parent) in by_id else None
        children.setdefault(key, []).append(span)
    for siblings in children.values():
        siblings.sort(key=lambda s: (int(s["start_ns"]), str(s["name"])))
    origin = min(int(s["start_ns"]) for s in spans)
    total = max(1, max(int(s["end_ns"]) for s in spans) - origin)
    slow = set(slow_step_ids)
    lines: list[str] = []
    seen: set[str] = set()

    def walk(span: Mapping[str, Any], prefix: str, last: bool, depth: int) -> None:
        span_id = str(span["span_id"])
        if span_id in seen:  # a malformed trace with a cycle: print each span once
            return
        seen.add(span_id)
        start, end = int(span["start_ns"]), int(span["end_ns"])
        connector = "" if depth == 0 else ("└─ " if last else "├─ ")
        step_id = (span.get("attributes") or {}).get("officeray.step_id")
        mark = ""
        if step_id in slow and str(span.get("name", "")).startswith("tool "):
            mark = "  ◀ slow call"
        elif span.get("status") == "error":
            mark = f"  ✗ {span.get('status_message') or 'error'}"
        label = f"{prefix}{connector}{span.get('lane', span.get('component', '?'))}: {span['name']}"
        lines.append(
            f"{_bar(start, end, origin, total, bar_width)} │ {label}"
            f"  @{(start - origin) / 1e6:.0f} ms  {(end - start) / 1e6:.0f} ms{mark}"
        )
        kids = children.get(span_id, [])
        child_prefix = prefix + ("" if depth == 0 else ("   " if last else "│  "))
        for index, child in enumerate(kids):
            walk(child, child_prefix, index == len(kids) - 1, depth + 1)

    for root in children.get(None, []):
        walk(root, "", True, 0)
    return lines


def format_report(report: Report) -> list[str]:
    """What the script prints: the sub-agents and their results, both timings, the trace tree."""
    lines = [f"task {report.main['task_id']}: {report.main['status']} in {report.main_elapsed_s:.2f} s"]
    for agent in report.agents:
        step = report.step(agent.step_id)
        output = step.get("output") or {}
        shown = output.get("answer") if agent.action == "ai_tool" else output.get("body")
        lines.append(
            f"  sub-agent {agent.step_id:<16} {step['status']:<9} {step_seconds(step):6.2f} s  "
            f"{agent.question!r} → {str(shown)[:70]!r}"
        )
    join = report.step(JOIN_STEP_ID)
    lines.append(f"  join {JOIN_STEP_ID:<27} {join['status']:<9} → {(join.get('output') or {}).get('value')}")
    slow = report.slow_step
    lines += [
        "",
        f"slow call ({slow['step_id']}): {step_seconds(slow):.2f} s in the task, "
        f"{report.slow_call_s:.2f} s at the loopback server",
        f"quick task {report.quick['task_id']} ({QUICK_EXPRESSION} = {report.quick.get('result')}): "
        f"{report.quick['status']} in {report.quick_elapsed_s:.2f} s, submitted while the slow call was in "
        "flight",
        "the quick task finished "
        + (
            "FIRST: the orchestrator was not blocked"
            if report.quick_finished_first()
            else "after the slow call"
        ),
    ]
    tools = tool_spans_by_step(report.trace["spans"])
    overlap = max_overlap(
        [(int(s["start_ns"]), int(s["end_ns"])) for step_id, s in tools.items() if step_id != JOIN_STEP_ID]
    )
    lines += ["", f"trace {report.trace['trace_id']}: {len(report.trace['spans'])} spans, "
              f"{overlap} sub-agents running at once"]  # fmt: skip
    lines += render_tree(report.trace["spans"], [a.step_id for a in report.agents if a.slow])
    return lines


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL of a loopback host; :class:`UsageError` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url {url!r} is not an http(s) URL")
    if parts.hostname.lower() not in LOOPBACK_HOSTS:
        raise UsageError(
            f"--url {url!r}: the server must run on this machine (127.0.0.1), where its runners can "
            "reach this script's slow server"
        )
    return url


def find_key(given: str | None) -> str:
    """--key, else $OFFICERAY_API_KEY, else the key file ``officeray serve`` wrote."""
    key = given or os.environ.get(KEY_ENV)
    if not key and DEFAULT_KEY_FILE.is_file():
        key = DEFAULT_KEY_FILE.read_text(encoding="utf-8").strip()
    if not key:
        raise UsageError(f"no API key: pass --key, set ${KEY_ENV}, or run from where `officeray serve` wrote "
                         f"{DEFAULT_KEY_FILE}")  # fmt: skip
    return key


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.subagents.subagents",
        description="A client-side planner: a sub-agent per sub-question, one of them a slow call.",
    )
    parser.add_argument("--url", default=os.environ.get(ADDRESS_ENV, DEFAULT_URL), help="the officeray API")
    parser.add_argument(
        "--key", default=None, help=f"an API key (default: ${KEY_ENV}, or {DEFAULT_KEY_FILE})"
    )
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="what to ask, in parts")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the text the question is about")
    parser.add_argument(
        "--delay", type=float, default=DEFAULT_DELAY_S, help="seconds the slow server waits (default 2)"
    )
    return parser.parse_args(argv)


@contextmanager
def _api(url: str, key: str) -> Iterator[Api]:
    api = Api(url, key)
    try:
        yield api
    finally:
        api.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo and print what it saw; the exit code (see the module docstring)."""
    args = parse_args(argv)
    try:
        url, key = check_url(args.url), find_key(args.key)
        with _api(url, key) as api:
            report = run_demo(api, args.question, args.text, args.delay)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(format_report(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
