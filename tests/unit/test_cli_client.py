"""The client commands (``officeray submit|get|watch|list|cancel|approve|feedback|run --address``)
against :class:`serving.testing.FakeTaskApi` served on loopback: no Ray."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import cli
from cluster.client import ApiUnreachable, StreamEvent, TaskApiClient, api_error
from officeray.contracts import StepResult, StepStatus, TaskRecord, TaskStatus
from serving.testing import (
    FAKE_ADMIN_KEY,
    FAKE_OTHER_USER_KEY,
    FAKE_USER_KEY,
    FakeTaskApi,
    serve_in_thread,
)

Server = tuple[FakeTaskApi, str]


@pytest.fixture
def start() -> Iterator[Callable[..., Server]]:
    """Start a fake task API (keyword arguments of :class:`FakeTaskApi`); answers it and its URL."""
    with_blocks: list[Any] = []

    def _start(**kwargs: Any) -> Server:
        api = FakeTaskApi(**kwargs)
        block = serve_in_thread(api.app)
        url = block.__enter__()
        with_blocks.append(block)
        return api, url

    yield _start
    for block in reversed(with_blocks):
        block.__exit__(None, None, None)


@pytest.fixture
def server(start: Callable[..., Server]) -> Server:
    return start()


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key or address from the environment, and no admin key file, unless a test sets one."""
    monkeypatch.delenv("OFFICERAY_API_KEY", raising=False)
    monkeypatch.delenv("OFFICERAY_ADDRESS", raising=False)
    monkeypatch.setenv("OFFICERAY_AUTH__ADMIN_KEY_FILE", str(tmp_path / "absent" / "admin.key"))


def _officeray(url: str, *args: str, key: str | None = FAKE_ADMIN_KEY) -> int:
    return cli.main([*args, "--address", url, *(["--key", key] if key else [])])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- submit, get, run --address --


