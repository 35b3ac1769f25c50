"""Task workspaces as pure logic: the files a task's steps share, their caps, and safe artifact paths.

Every task has a workspace: the files its sandbox steps leave behind, kept in the store
(``workspace_files``, :mod:`officeray.store.workspace`), so that a step on any runner of any node
sees what the steps before it wrote. The tool-runner pool reads the task's files before a sandbox
step, the runner makes its sandbox's workspace equal to them, runs the step and returns what
changed; the pool writes the changes to the store before it answers the step (see
``docs/workspaces.md``).

This module holds what needs no store and no sandbox: the records (:class:`WorkspaceFile`,
:class:`WorkspaceChanges`), the caps check (:func:`check_caps`), the hostile-path check of the
artifact API (:func:`artifact_path_problem`) and the safe local target of a downloaded artifact
(:func:`local_artifact_target`).
"""

from __future__ import annotations

import hashlib
import mimetypes
import posixpath
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from officeray.limits import relative_path_problem

MAX_ARTIFACT_PATH_CHARS = 1024
"""Longest workspace path the store keeps and the artifact API accepts."""

MAX_PATH_DEPTH = 32
"""Most components of a workspace path."""

MAX_TASK_DEPTH = 8
"""Most parent links followed to find a subtask's root task (whose workspace it shares)."""


class WorkspaceLimitError(ValueError):
    """A step's changes would take its task's workspace (or its tenant's) over a cap."""


class WorkspaceFile(BaseModel):
    """One file of a task's workspace, without its content (what ``GET .../artifacts`` lists)."""

    model_config = ConfigDict(frozen=True)

    path: str
    """Relative POSIX path under the workspace root."""
    size: int = Field(ge=0)
    sha256: str
    step_id: str | None = None
    """The step whose run last wrote it."""
    updated_at: datetime


class WorkspaceChanges(BaseModel):
    """What one step changed in its sandbox's workspace: files written (path -> bytes) and deleted."""

    model_config = ConfigDict(frozen=True)

    written: dict[str, bytes] = Field(default_factory=dict)
    deleted: list[str] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.written and not self.deleted

    def paths(self) -> list[str]:
        """Every path changed, sorted."""
        return sorted({*self.written, *self.deleted})


class WorkspaceCaps(NamedTuple):
    """The caps a store checks when it writes a step's changes (``workspace`` settings)."""

    max_task_bytes: int
    max_task_files: int
    max_tenant_bytes: int


class WorkspaceStore(Protocol):
    """The part of :class:`~officeray.store.api.TaskStore` the tool-runner pool uses."""

    async def workspace_contents(self, task_id: str) -> dict[str, bytes]: ...

    async def apply_workspace_changes(
        self,
        task_id: str,
        tenant: str,
        step_id: str,
        changes: WorkspaceChanges,
        caps: WorkspaceCaps,
        now: datetime | None = None,
    ) -> list[WorkspaceFile]: ...

    async def get_task(self, task_id: str) -> Any: ...


class _HasParent(Protocol):
    task_id: str
    tenant: str
    parent_id: str | None


