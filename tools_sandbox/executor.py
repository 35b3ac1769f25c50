"""Running one plan step in a sandbox: check the inputs, stage host files, call, map the outcome.

This is what a tool runner does for each step; it is a plain function over a :class:`Sandbox` so
it runs the same under a Ray actor and in a unit test with the local fake sandbox.

The step's tool is looked up in the catalog it is given (:class:`~officeray.tools.catalog.ToolCatalog`,
the process's one catalog, built from the settings at start). Plugin tools (:mod:`officeray.tools.plugins`)
run in the sandbox like the built-ins: the call carries the plugin's module source in the protocol's
``plugin`` field (``Sandbox.call(..., plugin=...)``).
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from officeray.contracts import ErrorType, PlanStep, StepError, StepOutcome
from officeray.tools.catalog import ToolCatalog, builtin_catalog
from officeray.tools.spec import (
    HostContext,
    HostToolError,
    PluginRef,
    ToolRuntime,
    ToolSpec,
    describe_input_errors,
)
from tools_sandbox.host_tools import CANCELLED_SERVICE, STEP_TIMEOUT_SERVICE
from tools_sandbox.limits import StagingLimits
from tools_sandbox.sandbox import Sandbox, SandboxError, ToolCallError

STAGED_SUFFIXES = (".py",)
"""Which files of a staged folder are copied (code_analyzer reads Python sources only)."""

SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".venv", "venv", "node_modules", "site-packages"})
"""Folders a staged folder's walk never enters (nor any folder whose name starts with a dot)."""

STDERR_TAIL_CHARS = 2_000
"""How much of a failed program's stderr goes into the step's error message."""


class StagingError(ValueError):
    """A staged folder is missing, outside the workspace root, or over a limit."""


def stage_folder(
    workspace_root: Path, folder: str, *, confined: bool = True, limits: StagingLimits | None = None
) -> dict[str, str]:
    """The Python files under ``workspace_root / folder`` as ``{relative posix path: text}``.

    ``confined`` (the setting ``workspace_confined``, on for API clients): the folder must resolve
    (symlinks included) to a path inside ``workspace_root``; an absolute path, ``..`` or a symlink
    leading out of it is refused, and a file linking out of the workspace root is skipped.
    Not confined (``officeray run``, the invoking user's own folders): a relative ``folder``
    resolves against ``workspace_root``, an absolute one (or ``~/...``) is taken as is, and a file
    linking out of the named folder is skipped.

    The walk never enters :data:`SKIPPED_DIRS`, hidden folders or symlinked folders. The limits
    (``limits``, default :class:`~tools_sandbox.limits.StagingLimits()`: the agent's own) are checked
    before a file is read (from its size), so a huge file costs no memory; the walk stops at the
    first file over a limit.
    """
    limits = limits or StagingLimits()
    root = workspace_root.resolve()
    named = Path(folder) if confined else Path(folder).expanduser()
    target = (root / named).resolve()  # an absolute path replaces ``root``
    if confined and not target.is_relative_to(root):
        raise StagingError(f"folder {folder!r} is outside the workspace root {root}")
    if not target.is_dir():
        where = "" if named.is_absolute() else f" under {root}"
        raise StagingError(f"folder {folder!r} does not exist{where}")
    boundary = root if confined else target
    files: dict[str, str] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(target):  # symlinked folders are not entered
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if os.path.splitext(name)[1] not in STAGED_SUFFIXES:
                continue
            path = Path(dirpath, name)
            if not path.resolve().is_relative_to(boundary):
                continue  # a symlink pointing out of the boundary is not followed
            if len(files) >= limits.max_files:
                raise _over_limit(folder, limits)
            text = _read_staged(path, limits.max_bytes - total, folder, limits)
            if text is None:
                continue  # not a regular file
            total += len(text.encode("utf-8", "surrogatepass"))  # what the agent counts
            if total > limits.max_bytes:
                raise _over_limit(folder, limits)
            files[path.relative_to(target).as_posix()] = text
    return files


def _over_limit(folder: str, limits: StagingLimits) -> StagingError:
    return StagingError(
        f"folder {folder!r} is over the staging limit ({limits.max_files} files, {limits.max_bytes} bytes)"
    )


