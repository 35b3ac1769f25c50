"""Making a sandbox's workspace equal to a task workspace, and taking back what a step changed.

A tool runner holds one :class:`SandboxWorkspace` (what its sandbox's workspace holds, per task).
Before a sandbox step it :meth:`~SandboxWorkspace.sync`\\ s the sandbox to the task's files (from the
store, sent by the pool): only files whose size or sha256 differ are written, files the task does not
have are deleted. After the step, :meth:`~SandboxWorkspace.changes` lists the workspace and reads
back only the files that changed (the caps are checked on the listing first, so an over-cap step
costs no reads). What the sandbox holds is cached per task and trusted while the agent's workspace
``epoch`` is the same (a reset or a new agent changes it).
"""

from __future__ import annotations

from collections.abc import Mapping

from officeray.limits import relative_path_problem
from officeray.workspaces import (
    WorkspaceCaps,
    WorkspaceChanges,
    WorkspaceLimitError,
    artifact_path_problem,
    check_caps,
    sha256_hex,
)
from tools_sandbox.sandbox import Sandbox

Manifest = dict[str, tuple[int, str]]
"""path -> (size, sha256)."""


def manifest_of(files: Mapping[str, bytes]) -> Manifest:
    return {path: (len(data), sha256_hex(data)) for path, data in files.items()}


class SandboxWorkspace:
    """What one runner's sandbox workspace holds (see the module). Not thread-safe: the runner runs
    one step at a time."""

    def __init__(self) -> None:
        self._task: str | None = None
        self._epoch: str | None = None
        self._held: Manifest = {}
        self.files_written = 0
        """Files written into sandboxes by :meth:`sync` (over the runner's life; tests read it)."""

    def forget(self) -> None:
        """Trust nothing cached (e.g. a step failed midway: the sandbox may hold anything)."""
        self._task = self._epoch = None
        self._held = {}

    def _holding(self, sandbox: Sandbox, task_id: str) -> Manifest:
        if self._task == task_id and self._epoch is not None and sandbox.workspace_epoch() == self._epoch:
            return self._held
        listing = sandbox.workspace_list()
        self._task, self._epoch, self._held = task_id, listing.epoch, dict(listing.files)
        return self._held

    def sync(self, sandbox: Sandbox, task_id: str, files: Mapping[str, bytes]) -> Manifest:
        """Make the sandbox's workspace hold exactly ``files``; answers their manifest. A path the
        artifact API refuses (:func:`~officeray.workspaces.artifact_path_problem`, e.g. one kept by an
        older version) is left out, so that one bad name cannot break every later sync of the task."""
        held = self._holding(sandbox, task_id)
        files = {path: data for path, data in files.items() if artifact_path_problem(path) is None}
        wanted = manifest_of(files)
        self._task = None  # until the writes below are done
        # a file the agent cannot name (e.g. " ", made by a step's code) is not the task's: left alone
        stale = (path for path in held if path not in wanted and relative_path_problem(path) is None)
        sandbox.workspace_delete(sorted(stale))
        writes = {path: files[path] for path in sorted(wanted) if held.get(path) != wanted[path]}
        sandbox.workspace_put(writes)
        self.files_written += len(writes)
        self._task, self._held = task_id, dict(wanted)
        return wanted

    def changes(
        self, sandbox: Sandbox, task_id: str, before: Manifest, caps: WorkspaceCaps
    ) -> WorkspaceChanges:
        """What the step changed since ``before`` (what :meth:`sync` set up). Files whose path the
        artifact API could not serve (see :func:`~officeray.workspaces.artifact_path_problem`) are
        not part of the task workspace. Raises :class:`~officeray.workspaces.WorkspaceLimitError`
        when the workspace is over ``caps`` (the tenant's cap is the store's to check)."""
        listing = sandbox.workspace_list()
        self._task, self._epoch, self._held = task_id, listing.epoch, dict(listing.files)
        kept = {path: entry for path, entry in listing.files.items() if artifact_path_problem(path) is None}
        problem = check_caps({path: size for path, (size, _) in kept.items()}, 0, caps)
        if problem is not None:
            raise WorkspaceLimitError(problem)
        changed = sorted(path for path, entry in kept.items() if before.get(path) != entry)
        written = {path: sandbox.workspace_read(path, caps.max_task_bytes) for path in changed}
        deleted = sorted(path for path in before if path not in kept)
        return WorkspaceChanges(written=written, deleted=deleted)
