"""The file_operations tool, called directly on a temporary workspace (no sandbox, no agent)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from officeray.tools.builtin import BUILTIN_TOOLS, FileOperationsInput
from tools_sandbox.agent.errors import ToolFailure, ToolInputError
from tools_sandbox.agent.tools import file_operations as fo

SECRET = "top secret\n"


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace with traps: symbolic links inside it that lead out of it, to ``outside/``."""
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "sub" / "b.txt").write_text("beta!")
    (root / "sub" / "deep" / "c.txt").write_text("")
    (root / "out-dir").symlink_to(outside)
    (root / "out-file").symlink_to(outside / "secret.txt")
    (root / "out-dangling").symlink_to(outside / "new.txt")
    (root / "up").symlink_to("..")
    (root / "root-link").symlink_to("/")
    (root / "in-link").symlink_to("a.txt")
    monkeypatch.setenv("OFFICERAY_WORKSPACE", str(root))
    return root


def outside_snapshot(ws: Path) -> dict[str, str]:
    outside = ws.parent / "outside"
    return {p.name: p.read_text() for p in outside.iterdir()}


def fails(error_type: str, operation: str, path: str, **kwargs: Any) -> str:
    """Run the operation, expect a typed failure; return its message."""
    with pytest.raises(ToolFailure) as info:
        fo.run(operation, path, **kwargs)
    assert info.value.error_type == error_type, info.value.message
    return info.value.message


# --- the four operations --------------------------------------------------------------------------


def test_write_then_read_back(ws: Path) -> None:
    text = "héllo\nwörld ✓"
    out = fo.run("write", "notes/new/a.txt", content=text)
    assert out == {"operation": "write", "path": "notes/new/a.txt", "bytes": len(text.encode())}
    assert (ws / "notes" / "new" / "a.txt").read_text() == text
    assert fo.run("read", "notes/new/a.txt") == {
        "operation": "read",
        "path": "notes/new/a.txt",
        "content": text,
        "bytes": len(text.encode()),
    }
    fo.run("write", "./notes//new/a.txt", content="short")  # normalized; replaces the file
    assert fo.run("read", "notes/new/a.txt")["content"] == "short"
    assert fo.run("write", "empty.txt", content="")["bytes"] == 0


def test_list(ws: Path) -> None:
    out = fo.run("list", ".")
    assert out["operation"] == "list" and out["path"] == "." and out["truncated"] is False
    entries = {e["name"]: (e["type"], e["bytes"]) for e in out["entries"]}
    assert entries == {
        "a.txt": ("file", 5),
        "in-link": ("symlink", None),
        "out-dangling": ("symlink", None),
        "out-dir": ("symlink", None),
        "out-file": ("symlink", None),
        "root-link": ("symlink", None),
        "sub": ("dir", None),
        "up": ("symlink", None),
    }
    assert [e["name"] for e in out["entries"]] == sorted(entries)
    deep = fo.run("list", "sub", recursive=True)
    assert deep["entries"] == [
        {"name": "b.txt", "type": "file", "bytes": 5},
        {"name": "deep", "type": "dir", "bytes": None},
        {"name": "deep/c.txt", "type": "file", "bytes": 0},
    ]
    everything = [e["name"] for e in fo.run("list", ".", recursive=True)["entries"]]
    assert "sub/deep/c.txt" in everything
    assert not any(name.startswith(("out-dir/", "up/", "root-link/")) for name in everything)


def test_list_is_truncated(ws: Path) -> None:
    for i in range(5):
        (ws / "many" / f"f{i}").parent.mkdir(exist_ok=True)
        (ws / "many" / f"f{i}").write_text("x")
    out = fo.run("list", "many", limits=fo.FileLimits(max_list_entries=3))
    assert out["truncated"] is True and [e["name"] for e in out["entries"]] == ["f0", "f1", "f2"]
    assert fo.run("list", "many", limits=fo.FileLimits(max_list_entries=5))["truncated"] is False
    out = fo.run("list", "sub", recursive=True, limits=fo.FileLimits(max_list_depth=1))
    assert out["truncated"] is True and "deep/c.txt" not in [e["name"] for e in out["entries"]]
    assert "deep/c.txt" in [e["name"] for e in fo.run("list", "sub", recursive=True)["entries"]]