async def workspace_owner(
    get_task: Callable[[str], Awaitable[_HasParent | None]], task_id: str
) -> tuple[str, str | None]:
    """``(workspace task id, tenant)`` of ``task_id``: a subtask shares its root task's workspace,
    found by following ``parent_id`` (at most :data:`MAX_TASK_DEPTH` links) while the parent is a
    task of the same tenant: the walk stops before an unknown parent or one of another tenant, whose
    workspace is never shared. The tenant is None for an unknown task."""
    record = await get_task(task_id)
    owner, tenant = task_id, None if record is None else record.tenant
    for _ in range(MAX_TASK_DEPTH):
        parent_id = None if record is None else record.parent_id
        if not parent_id:
            break
        parent = await get_task(parent_id)
        if parent is None or parent.tenant != tenant:
            break
        owner, record = parent_id, parent
    return owner, tenant


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_caps(task_files: Mapping[str, int], tenant_other_bytes: int, caps: WorkspaceCaps) -> str | None:
    """Why a task workspace of ``task_files`` (path -> size) is over a cap, or None.

    ``tenant_other_bytes``: what the tenant's other tasks' workspaces hold now."""
    if len(task_files) > caps.max_task_files:
        return (
            f"the task workspace would hold {len(task_files)} files; the limit is {caps.max_task_files} "
            "(workspace.max_task_files)"
        )
    total = sum(task_files.values())
    if total > caps.max_task_bytes:
        return (
            f"the task workspace would hold {total} bytes; the limit is {caps.max_task_bytes} "
            "(workspace.max_task_bytes)"
        )
    if tenant_other_bytes + total > caps.max_tenant_bytes:
        return (
            f"the tenant's workspaces would hold {tenant_other_bytes + total} bytes; the limit is "
            f"{caps.max_tenant_bytes} (workspace.max_tenant_bytes)"
        )
    return None


def merged_sizes(current: Mapping[str, int], changes: WorkspaceChanges) -> dict[str, int]:
    """The task's file sizes once ``changes`` are applied to ``current`` (path -> size)."""
    sizes = {path: size for path, size in current.items() if path not in changes.deleted}
    sizes.update({path: len(data) for path, data in changes.written.items()})
    return sizes


def artifact_path_problem(path: object) -> str | None:
    """Why ``path`` (an artifact path from a URL, already percent-decoded) is refused, or None.

    Accepted: a non-empty relative POSIX path of at most :data:`MAX_ARTIFACT_PATH_CHARS` characters
    and :data:`MAX_PATH_DEPTH` components, without NUL or other control characters, backslashes,
    ``.``/``..``, empty or blank (whitespace-only) components, a leading ``/`` or a drive letter, and
    that the sandbox agent accepts too (:func:`officeray.limits.relative_path_problem`), so a path the
    store keeps can always be synced back into a sandbox. The checks run on the decoded text, so
    ``..%2f`` (decoded to ``../``) is refused like ``../``."""
    if not isinstance(path, str) or not path:
        return "the path must be a non-empty string"
    if len(path) > MAX_ARTIFACT_PATH_CHARS:
        return f"the path is longer than {MAX_ARTIFACT_PATH_CHARS} characters"
    agent_problem = relative_path_problem(path, "the path")
    if agent_problem is not None:
        return agent_problem
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        return "the path must not contain NUL or control characters"
    if "\\" in path:
        return "the path must not contain backslashes"
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return "the path must be relative to the workspace"
    parts = path.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        return f"the path has more than {MAX_PATH_DEPTH} components"
    if any(part in ("", ".", "..") for part in parts):
        return "the path must not contain empty, '.' or '..' components"
    if any(not part.strip() for part in parts):
        return "the path must not contain blank (whitespace-only) components"
    if posixpath.normpath(path) != path:
        return "the path is not in normal form"
    return None


def local_artifact_target(folder: Path, path: str) -> Path | None:
    """Where artifact ``path`` is saved under ``folder``, or None when it would land outside it
    (a hostile path from a server: absolute, ``..``, a symbolic link already in ``folder``)."""
    if artifact_path_problem(path) is not None:
        return None
    root = folder.resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or target == root:
        return None
    return target


def sorted_files(files: Sequence[WorkspaceFile]) -> list[WorkspaceFile]:
    return sorted(files, key=lambda f: f.path)


def artifact_media_type(path: str) -> str:
    """The Content-Type of an artifact download, guessed from its name."""
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def artifact_headers(path: str, sha256: str) -> dict[str, str]:
    """Headers of an artifact download: always an attachment, never sniffed or run by a browser
    (the files are what model-written code produced)."""
    name = quote(path.rsplit("/", 1)[-1], safe="")
    return {
        "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
        "ETag": f'"{sha256}"',
    }
