"""``officeray dlq list|show|retry`` against a loopback stub of the HTTP API (no Ray)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cluster import cli

ENTRY = {
    "task_id": "task-dead01",
    "tenant": "acme",
    "reason": "step s1 failed for good: tool_error: SystemExit: 3",
    "trace_id": "trace-1",
    "created_at": "2025-01-02T03:04:05+00:00",
    "description": "Run python:\nraise SystemExit(3)",
}
OTHER = {**ENTRY, "task_id": "task-dead02", "tenant": "globex", "reason": "maximum_step_attempts reached"}
DETAIL = {
    **ENTRY,
    "record": {"task_id": "task-dead01", "status": "failed", "iterations": 3, "error": "SystemExit: 3"},
    "plan": None,
    "step_errors": [
        {
            "step_id": "s1",
            "action": "python_executor",
            "attempts": 3,
            "error": {"type": "tool_error", "message": "SystemExit: 3"},
        }
    ],
}


class _Stub(BaseHTTPRequestHandler):
    """Canned answers of the DLQ routes; every request is recorded in ``server.seen``."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.server.seen.append(("GET", url.path, parse_qs(url.query)))  # type: ignore[attr-defined]
        if url.path == "/v1/dlq":
            tenant = parse_qs(url.query).get("tenant", [None])[0]
            entries = [e for e in (ENTRY, OTHER) if tenant in (None, e["tenant"])]
            self._answer(200, {"entries": entries, "count": len(entries)})
        elif url.path == "/v1/dlq/task-dead01":
            self._answer(200, DETAIL)
        elif url.path == "/v1/dlq/task-broken":
            self._answer(503, {"detail": "the task store is unavailable"})
        else:
            self._answer(
                404, {"detail": f"task {url.path.rsplit('/', 1)[-1]!r} is not in the dead-letter queue"}
            )

    def do_POST(self) -> None:
        self.server.seen.append(("POST", self.path, {}))  # type: ignore[attr-defined]
        if self.path == "/v1/dlq/task-dead01/retry":
            self._answer(202, {"task_id": "task-dead01", "status": "queued"})
        else:
            self._answer(404, {"detail": "task 'task-nope' is not in the dead-letter queue"})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[tuple[str, list[tuple[str, str, dict[str, list[str]]]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # quick shutdown
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.seen  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_list_prints_a_table_of_the_entries(stub: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, seen = stub
    assert cli.main(["dlq", "list", "--url", url]) == 0
    out = capsys.readouterr().out
    for fragment in ("task-dead01", "task-dead02", "acme", "globex", "maximum_step_attempts", "2025-01-02"):
        assert fragment in out
    for column in ("task", "tenant", "reason", "created"):
        assert column in out
    assert seen[-1][:2] == ("GET", "/v1/dlq")


def test_list_json_with_a_tenant(stub: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, seen = stub
    assert cli.main(["dlq", "list", "--tenant", "acme", "--json", "--url", url]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [e["task_id"] for e in body["entries"]] == ["task-dead01"]
    assert seen[-1][2]["tenant"] == ["acme"]


def test_list_of_an_empty_queue_says_so(stub: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, _seen = stub
    assert cli.main(["dlq", "list", "--tenant", "nobody", "--url", url]) == 0
    assert "empty" in capsys.readouterr().out


def test_show_prints_the_entry_and_its_failed_steps(stub: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, _seen = stub
    assert cli.main(["dlq", "show", "task-dead01", "--url", url]) == 0
    out = capsys.readouterr().out
    for fragment in ("task-dead01", "acme", "SystemExit: 3", "python_executor", "tool_error", "dlq retry"):
        assert fragment in out


def test_show_json_is_the_servers_entry(stub: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, _seen = stub
    assert cli.main(["dlq", "show", "task-dead01", "--json", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out) == DETAIL


def test_retry_posts_and_reports_the_new_status(stub: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, seen = stub
    assert cli.main(["dlq", "retry", "task-dead01", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "task-dead01" in out and "queued" in out
    assert seen[-1][:2] == ("POST", "/v1/dlq/task-dead01/retry")


@pytest.mark.parametrize("command", ["show", "retry"])
def test_unknown_task_exits_1_with_the_servers_message(
    stub: Any, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    url, _seen = stub
    assert cli.main(["dlq", command, "task-nope", "--url", url]) == 1
    assert "not in the dead-letter queue" in capsys.readouterr().err


def test_other_server_errors_exit_1_with_the_status(stub: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url, _seen = stub
    assert cli.main(["dlq", "show", "task-broken", "--url", url]) == 1
    err = capsys.readouterr().err
    assert "503" in err and "unavailable" in err


@pytest.mark.parametrize("command", [["list"], ["show", "task-dead01"], ["retry", "task-dead01"]])
def test_unreachable_server_exits_1_naming_the_url(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert cli.main(["dlq", *command, "--address", url]) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err and url in err


def test_default_url_comes_from_the_config(
    stub: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url, seen = stub
    port = url.rsplit(":", 1)[1]
    config = tmp_path / "c.yaml"
    config.write_text(f"serve:\n  host: 0.0.0.0\n  port: {port}\n")
    assert cli.main(["dlq", "list", "--json", "--config", str(config)]) == 0
    assert seen and json.loads(capsys.readouterr().out)["entries"]


def test_dlq_without_a_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["dlq"])
    assert exc.value.code == 2
