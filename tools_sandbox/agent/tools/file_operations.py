"""``file_operations``: read, write, list or delete files of the task workspace.

STDLIB ONLY (runs inside the sandbox, in the agent's forked worker).

Every path is relative to the workspace root (``$OFFICERAY_WORKSPACE``) and confined to it by
:func:`tools_sandbox.agent.workspace.confine`: absolute paths, ``..`` components, NUL characters and
symbolic links that lead out of the workspace are refused (``bad_input``). On top of that check, the
final file is opened relative to a descriptor of its (checked) parent folder with ``O_NOFOLLOW``,
and that folder's descriptor is checked again through ``/proc/self/fd``, so a link swapped in after
the check cannot redirect the operation either.

Outputs (``operation`` and ``path``, the normalized relative path, are in every one):

``read``
    ``{"operation", "path", "content", "bytes"}``: the UTF-8 text of a regular file of at most
    :data:`MAX_READ_BYTES` bytes (a larger file fails with ``output_limit`` naming the limit; a
    file that is not UTF-8 text with ``tool_error``).
``write``
    ``{"operation", "path", "bytes"}``: ``content`` (UTF-8, at most :data:`MAX_WRITE_BYTES` bytes)
    replaces the file, missing parent folders are created.
``list``
    ``{"operation", "path", "entries", "truncated"}``: ``entries`` is a list of
    ``{"name", "type", "bytes"}`` sorted by name, ``name`` relative to ``path`` (``sub/x.txt`` when
    ``recursive``), ``type`` one of ``file``, ``dir``, ``symlink``, ``other`` and ``bytes`` the size of
    a file (``null`` for the other types). Symbolic links are listed, never followed. At most
    :data:`MAX_LIST_ENTRIES` entries (and :data:`MAX_LIST_DEPTH` folder levels) are returned;
    ``truncated`` says whether some were left out.
``delete``
    ``{"operation", "path", "deleted": true}``: removes a file or a symbolic link (the link, not its
    target), an empty folder, or a folder and everything in it when ``recursive``. The workspace
    root itself cannot be deleted.

A missing file fails with ``tool_error`` ("no such file or folder"); bad inputs (a folder given to
``read``, ``content`` given to another operation than ``write``, ...) with ``bad_input``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from typing import Any, NoReturn

from officeray.limits import MAX_PATH_CHARS, MAX_WRITE_BYTES
from tools_sandbox.agent.errors import ToolFailure, ToolInputError
from tools_sandbox.agent.workspace import check_relative, confine, is_inside, workspace_root

OPERATIONS = ("read", "write", "list", "delete")

MAX_READ_BYTES = 1024**2
"""Largest file ``read`` returns."""

MAX_LIST_ENTRIES = 1_000
"""Most entries ``list`` returns (``truncated`` is true when there were more)."""

MAX_LIST_DEPTH = 32
"""Deepest folder level a recursive ``list`` descends into (deeper ones make ``truncated`` true)."""


@dataclass(frozen=True)
class FileLimits:
    """The limits of one :func:`run`; each default is the constant of the same name above.

    The agent always runs with the defaults (``limits`` is not a tool input); tests pass smaller ones."""

    max_read_bytes: int = MAX_READ_BYTES
    max_write_bytes: int = MAX_WRITE_BYTES
    max_list_entries: int = MAX_LIST_ENTRIES
    max_list_depth: int = MAX_LIST_DEPTH
    max_path_chars: int = MAX_PATH_CHARS


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # never block on a FIFO


class OutputTooLarge(ToolFailure):
    error_type = "output_limit"


def run(
    operation: str,
    path: str,
    content: str | None = None,
    recursive: bool = False,
    *,
    limits: FileLimits | None = None,
) -> dict[str, Any]:
    """Run one file operation in the workspace; see the module docstring for the outputs.

    ``limits`` default to :class:`FileLimits()` (the constants above)."""
    limits = limits or FileLimits()
    if operation not in OPERATIONS:
        raise ToolInputError(f"operation must be one of {', '.join(OPERATIONS)}; got {operation!r}")
    if isinstance(path, str) and len(path) > limits.max_path_chars:
        raise ToolInputError(f"path is {len(path)} characters; the limit is {limits.max_path_chars}")
    rel = os.path.normpath(check_relative(path))
    if not isinstance(recursive, bool):
        raise ToolInputError("recursive must be true or false")
    if recursive and operation not in ("list", "delete"):
        raise ToolInputError(f"recursive applies to list and delete, not to {operation}")
    if operation == "write":
        if not isinstance(content, str):
            raise ToolInputError("write needs content: the text to write")
    elif content is not None:
        raise ToolInputError(f"content applies to write only, not to {operation}")
    root = workspace_root()
    if not os.path.isdir(root):
        raise ToolFailure(f"the workspace {root} does not exist")
    if operation == "read":
        return _read(root, rel, limits.max_read_bytes)
    if operation == "write":
        assert isinstance(content, str)
        return _write(root, rel, content, limits.max_write_bytes)
    if operation == "list":
        return _list(root, rel, recursive, limits)
    return _delete(root, rel, recursive)


# --------------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------------


def _read(root: str, rel: str, max_bytes: int) -> dict[str, Any]:
    real = confine(root, rel)
    if real == root:
        raise ToolInputError("path '.' is the workspace root, a folder; use operation 'list'")
    parent, name = os.path.split(real)
    dfd = _open_dir(root, parent, rel)
    try:
        fd = _os_call(rel, "read", os.open, name, os.O_RDONLY | _FILE_FLAGS, dir_fd=dfd)
    finally:
        os.close(dfd)
    try:
        info = _check_regular(fd, rel, "read")
        data = _read_fd(fd, max_bytes + 1) if info.st_size <= max_bytes else b""
    finally:
        os.close(fd)
    if info.st_size > max_bytes or len(data) > max_bytes:
        size = max(info.st_size, len(data))
        raise OutputTooLarge(
            f"{rel!r} is {size} bytes; read is limited to MAX_READ_BYTES ({max_bytes} bytes)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ToolFailure(f"{rel!r} is not UTF-8 text") from None
    return {"operation": "read", "path": rel, "content": text, "bytes": len(data)}


def _write(root: str, rel: str, content: str, max_bytes: int) -> dict[str, Any]:
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError:
        raise ToolInputError("content is not valid Unicode text (it has a lone surrogate)") from None
    if len(data) > max_bytes:
        raise ToolInputError(
            f"content is {len(data)} bytes; write is limited to MAX_WRITE_BYTES ({max_bytes} bytes)"
        )
    real = confine(root, rel)
    if real == root:
        raise ToolInputError("path '.' is the workspace root, a folder")
    parent, name = os.path.split(real)
    _os_call(rel, "write", os.makedirs, parent, exist_ok=True)
    dfd = _open_dir(root, parent, rel)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _FILE_FLAGS
        fd = _os_call(rel, "write", os.open, name, flags, 0o644, dir_fd=dfd)
    finally:
        os.close(dfd)
    try:
        _check_regular(fd, rel, "write")
        _os_call(rel, "write", _write_fd, fd, data)
    finally:
        os.close(fd)
    return {"operation": "write", "path": rel, "bytes": len(data)}


def _list(root: str, rel: str, recursive: bool, limits: FileLimits) -> dict[str, Any]:
    real = confine(root, rel)
    dfd = _open_dir(root, real, rel)
    entries: list[dict[str, Any]] = []
    try:
        truncated = _scan(dfd, "", recursive, 0, entries, limits)
    finally:
        os.close(dfd)
    return {"operation": "list", "path": rel, "entries": entries, "truncated": truncated}


def _scan(
    dfd: int, prefix: str, recursive: bool, depth: int, out: list[dict[str, Any]], limits: FileLimits
) -> bool:
    """Append the entries of the folder ``dfd`` (names prefixed); True when some were left out."""
    with os.scandir(dfd) as it:
        found = sorted(it, key=lambda e: e.name)
    for entry in found:
        if len(out) >= limits.max_list_entries:
            return True
        kind, size = _kind(entry)
        out.append({"name": prefix + entry.name, "type": kind, "bytes": size})
        if kind != "dir" or not recursive:
            continue
        if depth + 1 >= limits.max_list_depth:
            return True
        try:
            child = os.open(entry.name, _DIR_FLAGS, dir_fd=dfd)
        except OSError:
            continue  # vanished, or not searchable: listed, not descended into
        try:
            if _scan(child, prefix + entry.name + "/", recursive, depth + 1, out, limits):
                return True
        finally:
            os.close(child)
    return False


def _kind(entry: os.DirEntry[str]) -> tuple[str, int | None]:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return "other", None
    if stat.S_ISLNK(info.st_mode):
        return "symlink", None
    if stat.S_ISDIR(info.st_mode):
        return "dir", None
    if stat.S_ISREG(info.st_mode):
        return "file", info.st_size
    return "other", None


def _delete(root: str, rel: str, recursive: bool) -> dict[str, Any]:
    if rel == ".":
        raise ToolInputError("refusing to delete the workspace root itself")
    confine(root, rel)  # a link that leads out of the workspace is refused, even for delete
    parent_rel, name = os.path.split(rel)
    parent = confine(root, parent_rel or ".")
    dfd = _open_dir(root, parent, rel)
    try:
        info = _os_call(rel, "delete", os.stat, name, dir_fd=dfd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            _os_call(rel, "delete", os.unlink, name, dir_fd=dfd)
        elif recursive:
            _os_call(rel, "delete", shutil.rmtree, name, dir_fd=dfd)
        else:
            try:
                os.rmdir(name, dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise ToolInputError(f"folder {rel!r} is not empty; pass recursive=true") from None
                _raise_os_error(exc, rel, "delete")
    finally:
        os.close(dfd)
    return {"operation": "delete", "path": rel, "deleted": True}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _open_dir(root: str, real_dir: str, rel: str) -> int:
    """A descriptor of the folder ``real_dir`` (already confined), checked again once open."""
    fd = _os_call(rel, "open", os.open, real_dir, _DIR_FLAGS)
    try:
        actual = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return fd  # no /proc (not Linux): the path check stands alone
    if not is_inside(root, actual):
        os.close(fd)
        raise ToolInputError(f"path {rel!r} escapes the workspace (it changed while being opened)")
    return fd


def _check_regular(fd: int, rel: str, action: str) -> os.stat_result:
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        hint = "; use operation 'list'" if action == "read" else ""
        raise ToolInputError(f"{rel!r} is a folder{hint}")
    if not stat.S_ISREG(info.st_mode):
        raise ToolInputError(f"{rel!r} is not a regular file")
    return info


def _read_fd(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(limit - size, 256 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _os_call(rel: str, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except OSError as exc:
        _raise_os_error(exc, rel, action)


def _raise_os_error(exc: OSError, rel: str, action: str) -> NoReturn:
    code = exc.errno
    if code == errno.ENOENT:
        raise ToolFailure(f"no such file or folder in the workspace: {rel!r}") from None
    if code == errno.ELOOP:
        raise ToolInputError(f"{rel!r} is a symbolic link that cannot be followed here") from None
    if code == errno.EEXIST:  # makedirs met a file where a parent folder should be
        raise ToolInputError(f"a parent of {rel!r} is a file, not a folder") from None
    if code == errno.ENOTDIR:
        if action == "open":
            raise ToolInputError(f"{rel!r} is not a folder (or one of its parents is a file)") from None
        raise ToolInputError(f"a parent of {rel!r} is not a folder") from None
    if code == errno.EISDIR:
        raise ToolInputError(f"{rel!r} is a folder") from None
    if code in (errno.ENAMETOOLONG, errno.ENXIO):
        raise ToolInputError(f"cannot {action} {rel!r}: {exc.strerror}") from None
    if code in (errno.ENOSPC, errno.EDQUOT):
        raise ToolFailure(f"cannot {action} {rel!r}: the workspace is full ({exc.strerror})") from None
    raise ToolFailure(f"cannot {action} {rel!r}: {exc.strerror or exc}") from None