def _read_staged(path: Path, budget: int, folder: str, limits: StagingLimits) -> str | None:
    """The text of ``path``, None when it is not a regular file (a FIFO, a device, ...).

    Raises :class:`StagingError` when the file's size is over ``budget`` (before reading anything)
    or it cannot be read; reads at most ``budget + 1`` bytes, so a file that grows meanwhile is
    caught by the caller's count.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not block the runner
    except OSError as exc:
        raise StagingError(f"cannot read {path.name!r} of folder {folder!r}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > budget:
            raise _over_limit(folder, limits)
        try:
            data = fh.read(info.st_size + 1)  # read(n) allocates n bytes: never more than the size
            if len(data) > info.st_size:  # it grew since fstat: read on, up to the budget
                data += fh.read(budget + 1 - len(data))
        except OSError as exc:
            raise StagingError(f"cannot read {path.name!r} of folder {folder!r}: {exc.strerror}") from None
    return data.decode("utf-8", errors="replace")


def _fail(error_type: ErrorType, message: str, output: Any = None) -> StepOutcome:
    return StepOutcome(output=output, error=StepError(type=error_type, message=message))


def call_plugin(
    sandbox: Sandbox, tool: str, inputs: dict[str, Any], *, timeout_s: float, ref: PluginRef
) -> dict[str, Any]:
    """One ``call`` of a plugin tool: ``inputs`` plus ``plugin={module, function, source}``
    (see :meth:`Sandbox.call`)."""
    return sandbox.call(tool, inputs, timeout_s=timeout_s, plugin=ref.protocol_field())


def _run_host_tool(
    spec: ToolSpec, step: PlanStep, inputs: dict[str, Any], context: HostContext
) -> StepOutcome:
    """Run a host tool in a thread of its own and wait at most the step's ``timeout_seconds``: past
    it the step fails with ``timeout`` and its cancel event is set (``sleep`` wakes at once; the
    tools that wait on the network are given the step's timeout as theirs, so their thread ends
    soon after). The tool finds the step's timeout and cancel event in its context's services."""
    cancelled = context.services.get(CANCELLED_SERVICE)
    if not isinstance(cancelled, threading.Event):
        cancelled = threading.Event()
    timeout_s = float(step.timeout_seconds)
    services = {**context.services, CANCELLED_SERVICE: cancelled, STEP_TIMEOUT_SERVICE: timeout_s}
    context = HostContext(settings=context.settings, services=services)
    done: list[StepOutcome] = []
    worker = threading.Thread(
        target=lambda: done.append(_call_host_tool(spec, inputs, context)),
        name=f"host-step-{step.action}",
        daemon=True,  # a tool that ignores its timeout must not keep the process alive
    )
    worker.start()
    worker.join(timeout_s)
    if done:
        return done[0]
    cancelled.set()
    return _fail(ErrorType.TIMEOUT, f"step {step.step_id} ({step.action}) timed out after {timeout_s:g}s")


def _call_host_tool(spec: ToolSpec, inputs: dict[str, Any], context: HostContext) -> StepOutcome:
    try:
        fn = spec.load_host_function()
        return StepOutcome(output=fn(spec.validate_inputs(inputs), context))
    except HostToolError as exc:
        return _fail(exc.error_type, exc.message)
    except Exception as exc:  # a host tool must not take the runner down
        return _fail(ErrorType.TOOL_ERROR, f"{spec.name} failed: {type(exc).__name__}: {exc}")


def run_host_step(
    step: PlanStep,
    inputs: dict[str, Any],
    workspace_root: Path,
    host_context: HostContext | None = None,
    *,
    catalog: ToolCatalog | None = None,
) -> StepOutcome:
    """Run a host-side ``step`` (no sandbox needed) and never raise."""
    return run_step(None, step, inputs, workspace_root, host_context, catalog=catalog)


def run_step(
    sandbox: Sandbox | None,
    step: PlanStep,
    inputs: dict[str, Any],
    workspace_root: Path,
    host_context: HostContext | None = None,
    *,
    workspace_confined: bool = True,
    catalog: ToolCatalog | None = None,
    limits: dict[str, int] | None = None,
) -> StepOutcome:
    """Run ``step`` (with references already resolved into ``inputs``) and never raise.

    ``limits`` (``memory_mb``, ``cpu_s``, ``output_bytes``: the step's per-risk sandbox policy,
    :func:`officeray.sandbox_policy.call_limits`) bound a sandbox call's processes and result.

    The step's tool is looked up in ``catalog`` (default: the built-in tools only; a runner passes
    its process's catalog, plugins included). ``sandbox`` may be None on a runner of host-side
    tools only; a sandbox tool then fails with ``sandbox_error``. A staged folder is resolved by
    :func:`stage_folder` against ``workspace_root``, confined to it unless ``workspace_confined``
    is False (the setting of the same name)."""
    try:
        spec = (catalog if catalog is not None else builtin_catalog()).get_tool(step.action)
    except KeyError as exc:
        return _fail(ErrorType.BAD_INPUT, str(exc.args[0]))
    try:
        checked = spec.validate_inputs(inputs).model_dump(mode="json")
    except ValidationError as exc:
        return _fail(ErrorType.BAD_INPUT, f"{step.action} inputs: " + "; ".join(describe_input_errors(exc)))
    if spec.runtime == ToolRuntime.HOST:
        return _run_host_tool(spec, step, checked, host_context or HostContext())
    if sandbox is None:
        return _fail(ErrorType.SANDBOX_ERROR, f"{step.action} runs in a sandbox; this runner has none")
    files = None
    if spec.staged_folder_input is not None:
        try:
            files = stage_folder(
                workspace_root, checked[spec.staged_folder_input], confined=workspace_confined
            )
        except StagingError as exc:
            return _fail(ErrorType.BAD_INPUT, str(exc))
    plugin = spec.plugin.protocol_field() if spec.plugin is not None else None
    try:
        extra = {"limits": limits} if limits else {}  # a Sandbox of before the limits takes none
        result = sandbox.call(
            step.action, checked, timeout_s=step.timeout_seconds, files=files, plugin=plugin, **extra
        )
    except ToolCallError as exc:
        if exc.error_type == ErrorType.TIMEOUT:
            return _fail(ErrorType.TIMEOUT, f"step {step.step_id} timed out after {step.timeout_seconds}s")
        return _fail(exc.error_type, exc.message)
    except SandboxError as exc:
        return _fail(ErrorType.SANDBOX_ERROR, str(exc))
    if spec.fails_on_nonzero_exit and result.get("exit_code", 0) != 0:
        stderr = str(result.get("stderr", ""))[-STDERR_TAIL_CHARS:]
        return _fail(
            ErrorType.TOOL_ERROR, f"program exited with code {result['exit_code']}: {stderr}", result
        )
    return StepOutcome(output=result)
