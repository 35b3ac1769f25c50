"""``officeray review TASK --accept | --reject | --revise --feedback TEXT`` against a small review API
served on loopback: the body it sends, what it prints, and its exits (2 for bad usage, before any
request; 1 for the server's refusals)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from cluster import cli
from serving.testing import serve_in_thread

KEY = "ofr_00000000000a_" + "s" * 43


class ReviewApi:
    """``POST /v1/tasks/{id}/review``: the first decision on ``t-wait`` wins; other tasks do not wait."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.app = FastAPI()

        @self.app.post("/v1/tasks/{task_id}/review")
        async def review(task_id: str, body: dict[str, Any]) -> JSONResponse:
            self.bodies.append(body)
            if task_id != "t-wait":
                return JSONResponse({"detail": "not waiting", "code": "not_waiting_review"}, status_code=409)
            if len(self.bodies) > 1:
                return JSONResponse({"detail": "decided", "code": "review_already_decided"}, status_code=409)
            decided = {"task_id": task_id, "iteration": 1, "decided_by": "00000000000a", **body}
            return JSONResponse(decided)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[ReviewApi, str]]:
    monkeypatch.delenv("OFFICERAY_API_KEY", raising=False)
    monkeypatch.delenv("OFFICERAY_ADDRESS", raising=False)
    monkeypatch.setenv("OFFICERAY_AUTH__ADMIN_KEY_FILE", str(tmp_path / "absent" / "admin.key"))
    api = ReviewApi()
    with serve_in_thread(api.app) as url:
        yield api, url


def _officeray(url: str, *args: str) -> int:
    return cli.main(["review", *args, "--address", url, "--key", KEY])


def test_accept_sends_the_decision_and_prints_who_decided(
    server: tuple[ReviewApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = server
    assert _officeray(url, "t-wait", "--accept") == 0
    assert api.bodies == [{"decision": "accept", "feedback": ""}]
    assert "task t-wait: review accept by 00000000000a" in capsys.readouterr().out


def test_revise_sends_the_feedback(server: tuple[ReviewApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    api, url = server
    assert _officeray(url, "t-wait", "--revise", "--feedback", "use four", "--json") == 0
    assert api.bodies == [{"decision": "revise", "feedback": "use four"}]
    assert '"decision": "revise"' in capsys.readouterr().out


def test_a_second_decision_and_a_task_that_does_not_wait_exit_1(
    server: tuple[ReviewApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = server
    assert _officeray(url, "t-wait", "--reject", "--feedback", "wrong") == 0
    assert _officeray(url, "t-wait", "--accept") == 1
    assert "review_already_decided" in capsys.readouterr().err
    assert _officeray(url, "t-running", "--accept") == 1
    assert "not_waiting_review" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["t-wait", "--revise"],
        ["t-wait", "--revise", "--feedback", "   "],
        ["t-wait", "--feedback", "x" * 2001, "--accept"],
    ],
)
def test_bad_usage_exits_2_before_any_request(
    server: tuple[ReviewApi, str], capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    api, url = server
    assert _officeray(url, *args) == 2
    assert api.bodies == [] and capsys.readouterr().err


@pytest.mark.parametrize("args", [["t-wait"], ["t-wait", "--accept", "--reject"], ["--accept"]])
def test_a_missing_or_double_decision_is_an_argparse_error(
    server: tuple[ReviewApi, str], args: list[str]
) -> None:
    api, url = server
    with pytest.raises(SystemExit) as exited:
        _officeray(url, *args)
    assert exited.value.code == 2 and api.bodies == []
