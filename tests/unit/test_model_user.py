"""The model user: prompt mixes, SSE stream metrics, and bounded locust runs against the fake server.

Only :mod:`loadtests.llm_metrics` is imported here: importing locust (which
:mod:`loadtests.model_user` does) would monkey-patch this pytest process for gevent, so the locust
runs are subprocesses.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from loadtests.llm_metrics import (
    DEFAULT_MAX_TOKENS,
    ERROR_EXCERPT_CHARS,
    PromptFileError,
    PromptItem,
    chat_body,
    chat_url,
    http_error,
    load_prompt_mix,
    parse_stream,
    pick,
)
from loadtests.records import MODEL_METRICS, MODEL_TYPE
from officeray.contracts import PlanRequest
from officeray.tools.builtin import BUILTIN_TOOLS
from serving.tiers.embedded import plan_task
from tests.fake_openai_server import FakeOpenAIServer

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_PROMPTS = REPO_ROOT / "loadtests" / "prompts.jsonl"
LOCUST_TIMEOUT_S = 60
"""Subprocess limit of one bounded locust run (the runs themselves last a few seconds)."""


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Prompt mix
# --------------------------------------------------------------------------------------------------


def test_load_prompt_mix_reads_weights_and_defaults(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "mix.jsonl",
        '{"prompt": "Compute 1+1", "weight": 3, "max_tokens": 16}',
        "",
        '{"prompt": "Calculate 2*3"}',
        '{"prompt": "What is 4?", "weight": 0.5}',
    )
    assert load_prompt_mix(path) == [
        PromptItem("Compute 1+1", 3.0, 16),
        PromptItem("Calculate 2*3", 1.0, DEFAULT_MAX_TOKENS),
        PromptItem("What is 4?", 0.5, DEFAULT_MAX_TOKENS),
    ]
    assert load_prompt_mix(path, default_max_tokens=7)[1].max_tokens == 7


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"prompt": "a"}', "{not json"], "line 2: not valid JSON"),
        (['{"prompt": "a", "weight": 0}'], 'line 1: "weight" must be a number > 0, got 0'),
        (['{"prompt": "a", "weight": -2}'], 'line 1: "weight" must be a number > 0'),
        (['{"prompt": "a", "weight": "2"}'], 'line 1: "weight" must be a number > 0'),
        (['{"prompt": "a", "weight": true}'], 'line 1: "weight" must be a number > 0'),
        (['{"prompt": "a"}', "", '{"prompt": "   "}'], 'line 3: "prompt" must be a non-empty string'),
        (['{"weight": 1}'], 'line 1: "prompt" must be a non-empty string'),
        (['{"prompt": "a", "max_tokens": 0}'], 'line 1: "max_tokens" must be an integer >= 1'),
        (['{"prompt": "a", "max_tokens": 1.5}'], 'line 1: "max_tokens" must be an integer >= 1'),
        (['{"prompt": "a", "wieght": 2}'], "line 1: unknown key(s) wieght"),
        (['["a list"]'], "line 1: expected a JSON object, got list"),
        ([""], "no prompts"),
        ([], "no prompts"),
    ],
)
def test_bad_prompt_files_name_the_file_and_line(tmp_path: Path, lines: list[str], expected: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(PromptFileError) as info:
        load_prompt_mix(path)
    assert str(info.value).startswith(f"prompt file {path}")
    assert expected in str(info.value)


def test_missing_prompt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(PromptFileError, match=r"prompt file .*nope\.jsonl: cannot read it"):
        load_prompt_mix(path)


def test_shipped_prompts_are_understood_by_the_embedded_planner() -> None:
    items = load_prompt_mix(SHIPPED_PROMPTS)
    assert 5 <= len(items) <= 8
    for item in items:
        plan = plan_task(
            PlanRequest(task_id="chat", description=item.prompt, allowed_tools=sorted(BUILTIN_TOOLS))
        )
        assert plan.steps, item.prompt


def test_pick_follows_the_weights() -> None:
    items = [PromptItem("heavy", 3.0), PromptItem("light", 1.0)]
    rng = random.Random(1234)
    draws = [pick(items, rng).prompt for _ in range(20_000)]
    share = draws.count("heavy") / len(draws)
    assert 0.73 < share < 0.77
    again = random.Random(1234)
    assert [pick(items, again).prompt for _ in range(100)] == draws[:100]


def test_pick_from_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty prompt mix"):
        pick([], random.Random(0))


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "url"),
    [
        ("http://h:8000", "/v1/chat/completions", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/", "v1/chat/completions", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1", "/v1/chat/completions", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/", "/chat/completions", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/api", "/v1/chat/completions", "http://h:8000/api/v1/chat/completions"),
        ("http://h:8000", "http://other/v1/chat/completions", "http://other/v1/chat/completions"),
    ],
)
def test_chat_url(host: str, path: str, url: str) -> None:
    assert chat_url(host, path) == url


def test_chat_body_streams_and_asks_for_usage() -> None:
    assert chat_body("planner", PromptItem("Compute 1+1", 2.0, 32)) == {
        "model": "planner",
        "messages": [{"role": "user", "content": "Compute 1+1"}],
        "max_tokens": 32,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_http_error_quotes_the_status_and_the_start_of_the_body() -> None:
    body = json.dumps({"error": {"message": "bad key sk-secret " + "x" * 500}})
    message = str(http_error(401, body, secret="sk-secret"))
    assert message.startswith("HTTP 401: {")
    assert "sk-secret" not in message and "***" in message
    assert len(message) == len("HTTP 401: ") + ERROR_EXCERPT_CHARS
    assert str(http_error(502, "")) == "HTTP 502: (empty body)"


# --------------------------------------------------------------------------------------------------
# Stream parsing (fake clock: each line "arrives" at its time)
# --------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def arriving(
    clock: FakeClock, timed_lines: Iterable[tuple[float, bytes | str]], end: float | None = None
) -> Iterator[bytes | str]:
    """The lines, the clock set to each line's time as it is yielded (and to ``end`` after the last)."""
    for at, line in timed_lines:
        clock.now = at
        yield line
    if end is not None:
        clock.now = end


