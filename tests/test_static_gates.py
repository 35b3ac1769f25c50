"""The strict gates of pyproject.toml, run by the test command so CI enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GATE_TIMEOUT_S = 300


@pytest.mark.parametrize(
    "command",
    [
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "ruff"), "format", "--check", "."],
        [str(BIN / "mypy")],
        [str(BIN / "lint-imports")],  # the layers and the core's forbidden imports (pyproject.toml)
    ],
    ids=["ruff-check", "ruff-format", "mypy", "import-layers"],
)
def test_gate_is_clean(command: list[str]) -> None:
    proc = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=GATE_TIMEOUT_S, check=False
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