def test_read_and_write_limits_are_the_given_ones(ws: Path) -> None:
    small = fo.FileLimits(max_read_bytes=4, max_write_bytes=4, max_path_chars=8)
    with pytest.raises(ToolFailure, match=r"read is limited to MAX_READ_BYTES \(4 bytes\)"):
        fo.run("read", "a.txt", limits=small)  # "alpha": 5 bytes
    with pytest.raises(ToolInputError, match=r"write is limited to MAX_WRITE_BYTES \(4 bytes\)"):
        fo.run("write", "w.txt", content="12345", limits=small)
    with pytest.raises(ToolInputError, match="the limit is 8"):
        fo.run("read", "a-long-name.txt", limits=small)
    assert fo.run("write", "w.txt", content="1234", limits=small)["bytes"] == 4


def test_delete(ws: Path) -> None:
    assert fo.run("delete", "a.txt") == {"operation": "delete", "path": "a.txt", "deleted": True}
    assert not (ws / "a.txt").exists()
    (ws / "target.txt").write_text("t")
    (ws / "link").symlink_to("target.txt")
    fo.run("delete", "link")  # the link goes, its target stays
    assert not (ws / "link").is_symlink() and (ws / "target.txt").read_text() == "t"
    (ws / "empty").mkdir()
    fo.run("delete", "empty")
    assert not (ws / "empty").exists()
    assert "recursive" in fails("bad_input", "delete", "sub")
    assert (ws / "sub" / "b.txt").exists()
    fo.run("delete", "sub", recursive=True)
    assert not (ws / "sub").exists()
    assert "no such file" in fails("tool_error", "delete", "sub")


@pytest.mark.parametrize("path", [".", "./", "sub/..", "in-link/.."])
def test_the_workspace_root_cannot_be_deleted(ws: Path, path: str) -> None:
    fails("bad_input", "delete", path, recursive=True)
    assert (ws / "a.txt").exists()


# --- errors ------------------------------------------------------------------------------------------


def test_missing_files_are_tool_errors(ws: Path) -> None:
    for op in ("read", "list", "delete"):
        assert "no such file" in fails("tool_error", op, "nope/missing.txt")


