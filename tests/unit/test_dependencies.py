"""Every third-party package the code imports is declared in pyproject.toml's ``[project]``.

A package that only arrives as a dependency of another (pyarrow through ``ray[data]``, gevent
through locust) breaks the day that other one stops requiring it; importing it means declaring it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("officeray", "tools_sandbox", "actors", "serving", "cluster", "loadtests")
STDLIB_ONLY = REPO / "tools_sandbox" / "agent"
"""Runs inside the sandbox image with the standard library alone (tests/conformance/test_executor.py)."""

OPTIONAL = {"torch": "gpu"}
"""Imports guarded at run time and installed by an extra (torch: by vLLM, ``pip install '.[gpu]'``)."""


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return _normalize(match.group(0))


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module name -> the files importing it (lazy imports inside functions included)."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if path.is_relative_to(STDLIB_ONLY):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in PACKAGES or top == "__future__":
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    extras = {
        extra: {_requirement_name(r) for r in reqs}
        for extra, reqs in project["optional-dependencies"].items()
    }
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, files in sorted(_third_party_imports().items()):
        if module in OPTIONAL:
            assert extras.get(OPTIONAL[module]), f"{module}: the extra {OPTIONAL[module]!r} is gone"
            continue
        names = {_normalize(d) for d in distributions.get(module, [module])}
        if not names & declared:
            missing.append(f"{module} ({', '.join(sorted(names))}) imported by {', '.join(sorted(files))}")
    assert not missing, "imported but not in [project].dependencies:\n" + "\n".join(missing)
