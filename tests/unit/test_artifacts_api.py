"""``GET /v1/tasks/{id}/artifacts[/{path}]`` over HTTP in process (a gateway replica on a SQLite store,
real API keys, built as in ``test_gateway_memory``), and ``officeray get TASK --artifacts DIR``'s
saving (:func:`cluster.cli_client.save_artifacts`) against it and against a hostile server."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from cluster import cli
from cluster.cli_client import save_artifacts
from cluster.cli_output import UsageError
from cluster.client import TaskApiClient
from officeray.auth import Role, mint_key
from officeray.config import Settings
from officeray.contracts import TaskRecord, TaskRequest
from officeray.store import SqlStore
from officeray.workspaces import WorkspaceCaps, WorkspaceChanges
from serving import gateway
from serving.security import install_verifier
from tests.unit.test_gateway_memory import _replica_dependencies, gateway_replica

CAPS = WorkspaceCaps(1 << 20, 100, 1 << 30)
BLOB = bytes(range(256))


@dataclass
class Api:
    client: TestClient
    store: SqlStore
    keys: dict[str, str]

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def run(self, call: Callable[..., Any], *args: Any) -> Any:
        return self.client.portal.call(call, *args)  # type: ignore[union-attr]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    url = f"sqlite:///{tmp_path}/officeray.db"
    settings = Settings.model_validate(
        {"store": {"url": url}, "telemetry": {"trace_store": {"enabled": False}}}
    )
    store = SqlStore(url)
    replica = gateway_replica(settings, store, None)
    dependencies = _replica_dependencies()
    for dependency in dependencies:
        gateway.app.dependency_overrides[dependency] = lambda: replica
    client = TestClient(gateway.app, raise_server_exceptions=False)
    client.__enter__()
    api = Api(client, store, {})
    for who, tenant in (("acme", "acme"), ("globex", "globex")):
        key, key_record = mint_key(tenant, Role.USER)
        api.run(store.create_api_key, key_record)
        api.keys[who] = key
    record = TaskRecord(task_id="task-a", description="d", tenant="acme")
    api.run(store.create_task, record, TaskRequest(description="d", tenant="acme"))
    changes = WorkspaceChanges(
        written={"notes.txt": b"hello", "out/data.bin": BLOB, "page.html": b"<script>"}
    )
    api.run(store.apply_workspace_changes, "task-a", "acme", "s1", changes, CAPS)
    try:
        yield api
    finally:
        client.__exit__(None, None, None)
        for dependency in dependencies:
            gateway.app.dependency_overrides.pop(dependency, None)
        install_verifier(None)
        store.close()


def _refusal(answer: Any, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["code"] == code and isinstance(body["detail"], str) and body["detail"]


def test_list_and_download(api: Api) -> None:
    listing = api.client.get("/v1/tasks/task-a/artifacts", headers=api.as_("acme"))
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert [f["path"] for f in body["files"]] == ["notes.txt", "out/data.bin", "page.html"]
    assert body["total_bytes"] == 5 + 256 + 8 and body["task_id"] == "task-a"
    assert {"path", "size", "sha256", "step_id", "updated_at"} <= set(body["files"][0])

    got = api.client.get("/v1/tasks/task-a/artifacts/out/data.bin", headers=api.as_("acme"))
    assert got.status_code == 200 and got.content == BLOB
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"].startswith("attachment;")
    text = api.client.get("/v1/tasks/task-a/artifacts/notes.txt", headers=api.as_("acme"))
    assert text.content == b"hello" and text.headers["content-type"].startswith("text/plain")
    html = api.client.get("/v1/tasks/task-a/artifacts/page.html", headers=api.as_("acme"))
    assert html.headers["x-content-type-options"] == "nosniff"
    assert html.headers["content-security-policy"] == "sandbox"


def test_other_tenants_and_unknown_files(api: Api) -> None:
    _refusal(api.client.get("/v1/tasks/task-a/artifacts", headers=api.as_("globex")), 404, "task_not_found")
    _refusal(
        api.client.get("/v1/tasks/task-a/artifacts/notes.txt", headers=api.as_("globex")),
        404,
        "task_not_found",
    )
    _refusal(
        api.client.get("/v1/tasks/task-a/artifacts/nope.txt", headers=api.as_("acme")),
        404,
        "artifact_not_found",
    )
    assert api.client.get("/v1/tasks/task-a/artifacts").status_code == 401


@pytest.mark.parametrize(
    "raw",
    [
        "..%2f..%2fetc%2fpasswd",
        "%2e%2e/secret",
        "a/..%2f..%2fb",
        "%2fetc%2fpasswd",
        "a%00b",
        "a%5c..%5cb",
        "a//b",
    ],
)
def test_hostile_paths_are_400(api: Api, raw: str) -> None:
    answer = api.client.get(f"/v1/tasks/task-a/artifacts/{raw}", headers=api.as_("acme"))
    _refusal(answer, 400, "invalid_path")


def _client(api: Api, who: str = "acme") -> TaskApiClient:
    """A client whose requests go to the in-process app (through the test client)."""

    def forward(request: httpx.Request) -> httpx.Response:
        answer = api.client.request(request.method, request.url.raw_path.decode(), headers=request.headers)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    return TaskApiClient("http://testserver", api.keys[who], transport=httpx.MockTransport(forward))


def test_the_cli_saves_every_artifact(api: Api, tmp_path: Path) -> None:
    folder = tmp_path / "dl"
    with _client(api) as client:
        saved = save_artifacts(client, "task-a", folder)
    assert saved == ["notes.txt", "out/data.bin", "page.html"]
    assert (folder / "notes.txt").read_bytes() == b"hello"
    assert (folder / "out/data.bin").read_bytes() == BLOB


@pytest.mark.parametrize("path", ["../evil.txt", "/etc/evil", "a/../../evil", "a\\..\\evil"])
def test_the_cli_refuses_a_path_a_hostile_server_sends(tmp_path: Path, path: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/artifacts"):
            files = [
                {"path": path, "size": 1, "sha256": "0" * 64, "step_id": None, "updated_at": "2030-01-01"}
            ]
            return httpx.Response(200, json={"task_id": "t", "files": files, "total_bytes": 1})
        return httpx.Response(200, content=b"x")

    folder = tmp_path / "dl"
    transport = httpx.MockTransport(handler)
    with TaskApiClient("http://testserver", "k", transport=transport) as client, pytest.raises(UsageError):
        save_artifacts(client, "t", folder)
    assert not (tmp_path / "evil.txt").exists()
    assert json.dumps(sorted(p.name for p in tmp_path.rglob("*"))) == json.dumps(["dl"])


# -- `officeray get TASK --artifacts DIR` with a DIR that cannot be saved into: exit 2, no traceback --


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp: tmp / "file.txt", "is not a folder"),
        (lambda tmp: tmp / "file.txt" / "sub", "cannot be created"),
    ],
)
def test_get_artifacts_into_a_file_exits_2_before_asking_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], Path], fragment: str
) -> None:
    (tmp_path / "file.txt").write_text("mine")
    folder = make(tmp_path)
    argv = ["get", "t1", "--artifacts", str(folder), "--address", "http://127.0.0.1:9"]  # nothing listens
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err and "Traceback" not in captured.err and captured.out == ""
    assert (tmp_path / "file.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder")
def test_get_artifacts_into_an_unwritable_folder_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        assert cli.main(["get", "t1", "--artifacts", str(folder), "--address", "http://127.0.0.1:9"]) == 2
    finally:
        folder.chmod(0o700)
    assert "is not writable" in capsys.readouterr().err


def test_a_local_file_in_the_way_of_an_artifact_is_a_usage_error(api: Api, tmp_path: Path) -> None:
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "out").write_text("a file where the artifact needs a folder")
    with _client(api) as client, pytest.raises(UsageError, match="cannot save artifacts under .*out"):
        save_artifacts(client, "task-a", folder)
    assert (folder / "out").read_text() == "a file where the artifact needs a folder"


def test_save_artifacts_refuses_a_file_as_the_folder(api: Api, tmp_path: Path) -> None:
    (tmp_path / "dl").write_text("x")
    with _client(api) as client, pytest.raises(UsageError, match="is not a folder"):
        save_artifacts(client, "task-a", tmp_path / "dl")