def data(payload: object) -> str:
    return "data: " + json.dumps(payload)


def content(text: str) -> str:
    return data({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})


ROLE_CHUNK = data({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
STOP_CHUNK = data({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
DONE = "data: [DONE]"


def test_parse_stream_measures_ttft_itl_e2e_and_usage_tokens() -> None:
    clock = FakeClock()
    lines = [
        (0.05, ROLE_CHUNK),  # empty content: not the first token
        (0.05, ""),
        (0.20, content("one")),
        (0.30, content(" two")),
        (0.50, content(" three")),
        (0.55, STOP_CHUNK),
        (0.60, data({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}})),
        (0.70, DONE),
        (9.00, content(" after done, never read")),
    ]
    result = parse_stream(arriving(clock, lines), clock, started=0.0)
    assert result.ok and result.done and result.error is None
    assert result.ttft_s == pytest.approx(0.20)
    assert result.itl_s == pytest.approx(0.15)  # (0.50 - 0.20) / 2 gaps
    assert result.e2e_s == pytest.approx(0.70)
    assert result.content_chunks == 3
    assert result.usage_tokens == 9 and result.tokens == 9
    assert result.tokens_per_s == pytest.approx(9 / 0.50)


def test_parse_stream_counts_chunks_without_usage_and_reads_bytes_and_comments() -> None:
    clock = FakeClock()
    clock.now = 10.0
    lines: list[tuple[float, bytes | str]] = [
        (10.0, b": keep-alive comment"),
        (10.0, b"event: message"),
        (10.4, content("a").encode()),
        (10.6, ("data:" + json.dumps({"choices": [{"delta": {"content": "b"}}]})).encode()),
        (11.0, b"data: [DONE]\r\n"),
    ]
    result = parse_stream(arriving(clock, lines), clock)  # started: the clock's first reading (10.0)
    assert result.ok
    assert result.usage_tokens is None and result.tokens == 2
    assert result.ttft_s == pytest.approx(0.4)
    assert result.itl_s == pytest.approx(0.2)
    assert result.e2e_s == pytest.approx(1.0)
    assert result.tokens_per_s == pytest.approx(2 / 0.6)
    assert result.bytes_read > 0


def test_parse_stream_single_chunk_and_empty_answers() -> None:
    clock = FakeClock()
    one = parse_stream(arriving(clock, [(0.3, content("all")), (0.3, DONE)]), clock, started=0.0)
    assert one.ok and one.ttft_s == pytest.approx(0.3) and one.itl_s is None
    assert one.tokens == 1 and one.tokens_per_s == 0.0  # no time after the first token
    empty = parse_stream(arriving(clock, [(0.1, ROLE_CHUNK), (0.2, DONE)]), clock, started=0.0)
    assert empty.ok and empty.ttft_s is None and empty.itl_s is None
    assert empty.tokens == 0 and empty.tokens_per_s == 0.0


def test_parse_stream_error_event_fails_the_request() -> None:
    clock = FakeClock()
    error = {
        "error": {"message": "the model tier failed", "type": "server_error", "code": "bad_model_answer"}
    }
    lines = [(0.1, content("x")), (0.2, data(error)), (0.3, DONE)]
    result = parse_stream(arriving(clock, lines), clock, started=0.0)
    assert not result.ok and not result.done
    assert result.error == "error event in the stream: the model tier failed"
    assert result.e2e_s == pytest.approx(0.2)


def test_parse_stream_without_done_fails() -> None:
    clock = FakeClock()
    lines = [(0.1, content("x")), (0.2, content("y"))]
    result = parse_stream(arriving(clock, lines, end=0.25), clock, started=0.0)
    assert not result.ok and not result.done
    assert result.error == "the stream ended without data: [DONE] (after 2 content chunks)"
    assert result.e2e_s == pytest.approx(0.25)


def test_parse_stream_malformed_data_fails() -> None:
    clock = FakeClock()
    result = parse_stream(arriving(clock, [(0.1, "data: {oops"), (0.2, DONE)]), clock, started=0.0)
    assert not result.ok
    assert result.error == "malformed stream data (not JSON): {oops"


def test_parse_stream_past_the_timeout_fails() -> None:
    clock = FakeClock()
    lines = [(0.1, content("x")), (5.0, content("y")), (5.1, DONE)]
    result = parse_stream(arriving(clock, lines), clock, started=0.0, timeout_s=2.0)
    assert not result.ok
    assert result.error == "no [DONE] within the request timeout of 2 s"


# --------------------------------------------------------------------------------------------------
# Bounded locust runs (subprocesses)
# --------------------------------------------------------------------------------------------------

needs_locust = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None, reason="locust is not installed"
)


def run_locust(
    host: str, tmp_path: Path, *extra: str, run_time: str = "4s", users: int = 4
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OPENAI_API_KEY": "sk-load-test-key"}
    command = [
        sys.executable, "-m", "locust", "-f", "loadtests/model_user.py", "--headless",
        "-u", str(users), "-r", str(users), "--run-time", run_time, "--host", host,
        "--csv", str(tmp_path / "stats"), "--only-summary", *extra,
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=LOCUST_TIMEOUT_S, check=False
    )


def stats_rows(tmp_path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with (tmp_path / "stats_stats.csv").open(newline="") as handle:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}


@pytest.mark.load
@needs_locust
def test_locust_run_against_a_streaming_server(tmp_path: Path) -> None:
    with FakeOpenAIServer(mode="stream", stream_delay_s=0.01) as server:
        proc = run_locust(server.base_url, tmp_path, "--model-prompts", "loadtests/prompts.jsonl")
        requests = server.chat_requests
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    rows = stats_rows(tmp_path)
    for metric in MODEL_METRICS:
        row = rows[(MODEL_TYPE, metric)]
        assert int(row["Request Count"]) > 0, metric
        assert int(row["Failure Count"]) == 0, metric
    assert float(rows[(MODEL_TYPE, "ttft")]["Average Response Time"]) < float(
        rows[(MODEL_TYPE, "e2e")]["Average Response Time"]
    )
    assert {name for _, name in rows} <= {*MODEL_METRICS, "Aggregated"}  # only the LLM events
    prompts = {item.prompt for item in load_prompt_mix(SHIPPED_PROMPTS)}
    assert requests and all(r["path"] == "/v1/chat/completions" for r in requests)  # /v1 not doubled
    for request in requests:
        body = request["body"]
        assert body["model"] == "planner" and body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["messages"][0]["content"] in prompts
        assert request["headers"]["authorization"] == "Bearer sk-load-test-key"
    assert "sk-load-test-key" not in output


@pytest.mark.load
@needs_locust
def test_locust_run_reports_http_errors_as_failed_e2e_only(tmp_path: Path) -> None:
    with FakeOpenAIServer(mode="server_error") as server:
        proc = run_locust(server.base_url, tmp_path, run_time="2s", users=2)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]  # locust: failures -> 1
    rows = stats_rows(tmp_path)
    e2e = rows[(MODEL_TYPE, "e2e")]
    assert int(e2e["Request Count"]) == int(e2e["Failure Count"]) > 0
    assert (MODEL_TYPE, "ttft") not in rows and (MODEL_TYPE, "itl") not in rows
    with (tmp_path / "stats_failures.csv").open(newline="") as handle:
        errors = [row["Error"] for row in csv.DictReader(handle)]
    assert errors and all(e.startswith("ModelRequestError('HTTP 500: {") for e in errors), errors


@pytest.mark.load
@needs_locust
def test_locust_exits_at_once_on_a_bad_prompt_file(tmp_path: Path) -> None:
    bad = write_lines(tmp_path / "bad.jsonl", '{"prompt": "Compute 1+1"}', '{"prompt": "x", "weight": 0}')
    proc = run_locust("http://127.0.0.1:9", tmp_path, "--model-prompts", str(bad), run_time="30s")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert f'prompt file {bad} line 2: "weight" must be a number > 0, got 0' in output
    assert (
        not (tmp_path / "stats_stats.csv").exists() or "e2e" not in (tmp_path / "stats_stats.csv").read_text()
    )
