"""The load test's API key: made for the system ``officeray loadtest`` starts, found for a ``--host``,
handed to locust, and sent by the task users (a bounded locust run against a stub gateway that
refuses requests without the key)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from loadtests.loadtest import (
    API_KEY_ENV,
    LoadtestError,
    _environment,
    add_arguments,
    check,
    create_admin_key,
    remote_api_key,
    run,
)
from loadtests.records import COMPLETION_TYPE, SAMPLES_FILE
from loadtests.traces import check_traces
from officeray.auth import Role, parse_key, verify_key
from officeray.store import SqlStore

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "ofr_0123456789ab_" + "k" * 43
LOCUST_TIMEOUT_S = 120


def plan_for(tmp_path: Path, *argv: str) -> Any:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return check(parser.parse_args([*argv, "--out", str(tmp_path / "out")]))


def test_the_local_systems_key_is_an_admin_key_of_its_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'officeray.db'}"
    key = create_admin_key(url)
    store = SqlStore(url)
    try:
        record = asyncio.run(store.get_api_key(parse_key(key) or ""))
    finally:
        store.close()
    assert record is not None and record.role == Role.ADMIN and verify_key(key, record)


def test_locust_gets_the_key_for_task_users_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "ofr_inherited")
    tasks = plan_for(tmp_path)
    assert _environment(tasks, True, KEY)[API_KEY_ENV] == KEY
    assert API_KEY_ENV not in _environment(tasks, True, None)
    # a model endpoint may be someone else's: the officeray key never goes there
    model = plan_for(tmp_path, "--scenario", "model", "--host", "http://127.0.0.1:9")
    assert API_KEY_ENV not in _environment(model, False, KEY)


def test_against_a_host_the_key_comes_from_the_environment_or_the_key_file_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "admin.key"
    monkeypatch.setenv("OFFICERAY_AUTH__ADMIN_KEY_FILE", str(key_file))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv("OFFICERAY_CONFIG", raising=False)
    assert remote_api_key(None, "http://127.0.0.1:8000") is None
    key_file.write_text(f"{KEY}\n")
    key_file.chmod(0o600)
    assert remote_api_key(None, "http://127.0.0.1:8000") == KEY
    assert remote_api_key(None, "http://gateway.example.com:8000") is None  # the admin key stays here
    monkeypatch.setenv(API_KEY_ENV, "ofr_from_env")
    assert remote_api_key(None, "http://127.0.0.1:8000") == "ofr_from_env"
    assert remote_api_key(None, "http://gateway.example.com:8000") == "ofr_from_env"


def test_a_task_run_against_a_host_without_a_key_stops_before_the_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFICERAY_AUTH__ADMIN_KEY_FILE", str(tmp_path / "none.key"))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv("OFFICERAY_CONFIG", raising=False)
    with pytest.raises(LoadtestError, match=API_KEY_ENV):
        run(plan_for(tmp_path, "--host", "http://127.0.0.1:9"), None)
    assert not (tmp_path / "out" / "locust.log").exists()


# -- a stub gateway that wants the key --------------------------------------------------------------


class _Gateway:
    """``POST /v1/tasks`` and ``GET /v1/tasks/<id>`` (a completed task) for requests that carry
    ``Authorization: Bearer KEY``; 401 for the others. Counts both."""

    def __init__(self) -> None:
        self.authorized = 0
        self.refused = 0
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _allowed(self) -> bool:
                ok = self.headers.get("Authorization") == f"Bearer {KEY}"
                if ok:
                    gateway.authorized += 1
                else:
                    gateway.refused += 1
                    self._answer(401, {"detail": "a valid API key is required", "code": "unauthorized"})
                return ok

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self._allowed():
                    self._answer(202, {"task_id": "task-1", "status": "queued"})

            def do_GET(self) -> None:  # noqa: N802
                if self._allowed():
                    record = {"task_id": "task-1", "status": "completed", "error": None, "trace_id": None}
                    self._answer(200, record)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Gateway]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    served = _Gateway()
    thread = threading.Thread(target=served.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()
        thread.join(timeout=5)


def test_trace_checks_read_the_task_api_with_the_key(gateway: _Gateway, tmp_path: Path) -> None:
    sample = {"type": COMPLETION_TYPE, "status": "completed", "task_id": "task-1"}
    (tmp_path / SAMPLES_FILE).write_text(json.dumps(sample) + "\n")
    check_traces(tmp_path, gateway.url, trace_file=None, limit=None, api_key=KEY)
    assert (gateway.authorized, gateway.refused) == (2, 0)  # the record and its trace
    check_traces(tmp_path, gateway.url, trace_file=None, limit=None)
    assert gateway.refused == 2


@pytest.mark.load
@pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed")
@pytest.mark.parametrize("with_key", [True, False])
def test_task_users_send_the_key_with_every_request(
    gateway: _Gateway, tmp_path: Path, with_key: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if with_key:
        env[API_KEY_ENV] = KEY
    command = [
        sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless", "-u", "1", "-r", "1",
        "--run-time", "2s", "--host", gateway.url, "--out-dir", str(tmp_path), "--think-time", "0.2",
        "--only-summary", "TaskUser",
    ]  # fmt: skip
    proc = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=LOCUST_TIMEOUT_S, check=False
    )
    output = proc.stdout + proc.stderr
    if with_key:
        assert gateway.authorized >= 2 and gateway.refused == 0, output[-3000:]
    else:
        assert gateway.refused >= 1 and gateway.authorized == 0, output[-3000:]