def test_limits_are_named(ws: Path) -> None:
    (ws / "big.bin").write_bytes(b"x" * (fo.MAX_READ_BYTES + 1))
    assert "MAX_READ_BYTES" in fails("output_limit", "read", "big.bin")
    (ws / "big.bin").write_bytes(b"x" * fo.MAX_READ_BYTES)
    assert fo.run("read", "big.bin")["bytes"] == fo.MAX_READ_BYTES
    message = fails("bad_input", "write", "w.txt", content="é" * (fo.MAX_WRITE_BYTES // 2 + 1))
    assert "MAX_WRITE_BYTES" in message
    assert not (ws / "w.txt").exists()


def test_wrong_kinds_of_files(ws: Path) -> None:
    assert "list" in fails("bad_input", "read", "sub")
    assert "list" in fails("bad_input", "read", ".")
    fails("bad_input", "write", "sub", content="x")
    fails("bad_input", "write", "a.txt/inner.txt", content="x")
    fails("bad_input", "list", "a.txt")
    (ws / "bin.dat").write_bytes(b"\xff\xfe\x00")
    assert "UTF-8" in fails("tool_error", "read", "bin.dat")
    os.mkfifo(ws / "fifo")  # a FIFO would block a plain open(): refused at once instead
    assert "regular file" in fails("bad_input", "read", "fifo")
    fails("bad_input", "write", "fifo", content="x")


@pytest.mark.parametrize(
    ("operation", "kwargs", "fragment"),
    [
        ("copy", {}, "operation"),
        ("read", {"content": "x"}, "content applies to write only"),
        ("write", {}, "write needs content"),
        ("write", {"content": 5}, "write needs content"),
        ("write", {"content": "\ud800"}, "surrogate"),
        ("read", {"recursive": True}, "recursive applies"),
        ("list", {"recursive": "yes"}, "recursive must be"),
    ],
)
def test_bad_inputs(ws: Path, operation: str, kwargs: dict[str, Any], fragment: str) -> None:
    assert fragment in fails("bad_input", operation, "a.txt", **kwargs)


# --- confinement: traversal and symbolic-link attacks ------------------------------------------------

ATTACKS: list[tuple[str, str, str]] = [
    # (operation, path, why it must be refused)
    ("read", "/etc/passwd", "absolute"),
    ("read", "../outside/secret.txt", "'..'"),
    ("read", "sub/../../outside/secret.txt", "'..'"),
    ("read", "sub/..", "'..'"),
    ("read", "out-file", "escapes"),
    ("read", "out-dir/secret.txt", "escapes"),
    ("read", "up/outside/secret.txt", "escapes"),
    ("read", "root-link/etc/passwd", "escapes"),
    ("read", "a\x00b", "NUL"),
    ("read", "", "non-empty"),
    ("read", "   ", "non-empty"),
    ("write", "/tmp/officeray-escape.txt", "absolute"),
    ("write", "../escape.txt", "'..'"),
    ("write", "out-file", "escapes"),
    ("write", "out-dir/new.txt", "escapes"),
    ("write", "out-dangling", "escapes"),
    ("write", "up/outside/new.txt", "escapes"),
    ("write", "up/escape.txt", "escapes"),
    ("list", "/", "absolute"),
    ("list", "..", "'..'"),
    ("list", "out-dir", "escapes"),
    ("list", "up", "escapes"),
    ("list", "root-link/etc", "escapes"),
    ("delete", "/etc/passwd", "absolute"),
    ("delete", "../outside/secret.txt", "'..'"),
    ("delete", "out-file", "escapes"),
    ("delete", "out-dir/secret.txt", "escapes"),
    ("delete", "out-dir", "escapes"),
    ("delete", "out-dangling", "escapes"),
    ("delete", "up/outside/secret.txt", "escapes"),
    ("delete", "up", "escapes"),
]


@pytest.mark.parametrize(("operation", "path", "fragment"), ATTACKS)
def test_attacks_are_refused(ws: Path, operation: str, path: str, fragment: str) -> None:
    before = outside_snapshot(ws)
    links = sorted(p.name for p in ws.iterdir() if p.is_symlink())
    kwargs: dict[str, Any] = {"content": "pwned"} if operation == "write" else {}
    if operation == "delete":
        kwargs["recursive"] = True
    assert fragment in fails("bad_input", operation, path, **kwargs)
    assert outside_snapshot(ws) == before == {"secret.txt": SECRET}
    assert sorted(p.name for p in ws.iterdir() if p.is_symlink()) == links
    assert not (ws.parent / "escape.txt").exists()
    assert not Path("/tmp/officeray-escape.txt").exists()


def test_links_inside_the_workspace_are_followed(ws: Path) -> None:
    assert fo.run("read", "in-link")["content"] == "alpha"
    fo.run("write", "in-link", content="through the link")
    assert (ws / "a.txt").read_text() == "through the link" and (ws / "in-link").is_symlink()


def test_a_folder_swapped_for_a_link_after_the_check_is_refused(ws: Path) -> None:
    outside = os.path.realpath(ws.parent / "outside")
    with pytest.raises(ToolInputError, match="changed while being opened"):
        fo._open_dir(str(ws.resolve()), outside, "sub")


# --- the catalog's input model -----------------------------------------------------------------------


def test_catalog_entry() -> None:
    spec = BUILTIN_TOOLS["file_operations"]
    assert spec.input_model is FileOperationsInput
    assert spec.outputs == ("operation", "path")
    ok = FileOperationsInput.model_validate({"operation": "write", "path": "a.txt", "content": "x"})
    assert ok.model_dump() == {"operation": "write", "path": "a.txt", "content": "x", "recursive": False}
    ref = {"operation": "write", "path": "a.txt", "content": {"from_step": "s1", "path": "stdout"}}
    FileOperationsInput.model_validate(ref)


@pytest.mark.parametrize(
    "inputs",
    [
        {"operation": "read"},
        {"operation": "rename", "path": "a"},
        {"operation": "read", "path": "a", "mode": "r"},
        {"operation": "read", "path": "/etc/passwd"},
        {"operation": "read", "path": "../x"},
        {"operation": "read", "path": "a\x00"},
        {"operation": "read", "path": 5},
        {"operation": "read", "path": "a", "content": "x"},
        {"operation": "write", "path": "a"},
        {"operation": "write", "path": "a", "content": "x" * (fo.MAX_WRITE_BYTES + 1)},
        {"operation": "read", "path": "a", "recursive": True},
        {"operation": "read", "path": "x" * (fo.MAX_PATH_CHARS + 1)},
    ],
)
def test_catalog_refuses_bad_inputs(inputs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FileOperationsInput.model_validate(inputs)