def test_submit_prints_the_new_tasks_id_and_the_tenant_comes_from_the_key(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = server
    assert _officeray(url, "submit", "say hello", "--priority", "7", key=FAKE_USER_KEY) == 0
    out = capsys.readouterr().out
    (task_id,) = api.tasks
    assert task_id in out and f"officeray watch {task_id}" in out
    assert api.tasks[task_id].tenant == "acme"


def test_submit_json_and_the_idempotency_key_answer_the_same_task(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = server
    answers = []
    for _ in range(2):
        assert _officeray(url, "submit", "once only", "--idempotency-key", "k-1", "--json") == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0]["task_id"] == answers[1]["task_id"] and len(api.tasks) == 1


def test_a_bad_priority_is_a_usage_error_before_any_call(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = server
    assert _officeray(url, "submit", "x", "--priority", "5000") == 2
    assert "priority" in capsys.readouterr().err
    assert not api.requests


def test_get_json_is_the_servers_record_and_the_text_shows_the_result(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = server
    assert _officeray(url, "run", "echo me", "--json") == 0
    task_id = json.loads(capsys.readouterr().out)["task_id"]
    assert _officeray(url, "get", task_id, "--json") == 0
    assert json.loads(capsys.readouterr().out) == api.tasks[task_id].public_view()
    assert _officeray(url, "get", task_id) == 0
    out = capsys.readouterr().out
    assert "completed" in out and "s1 echo: succeeded" in out and '"echo": "echo me"' in out


def test_run_with_an_address_prints_the_local_runs_record_and_exit_codes(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start(transition_delay_s=0.02)
    assert _officeray(url, "run", "echo me", "--json") == 0
    record = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON object
    assert list(record)[:7] == ["task_id", "status", "result", "error", "iterations", "steps", "trace_id"]
    assert record["status"] == "completed" and record["result"] == {"echo": "echo me"}
    assert _officeray(url, "run", "echo me") == 0
    assert "completed" in capsys.readouterr().out

    _failing, failing_url = start(finish_as=TaskStatus.FAILED)
    assert _officeray(failing_url, "run", "doomed", "--json") == 1
    assert json.loads(capsys.readouterr().out)["status"] == "failed"


# -- watch --


def _watch_lines(out: str) -> list[int]:
    return [int(n) for n in re.findall(r"^#(\d+) ", out, flags=re.MULTILINE)]


def test_watch_follows_the_task_to_completion(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = start(finish_as=None)
    api.add_task(TaskRecord(task_id="t-1", description="d"))
    api.finish_as = TaskStatus.COMPLETED
    import threading

    def _later() -> None:
        for status in (TaskStatus.PLANNING, TaskStatus.EXECUTING, TaskStatus.COMPLETED):
            threading.Event().wait(0.05)
            api.transition("t-1", status, result="done" if status.is_final else None)

    mover = threading.Thread(target=_later)
    mover.start()
    try:
        assert _officeray(url, "watch", "t-1") == 0
    finally:
        mover.join()
    out = capsys.readouterr().out
    assert "status=executing" in out and out.rstrip().endswith("task t-1 completed: done")
    assert _watch_lines(out) == sorted(set(_watch_lines(out)))


def test_watch_resumes_a_cut_stream_after_the_last_event_without_loss_or_duplicates(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = start(transition_delay_s=0.05, cut_streams_after=2)
    assert _officeray(url, "submit", "long one", "--json") == 0
    task_id = json.loads(capsys.readouterr().out)["task_id"]
    assert _officeray(url, "watch", task_id) == 0
    out = capsys.readouterr().out
    stored = [e.id for e in api.events[task_id]]
    assert len(stored) == 4 and _watch_lines(out) == stored  # every event, once, in order
    assert api.last_event_ids == [None, str(stored[1])]  # the second stream resumed after the second event
    assert out.rstrip().endswith(f"task {task_id} completed: {{'echo': 'long one'}}".replace("'", '"'))


@pytest.mark.parametrize("final", [TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_watch_exits_1_when_the_task_does_not_complete(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str], final: TaskStatus
) -> None:
    api, url = start(finish_as=final)
    assert _officeray(url, "submit", "x", "--json") == 0
    task_id = json.loads(capsys.readouterr().out)["task_id"]
    assert _officeray(url, "watch", task_id) == 1
    assert f"task {task_id} {final.value}" in capsys.readouterr().out


def test_the_client_resumes_after_a_broken_connection_and_gives_up_in_the_end() -> None:
    from cluster.cli_client import WATCH_MAX_RECONNECTS, follow_task

    views = iter([{"task_id": "t", "description": "d", "status": "executing"}] * 100)

    class Flaky(TaskApiClient):
        def get(self, task_id: str, wait_s: float = 0.0) -> dict[str, Any]:
            return next(views)

        def events(self, task_id: str, last_event_id: str | None = None) -> Iterator[StreamEvent]:
            raise ApiUnreachable(self.address, "ReadError: connection reset")

    pauses: list[float] = []
    with Flaky("http://127.0.0.1:9") as flaky, pytest.raises(ApiUnreachable, match="connection reset"):
        follow_task(flaky, "t", lambda *_: None, sleep=pauses.append)
    assert len(pauses) == WATCH_MAX_RECONNECTS
    assert pauses == sorted(pauses) and pauses[0] < pauses[-1]  # backing off


# -- list, cancel, approve, feedback --


def test_list_pages_and_all_follows_the_cursor(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    api, url = server
    for n in range(5):
        api.add_task(TaskRecord(task_id=f"t-{n}", description=f"task {n}", tenant="acme"))
    api.add_task(TaskRecord(task_id="t-other", description="not yours", tenant="globex"))
    assert _officeray(url, "list", "--limit", "2", key=FAKE_USER_KEY) == 0
    out = capsys.readouterr().out
    assert "t-4" in out and "t-3" in out and "t-2" not in out and "--cursor 2" in out
    assert _officeray(url, "list", "--limit", "2", "--all", "--json", key=FAKE_USER_KEY) == 0
    body = json.loads(capsys.readouterr().out)
    assert [t["task_id"] for t in body["tasks"]] == ["t-4", "t-3", "t-2", "t-1", "t-0"]
    assert body["next_cursor"] is None


def test_list_filters_by_status(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    api, url = server
    api.add_task(TaskRecord(task_id="t-q", description="q"))
    api.add_task(TaskRecord(task_id="t-f", description="f", status=TaskStatus.FAILED))
    assert _officeray(url, "list", "--status", "failed", "--json") == 0
    assert [t["task_id"] for t in json.loads(capsys.readouterr().out)["tasks"]] == ["t-f"]


def test_cancel_stops_the_task_and_a_finished_one_is_refused_with_its_code(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = server
    api.add_task(TaskRecord(task_id="t-run", description="r", status=TaskStatus.EXECUTING))
    assert _officeray(url, "cancel", "t-run") == 0
    assert "cancel" in capsys.readouterr().out and api.tasks["t-run"].status == TaskStatus.CANCELLED
    assert _officeray(url, "cancel", "t-run") == 1
    err = capsys.readouterr().err
    assert "409" in err and "task_final" in err and "already ended cancelled" in err


def _waiting_task(api: FakeTaskApi) -> None:
    step = StepResult(step_id="s1", action="shell", idempotency_key="k", status=StepStatus.WAITING_APPROVAL)
    api.add_task(TaskRecord(task_id="t-w", description="w", status=TaskStatus.WAITING_APPROVAL, steps=[step]))


def test_approve_and_reject_record_the_keys_id(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    api, url = server
    _waiting_task(api)
    assert _officeray(url, "approve", "t-w", "s1", "--reason", "looks fine") == 0
    assert "approved by 00000000000a" in capsys.readouterr().out
    assert _officeray(url, "approve", "t-w", "s1", "--reject") == 0
    assert [(d["decision"], d["decided_by"]) for d in api.decisions] == [
        ("approved", "00000000000a"),
        ("rejected", "00000000000a"),
    ]
    assert api.decisions[0]["reason"] == "looks fine"


def test_approve_with_a_user_key_is_refused(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    api, url = server
    _waiting_task(api)
    assert _officeray(url, "approve", "t-w", "s1", key=FAKE_USER_KEY) == 1  # not its tenant: 404
    assert "task_not_found" in capsys.readouterr().err
    api.tasks["t-w"] = api.tasks["t-w"].model_copy(update={"tenant": "acme"})
    assert _officeray(url, "approve", "t-w", "s1", key=FAKE_USER_KEY) == 1
    assert "403" in capsys.readouterr().err and not api.decisions


def test_feedback_is_stored(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    api, url = server
    api.add_task(TaskRecord(task_id="t-1", description="d", status=TaskStatus.COMPLETED))
    args = ["feedback", "t-1", "--rating", "-1", "--comment", "wrong file", "--label", "a", "--label", "b"]
    assert _officeray(url, *args) == 0
    assert api.feedback["t-1"] == [{"rating": -1, "comment": "wrong file", "labels": ["a", "b"]}]
    with pytest.raises(SystemExit) as exc:
        _officeray(url, "feedback", "t-1", "--rating", "5")
    assert exc.value.code == 2


# -- errors, keys and addresses --


def test_an_unreachable_server_exits_1_naming_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    for command in (["get", "t-1"], ["list"], ["run", "x"], ["dlq", "list"]):
        assert _officeray(url, *command) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "cannot reach" in err and url in err


@pytest.mark.parametrize("key", ["ofr_00000000000f_" + "z" * 32, "not-a-key", None])
def test_a_refused_key_exits_1_and_says_so(
    server: Server, capsys: pytest.CaptureFixture[str], key: str | None
) -> None:
    _api, url = server
    assert _officeray(url, "list", key=key) == 1
    err = capsys.readouterr().err
    assert "the server refused the API key" in err and "unauthorized" in err and "Traceback" not in err


def test_another_tenants_task_is_not_found(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    api, url = server
    api.add_task(TaskRecord(task_id="t-acme", description="d", tenant="acme"))
    assert _officeray(url, "get", "t-acme", key=FAKE_OTHER_USER_KEY) == 1
    err = capsys.readouterr().err
    assert "404" in err and "task_not_found" in err and "t-acme" in err


def test_a_422_is_a_usage_error_with_the_fields(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    _api, url = server
    assert _officeray(url, "list", "--limit", "100000") == 2
    err = capsys.readouterr().err
    assert "422" in err and "limit" in err


def test_key_and_address_come_from_the_environment(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, url = server
    api.add_task(TaskRecord(task_id="t-1", description="d", tenant="acme"))
    monkeypatch.setenv("OFFICERAY_ADDRESS", url)
    monkeypatch.setenv("OFFICERAY_API_KEY", FAKE_USER_KEY)
    assert cli.main(["get", "t-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["task_id"] == "t-1"


def test_the_local_admin_key_file_is_used_when_no_key_is_given(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api, url = server
    key_file = tmp_path / "admin.key"
    key_file.write_text(FAKE_ADMIN_KEY + "\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("OFFICERAY_AUTH__ADMIN_KEY_FILE", str(key_file))
    api.add_task(TaskRecord(task_id="t-1", description="d", tenant="globex"))
    assert _officeray(url, "get", "t-1", "--json", key=None) == 0
    assert json.loads(capsys.readouterr().out)["tenant"] == "globex"


@pytest.mark.parametrize(
    "command", [["get", "t-1"], ["list"], ["run", "x"], ["dlq", "list"], ["cancel", "t-1"]]
)
def test_the_admin_key_file_never_goes_to_a_server_elsewhere(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str]
) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text(FAKE_ADMIN_KEY + "\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("OFFICERAY_AUTH__ADMIN_KEY_FILE", str(key_file))
    # exits before any connection: nothing listens there, and nothing is sent
    assert _officeray("http://gateway.example.com:8000", *command, key=None) == 2
    err = capsys.readouterr().err
    assert "pass --key" in err and "OFFICERAY_API_KEY" in err and FAKE_ADMIN_KEY not in err
    if command[0] != "run":  # `run` without --address runs locally
        monkeypatch.setenv("OFFICERAY_ADDRESS", "http://10.1.2.3:8000")
        assert cli.main(command) == 2


def test_dlq_with_an_address_goes_through_the_api(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    api, url = server
    api.dlq["t-dead"] = {"task_id": "t-dead", "tenant": "acme", "reason": "gave up", "created_at": "now"}
    assert _officeray(url, "dlq", "list", "--json") == 0
    assert [e["task_id"] for e in json.loads(capsys.readouterr().out)["entries"]] == ["t-dead"]
    assert _officeray(url, "dlq", "retry", "t-dead", key=FAKE_USER_KEY) == 1
    assert "403" in capsys.readouterr().err
    assert _officeray(url, "dlq", "retry", "t-dead") == 0
    assert not api.dlq and ("POST", "/v1/dlq/t-dead/retry") in api.requests


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"officeray {importlib.metadata.version('officeray')}"


@pytest.mark.parametrize(
    ("status", "body", "detail", "code", "fields"),
    [
        (401, '{"detail": "bad key", "code": "unauthorized"}', "bad key", "unauthorized", []),
        (422, '{"detail": "x", "code": "c", "errors": [{"field": "f", "message": "m"}, 3]}', "x", "c", ["f"]),
        (422, '{"detail": [{"loc": ["body"], "msg": "m"}]}', '[{"loc": ["body"], "msg": "m"}]', "", []),
        (502, "<html>Bad   gateway</html>", "<html>Bad gateway</html>", "", []),
        (500, "", "Internal Server Error", "", []),
        (503, "null", "Service Unavailable", "", []),
        (400, '{"detail": null, "code": 7, "errors": "no"}', "Bad Request", "7", []),
    ],
)
def test_error_answers_of_any_shape_become_one_error(
    status: int, body: str, detail: str, code: str, fields: list[str]
) -> None:
    error = api_error(status, body, {"retry-after": "2"})
    assert (error.status, error.detail, error.code) == (status, detail, code)
    assert [e["field"] for e in error.errors] == fields and error.retry_after_s == 2.0


@pytest.mark.parametrize("address", ["ftp://host", "not an address", "http://"])
def test_an_address_that_is_not_one_exits_1(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _officeray(address, "list") == 1
    assert address in capsys.readouterr().err
