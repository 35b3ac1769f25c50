"""``officeray memory search|delete|rebuild|stats`` against :class:`serving.testing.FakeTaskApi` served
on loopback (no Ray): the fake's memory is an in-process :class:`~officeray.memory.service.Memory`
over the hashing encoder, fed by every task the fake ends and by feedback ratings."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from cluster import cli
from officeray.contracts import TaskStatus
from officeray.memory.entries import MAX_QUERY_CHARS, MAX_SEARCH_K
from serving.testing import FAKE_ADMIN_KEY, FAKE_OTHER_USER_KEY, FAKE_USER_KEY
from tests.unit.conftest import Server

CALC = "Compute 6 * 7 with the math calculator"
TRACE = "Trace the call sequence from main to process_data in examples/sample_project"


pytestmark = pytest.mark.usefixtures("no_ambient_key")  # every test here names its own key and address


def _officeray(url: str, *args: str, key: str = FAKE_USER_KEY) -> int:
    return cli.main([*args, "--address", url, "--key", key])


def _task(url: str, description: str, capsys: pytest.CaptureFixture[str], key: str = FAKE_USER_KEY) -> str:
    """Run a task on the fake to its end (the fake remembers it); its id."""
    _officeray(url, "run", description, "--json", key=key)
    return str(json.loads(capsys.readouterr().out)["task_id"])


def _search(
    url: str, text: str, capsys: pytest.CaptureFixture[str], *extra: str, key: str = FAKE_USER_KEY
) -> dict[str, Any]:
    assert _officeray(url, "memory", "search", text, "--json", *extra, key=key) == 0
    answer: dict[str, Any] = json.loads(capsys.readouterr().out)  # exactly one JSON object
    return answer


def _task_ids(answer: dict[str, Any]) -> list[str]:
    return [hit["task_id"] for hit in answer["hits"]]


# -- search -------------------------------------------------------------------------------------------


def test_search_finds_the_similar_task_first_with_its_outcome_and_lesson(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start()
    calc = _task(url, CALC, capsys)
    trace = _task(url, TRACE, capsys)

    answer = _search(url, "compute 6 * 7", capsys)
    assert answer["query"] == "compute 6 * 7" and answer["tenant"] == "acme"
    assert _task_ids(answer)[0] == calc
    best = answer["hits"][0]
    assert best["outcome"] == "completed" and best["description"] == CALC and best["lesson"]
    assert best["score"] > next(h["score"] for h in answer["hits"] if h["task_id"] == trace)
    assert "vector" not in best

    assert _officeray(url, "memory", "search", "compute 6 * 7", "--k", "1") == 0
    out = capsys.readouterr().out
    for column in ("score", "outcome", "task", "description", "lesson"):
        assert column in out
    assert calc in out and "completed" in out and trace not in out


def test_search_is_scoped_to_the_keys_tenant_and_an_admin_picks_one(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start()
    acme = _task(url, CALC, capsys, key=FAKE_USER_KEY)
    globex = _task(url, CALC, capsys, key=FAKE_OTHER_USER_KEY)

    assert _task_ids(_search(url, CALC, capsys, key=FAKE_USER_KEY)) == [acme]
    assert _task_ids(_search(url, CALC, capsys, key=FAKE_OTHER_USER_KEY)) == [globex]
    assert _task_ids(_search(url, CALC, capsys, "--tenant", "globex", key=FAKE_ADMIN_KEY)) == [globex]

    assert _officeray(url, "memory", "search", CALC, "--tenant", "globex", key=FAKE_USER_KEY) == 1
    err = capsys.readouterr().err
    assert "403" in err and "forbidden" in err


def test_outcome_filters_the_hits(start: Callable[..., Server], capsys: pytest.CaptureFixture[str]) -> None:
    api, url = start()
    completed = _task(url, CALC, capsys)
    api.finish_as = TaskStatus.FAILED
    failed = _task(url, CALC + " again", capsys)

    assert set(_task_ids(_search(url, CALC, capsys))) == {completed, failed}
    assert _task_ids(_search(url, CALC, capsys, "--outcome", "failed")) == [failed]
    assert _task_ids(_search(url, CALC, capsys, "--outcome", "completed")) == [completed]
    assert _search(url, CALC, capsys, "--outcome", "cancelled")["hits"] == []


def test_no_hits_is_said_in_words(start: Callable[..., Server], capsys: pytest.CaptureFixture[str]) -> None:
    _api, url = start()
    assert _officeray(url, "memory", "search", "anything at all") == 0
    assert "no remembered task of tenant acme matches" in capsys.readouterr().out


def test_negative_feedback_removes_the_task_from_search(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start()
    calc = _task(url, CALC, capsys)
    assert _task_ids(_search(url, CALC, capsys)) == [calc]

    assert _officeray(url, "feedback", calc, "--rating", "-1") == 0
    capsys.readouterr()
    assert _search(url, CALC, capsys)["hits"] == []


def test_positive_feedback_keeps_the_task_and_counts_its_rating(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start()
    calc = _task(url, CALC, capsys)
    assert _officeray(url, "feedback", calc, "--rating", "1") == 0
    capsys.readouterr()
    (hit,) = _search(url, CALC, capsys)["hits"]
    assert hit["task_id"] == calc and hit["rating"] == 1 and hit["rank_score"] > hit["score"]


# -- delete -------------------------------------------------------------------------------------------


def test_delete_an_entry_of_the_own_tenant_only(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start()
    calc = _task(url, CALC, capsys)
    (hit,) = _search(url, CALC, capsys)["hits"]

    assert _officeray(url, "memory", "delete", hit["entry_id"], key=FAKE_OTHER_USER_KEY) == 1
    err = capsys.readouterr().err
    assert "404" in err and "memory_entry_not_found" in err
    assert _task_ids(_search(url, CALC, capsys)) == [calc]  # still there

    assert _officeray(url, "memory", "delete", hit["entry_id"], "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"entry_id": hit["entry_id"], "deleted": 1}
    assert _search(url, CALC, capsys)["hits"] == []
    assert _officeray(url, "memory", "delete", hit["entry_id"]) == 1
    assert "memory_entry_not_found" in capsys.readouterr().err


def test_delete_a_tasks_memory(start: Callable[..., Server], capsys: pytest.CaptureFixture[str]) -> None:
    _api, url = start()
    calc = _task(url, CALC, capsys)
    trace = _task(url, TRACE, capsys)

    assert _officeray(url, "memory", "delete", "--task", calc, key=FAKE_OTHER_USER_KEY) == 1
    assert "task_not_found" in capsys.readouterr().err  # another tenant's task: as an unknown one

    assert _officeray(url, "memory", "delete", "--task", calc) == 0
    assert f"forgot 1 memory entry of task {calc}" in capsys.readouterr().out
    assert _task_ids(_search(url, CALC, capsys)) == [trace]


def test_delete_a_tenants_memory(start: Callable[..., Server], capsys: pytest.CaptureFixture[str]) -> None:
    _api, url = start()
    _task(url, CALC, capsys)
    _task(url, TRACE, capsys)
    globex = _task(url, CALC, capsys, key=FAKE_OTHER_USER_KEY)

    assert _officeray(url, "memory", "delete", "--tenant", "globex") == 1
    assert "403" in capsys.readouterr().err

    assert _officeray(url, "memory", "delete", "--tenant", "acme", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"tenant": "acme", "deleted": 2}
    assert _search(url, CALC, capsys)["hits"] == []
    assert _task_ids(_search(url, CALC, capsys, key=FAKE_OTHER_USER_KEY)) == [globex]


# -- rebuild and stats --------------------------------------------------------------------------------


def test_rebuild_and_stats_need_an_admin_key(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start()
    calc = _task(url, CALC, capsys)
    _task(url, CALC, capsys, key=FAKE_OTHER_USER_KEY)

    assert _officeray(url, "memory", "rebuild") == 1
    assert "403" in capsys.readouterr().err

    assert _officeray(url, "memory", "rebuild", "--json", key=FAKE_ADMIN_KEY) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rebuilt"] is True and report["tenants"] == 2 and report["entries"] == 2
    assert _task_ids(_search(url, CALC, capsys)) == [calc]  # still tenant-scoped after the rebuild

    assert _officeray(url, "memory", "rebuild", key=FAKE_ADMIN_KEY) == 0
    assert "rebuilt 2 of 2 stored entries" in capsys.readouterr().out

    assert _officeray(url, "memory", "stats", "--json", key=FAKE_ADMIN_KEY) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["on"] is True and stats["encoder"] == "hashing"
    assert {tenant: index["entries"] for tenant, index in stats["tenants"].items()} == {
        "acme": 1,
        "globex": 1,
    }


# -- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "  "], "blank"),
        (["search", "x" * (MAX_QUERY_CHARS + 1)], f"at most {MAX_QUERY_CHARS}"),
        (["search", CALC, "--k", "0"], "--k must be between 1 and"),
        (["search", CALC, "--k", str(MAX_SEARCH_K + 1)], "--k must be between 1 and"),
        (["delete"], "exactly one of"),
        (["delete", "mem-1", "--task", "task-0001"], "exactly one of"),
        (["delete", "--task", "task-0001", "--tenant", "acme"], "exactly one of"),
    ],
)
def test_bad_usage_is_exit_2_before_any_call(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    api, url = start()
    assert _officeray(url, "memory", *args) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
    assert not [path for _method, path in api.requests if "memory" in path]


def test_the_server_refuses_a_bad_k_with_422_and_its_code(start: Callable[..., Server]) -> None:
    """What a client that skips the command's own checks gets (the command's check is the same)."""
    import httpx

    _api, url = start()
    answer = httpx.get(
        f"{url}/v1/memory/search",
        params={"q": CALC, "k": MAX_SEARCH_K + 1},
        headers={"Authorization": f"Bearer {FAKE_USER_KEY}"},
    )
    assert answer.status_code == 422 and answer.json()["code"] == "invalid_request"


def test_a_server_without_memory_answers_memory_off(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start(memory=False)
    calc = _task(url, CALC, capsys)
    for args in (["search", CALC], ["delete", "--task", calc], ["rebuild"]):
        assert _officeray(url, "memory", *args, key=FAKE_ADMIN_KEY) == 1
        err = capsys.readouterr().err
        assert "503" in err and "memory_off" in err
    assert _officeray(url, "feedback", calc, "--rating", "-1") == 0  # feedback works without a memory


def test_api_key_is_another_name_for_key(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start()
    calc = _task(url, CALC, capsys)
    assert cli.main(["memory", "search", CALC, "--json", "--address", url, "--api-key", FAKE_USER_KEY]) == 0
    assert _task_ids(json.loads(capsys.readouterr().out)) == [calc]
    assert _officeray(url, "memory", "search", CALC, key="ofr_bogus") == 1
    assert "refused the API key" in capsys.readouterr().err


def test_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert _officeray(f"http://127.0.0.1:{port}", "memory", "search", CALC) == 1
    assert f"cannot reach the officeray server at http://127.0.0.1:{port}" in capsys.readouterr().err
