"""The web console (``/console``) in a real headless Chromium (Debian's ``chromium``, driven by
Playwright; nothing is downloaded) against the test stack: sign in, watch a task appear in the live
list and complete, open it and see its timeline lanes, approve a waiting step, decide a result that
waits for a person's review (and download the task's artifacts), retry a dead-lettered task, and see
the system's components. Screenshots go to ``test-artifacts/console/`` (the task's and
the system's are copied to ``docs/images/``)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from cluster.runtime import LocalStack
from officeray.auth import Role, parse_key
from officeray.contracts import StepResult, StepStatus, TaskRecord, TaskStatus
from serving.events import EVENT_SETTLE_S
from tests.integration.conftest import REPO, base_url, bearer, create_key
from tests.integration.stored import with_store

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts" / "console"
DOC_IMAGES = REPO / "docs" / "images"
UI_TIMEOUT_MS = 60_000
"""Longest wait for the page to show something (a task's run on the test stack takes seconds)."""
POLL_TIMEOUT_S = 120
SLOW_TASK = "Wait 4 seconds then compute 2 + 3 then calculate ans * 4"
"""Three steps in sequence: a host-side wait (time to watch it run), then two on a sandbox runner."""
QUICK_TASK = "Compute 2 + 3 then calculate ans * 4"
FAILING_TASK = "Run python:\nraise SystemExit(3)"

FINAL = ("completed", "failed", "cancelled")

T = TypeVar("T")


def _in_thread(call: Callable[[], T]) -> T:
    """``call()`` in a thread of its own: Playwright's sync API keeps an event loop on this thread,
    and the store's helper runs one of its own (asyncio.run)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


@pytest.fixture(scope="module")
def page(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A page of a fresh Chromium profile (no cache, no key), on the console of the test stack."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: run scripts/bootstrap.sh (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1000},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        errors: list[str] = []
        tab = context.pages[0] if context.pages else context.new_page()
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(f"{base_url(stack)}/console")
        try:
            yield tab
        finally:
            context.close()
        assert errors == [], errors  # no uncaught error in the page's script


@pytest.fixture(scope="module")
def signed_in(page: Any, admin_key: str) -> Any:
    """The page signed in with the admin key (a wrong key first: refused, with a message)."""
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#api-key", "ofr_" + "0" * 12 + "_" + "x" * 43)
    page.click("#signin-button")
    page.wait_for_selector("#signin-error:not([hidden])")
    assert "not valid" in page.text_content("#signin-error")
    page.fill("#api-key", admin_key)
    page.click("#signin-button")
    page.wait_for_selector("#tasks-view:not([hidden])")
    page.wait_for_selector("#live[data-state='live']")
    assert page.text_content("#whoami") == f"key ofr_{parse_key(admin_key)}"  # the key's id, not the key
    return page


@pytest.fixture
def http(stack: LocalStack, admin_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url(stack), headers=bearer(admin_key), timeout=60) as client:
        yield client


def _screenshot(page: Any, name: str, *, doc: bool = False) -> None:
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    if doc:
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_IMAGES / name)


def _until(check: Callable[[], Any], what: str, timeout_s: float = POLL_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _row(task_id: str) -> str:
    return f"#tasks-table tr[data-task-id='{task_id}']"


def _notes_plan(content: str) -> dict[str, Any]:
    """A ready plan of one step, ``file_operations write notes.txt``: the task's workspace keeps it."""
    return {
        "plan_id": f"plan-{uuid.uuid4().hex[:8]}",
        "task_id": "unknown-yet",
        "confidence": 1.0,
        "metadata": {
            "priority": 0,
            "required_tools": ["file_operations"],
            "estimated_cost_tokens": 0,
            "estimated_duration_seconds": 1,
        },
        "steps": [
            {
                "step_id": "write",
                "action": "file_operations",
                "inputs": {"operation": "write", "path": "notes.txt", "content": content},
                "outputs_expectation": None,
                "timeout_seconds": 60,
                "parallelizable": False,
                "idempotency_key": f"write-{uuid.uuid4().hex[:8]}",
                "dependencies": [],
            }
        ],
    }


def _sign_in(page: Any, key: str) -> None:
    """Sign out, then in with ``key``: the page opens the view of its address again."""
    page.click("#signout")
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#api-key", key)
    page.click("#signin-button")
    page.wait_for_selector("#live[data-state='live']")


# -- tests ---------------------------------------------------------------------------------------------


def test_the_page_needs_no_key_and_the_api_still_does(stack: LocalStack) -> None:
    base = base_url(stack)
    page = httpx.get(f"{base}/console", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert (
        httpx.get(f"{base}/console/app.js", timeout=30).headers["content-type"].startswith("text/javascript")
    )
    missing = httpx.get(f"{base}/console/secrets.txt", timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert httpx.get(f"{base}/v1/events", timeout=30).status_code == 401
    assert httpx.get(f"{base}/v1/system", timeout=30).status_code == 401


def test_a_task_appears_live_completes_and_shows_its_lanes(signed_in: Any, http: httpx.Client) -> None:
    page = signed_in
    page.goto(page.url.split("#")[0] + "#/tasks")
    page.wait_for_selector("#live[data-state='live']")
    page.evaluate("window.notReloaded = true")
    created = http.post("/v1/tasks", json={"description": SLOW_TASK})
    assert created.status_code == 202, created.text
    task_id = created.json()["task_id"]

    # pushed by the server: the row appears, and the open task view follows the run to its end
    page.wait_for_selector(_row(task_id))
    page.click(f"{_row(task_id)} a")
    page.wait_for_selector("#task-view:not([hidden])")
    page.wait_for_selector("#plan svg g.node.step-running[data-step='s1']")  # the wait runs
    page.wait_for_selector("#task-status .status-completed")
    page.wait_for_selector("#plan svg g.node.step-succeeded[data-step='s3']")
    page.go_back()
    page.wait_for_selector(f"{_row(task_id)}[data-status='completed']")
    row = page.locator(_row(task_id))
    assert row.locator(".tenant").text_content() == "default"
    assert int(row.locator(".tokens").text_content()) > 0
    assert row.locator(".duration").text_content().strip() != ""
    page.fill("#filter-search", task_id[-8:])  # search by id
    assert page.locator("#tasks-table tbody tr").count() == 1
    page.fill("#filter-search", "")
    # the feed's events come a moment late (they settle first): none of them takes the row back
    page.wait_for_timeout(int(3 * EVENT_SETTLE_S * 1000))
    assert page.get_attribute(_row(task_id), "data-status") == "completed"
    assert page.text_content(f"{_row(task_id)} .status") == "completed"
    _screenshot(page, "console-tasks.png")

    page.click(f"{_row(task_id)} a")
    page.wait_for_selector("#task-view:not([hidden])")
    page.wait_for_selector("#task-status .status-completed")
    assert page.evaluate("window.notReloaded") is True
    for lane in ("gateway", "orchestrator", "planner", "reviewer"):
        page.wait_for_selector(f"#timeline svg g.lane[data-lane='{lane}']")
    page.wait_for_selector("#timeline svg g.lane[data-lane^='runner']")
    assert page.locator("#timeline svg g.span").count() >= 8
    assert page.locator("#timeline svg line.call[data-from='orchestrator'][data-to^='runner']").count() >= 2
    assert page.locator("#timeline svg g.span.error").count() == 0
    tooltip = page.locator("#timeline svg g.span[data-name='task'] title").first.text_content()
    assert "officeray.task_id: " + task_id in tooltip  # hover: the span's attributes
    assert page.locator("#plan svg g.node").count() == 3
    assert page.locator("#plan svg path.edge").count() == 2  # each step depends on the one before
    assert page.text_content("#task-result").strip() == "20"
    kinds = page.locator("#task-events li").evaluate_all("items => items.map(i => i.dataset.kind)")
    assert kinds[-1] == "completed"
    _screenshot(page, "console-task-live.png")


def test_a_finished_task_opened_by_its_address_draws_its_timeline(signed_in: Any, http: httpx.Client) -> None:
    """A quick task (the picture in docs/observability.md): its spans side by side on their lanes."""
    page = signed_in
    created = http.post("/v1/tasks", json={"description": QUICK_TASK})
    assert created.status_code == 202, created.text
    task_id = created.json()["task_id"]
    _until(
        lambda: http.get(f"/v1/tasks/{task_id}", params={"wait_s": 10}).json()["status"] == "completed",
        "the end",
    )
    page.goto(page.url.split("#")[0] + f"#/task/{task_id}")
    page.wait_for_selector("#task-status .status-completed")
    for lane in ("gateway", "orchestrator", "planner", "validator", "reviewer"):
        page.wait_for_selector(f"#timeline svg g.lane[data-lane='{lane}']")
    page.wait_for_selector(
        "#timeline svg g.lane[data-lane^='runner'] g.span[data-name='tool math_calculator']"
    )
    assert page.text_content("#task-result").strip() == "20"
    _screenshot(page, "console-task.png", doc=True)


def test_a_waiting_step_is_approved_from_the_system_view(
    signed_in: Any, http: httpx.Client, stack: LocalStack, admin_key: str
) -> None:
    """No built-in tool needs approval in the test stack's config, so the waiting task is written to
    the store (as tests/integration/test_durable_api.py does); the orchestrator takes the decision."""
    page = signed_in
    task_id = f"approve-{uuid.uuid4().hex[:12]}"
    waiting = StepResult(
        step_id="s1",
        action="python_executor",
        idempotency_key=f"{task_id}:1:s1",
        status=StepStatus.WAITING_APPROVAL,
    )
    record = TaskRecord(
        task_id=task_id,
        description="approval from the console",
        status=TaskStatus.WAITING_APPROVAL,
        steps=[waiting],
    )
    _in_thread(lambda: with_store(stack.settings.store.url, lambda store: store.save_task(record)))

    page.goto(page.url.split("#")[0] + "#/system")
    row = f"#approvals-table tr[data-task-id='{task_id}'][data-step-id='s1']"
    page.wait_for_selector(row)
    page.fill(f"{row} input.reason", "checked by the browser test")
    page.click(f"{row} button.approve")
    page.wait_for_selector(f"{row} .outcome.ok")
    assert page.text_content(f"{row} .outcome") == f"approved by {parse_key(admin_key)}"
    decided = http.get(f"/v1/tasks/{task_id}/approvals/s1").json()
    assert decided["decision"] == "approved" and decided["reason"] == "checked by the browser test"
    page.wait_for_selector(row, state="detached")  # decided: no longer pending
    assert all(a["task_id"] != task_id for a in http.get("/v1/approvals").json()["approvals"])


def test_a_result_waiting_for_review_is_decided_and_its_artifacts_download(
    signed_in: Any, http: httpx.Client, stack: LocalStack, admin_key: str
) -> None:
    """A ready plan that writes notes.txt, submitted with ``require_sign_off``: the system view lists
    the waiting review; the task view shows why, the proposed result, the gatekeeper's verdict and the
    artifact (downloaded through the page, with the key); send back needs feedback, a user key is
    refused (403, its detail shown), and the admin's Accept completes the task with the proposal."""
    page = signed_in
    content = f"notes for the reviewer {uuid.uuid4().hex}"
    created = http.post(
        "/v1/tasks",
        json={"description": "write the notes", "plan": _notes_plan(content), "require_sign_off": True},
    )
    assert created.status_code == 202, created.text
    task_id = created.json()["task_id"]

    def waiting() -> dict[str, Any] | None:
        record: dict[str, Any] = http.get(f"/v1/tasks/{task_id}", params={"wait_s": 5}).json()
        assert record["status"] not in FINAL, (record["status"], record.get("error"))
        return record if record["status"] == "waiting_review" else None

    pending = _until(waiting, "the task to wait for a review")["review_pending"]

    page.goto(page.url.split("#")[0] + "#/system")
    listed = f"#reviews-table tr[data-task-id='{task_id}']"
    page.wait_for_selector(listed)
    assert "sign-off" in page.text_content(f"{listed} .reason-text")
    page.click(f"{listed} a")

    panel = "#task-review .review[data-iteration='1']"
    page.wait_for_selector(panel)
    assert page.text_content(f"{panel} .review-reason") == pending["reason"]
    assert page.text_content(f"{panel} .review-output") == json.dumps(pending["proposed_output"], indent=2)
    gate = page.locator("#task-events li[data-kind='gatekeeper'][data-step='write']")
    gate.wait_for()
    assert gate.get_attribute("data-verdict") == "allow"
    assert gate.locator(".gate-reason").text_content().strip() != ""

    row = "#artifacts-table tr[data-path='notes.txt']"
    page.wait_for_selector(row)
    assert page.text_content(f"{row} .size") == f"{len(content)} B"
    with page.expect_download() as downloading:
        page.click(f"{row} a.download")
    download = downloading.value
    assert download.suggested_filename == "notes.txt"
    assert Path(download.path()).read_text() == content

    page.click(f"{panel} button.revise")  # no feedback: nothing is sent
    assert "feedback" in page.text_content(f"{panel} .outcome.error")
    _screenshot(page, "console-review.png")
    assert http.get(f"/v1/tasks/{task_id}").json()["status"] == "waiting_review"

    user = _in_thread(lambda: create_key(stack.settings.store.url, "default", Role.USER))
    try:
        _sign_in(page, user)
        page.wait_for_selector(panel)
        page.click(f"{panel} button.accept")
        page.wait_for_selector(f"{panel} .outcome.error[data-status='403']")
        assert "HTTP 403 forbidden" in page.text_content(f"{panel} .outcome")
    finally:
        _sign_in(page, admin_key)
    page.wait_for_selector(panel)
    page.fill(f"{panel} textarea.feedback", "looks right")
    page.click(f"{panel} button.accept")
    page.wait_for_selector("#task-status .status-completed")
    page.wait_for_selector(panel, state="detached")  # decided: the panel goes
    decided = page.locator("#task-events li[data-kind='review_decided'][data-decision='accept']")
    decided.wait_for()
    assert decided.locator(".gate-reason").text_content() == f"by {parse_key(admin_key)}: looks right"
    assert json.loads(page.text_content("#task-result")) == pending["proposed_output"]


def test_a_dead_lettered_task_is_retried_from_the_system_view(signed_in: Any, http: httpx.Client) -> None:
    page = signed_in
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    created = http.post("/v1/tasks", json={"description": FAILING_TASK, "tenant": tenant})
    assert created.status_code == 202, created.text
    task_id = created.json()["task_id"]
    _until(
        lambda: any(
            e["task_id"] == task_id for e in http.get("/v1/dlq", params={"tenant": tenant}).json()["entries"]
        ),
        "the task in the dead-letter queue",
    )

    page.goto(page.url.split("#")[0] + "#/system")
    row = f"#dlq-table tr[data-task-id='{task_id}']"
    page.wait_for_selector(row)
    assert tenant in page.text_content(row)
    page.click(f"{row} button.retry")
    page.wait_for_selector(f"{row} .outcome.ok")
    assert page.text_content(f"{row} .outcome").startswith("retried: ")
    _until(
        lambda: (
            "retried_from_dlq"
            in [e["kind"] for e in http.get(f"/v1/tasks/{task_id}/events").json()["events"]]
        ),
        "the retried_from_dlq event",
    )


def test_the_system_view_shows_components_heartbeats_and_messages(signed_in: Any) -> None:
    page = signed_in
    page.goto(page.url.split("#")[0] + "#/system")
    page.wait_for_selector("#components .component[data-component='Gateway'][data-status='healthy']")
    for kind in ("deployment", "orchestrator", "runner_pool"):
        page.wait_for_selector(f"#components .component[data-kind='{kind}']")
    assert (
        page.locator("#components .component[data-kind='orchestrator'][data-status='healthy']").count() >= 1
    )
    # the earlier tests' tasks sent spans within the window: lanes and messages between them
    page.wait_for_selector("#messages svg path.message[data-from='orchestrator'][data-to^='runner']")
    page.wait_for_selector("#messages svg g.lane-node[data-lane='planner']")
    page.wait_for_selector("#components .component .pulse")
    _screenshot(page, "console-system.png", doc=True)


def test_the_event_stream_parser_handles_any_chunking(signed_in: Any) -> None:
    """The page's text/event-stream parser (the feed is read with fetch(), not EventSource): CRLF, LF
    and CR line ends split across chunks, several data lines, comments, ids without data, retry."""
    stream = (
        ": events of every task\r\nretry: 1000\r\n\r\n"
        'id: 7\r\nevent: planned\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
        ": ping\n\n"
        "id: 8\rdata: second\r\r"
        "id: 9\n\n"  # an id alone: no event, but the last id moves on
        "data:no space\n\n"
    )
    got = signed_in.evaluate(
        """(text) => {
            const all = [];
            for (const size of [1, 2, 3, 5, 7, 64]) {
                const messages = [];
                const parser = window.officerayConsole.createSseParser((m) => messages.push(m));
                for (let i = 0; i < text.length; i += size) parser.push(text.slice(i, i + size));
                all.push({ messages, retry: parser.retry, last: parser.lastEventId });
            }
            return all;
        }""",
        stream,
    )
    expected = [
        {"id": "7", "event": "planned", "data": '{"a":\n1}'},
        {"id": "8", "event": "message", "data": "second"},
        {"id": "9", "event": "message", "data": "no space"},
    ]
    for run in got:
        assert run == {"messages": expected, "retry": 1000, "last": "9"}
