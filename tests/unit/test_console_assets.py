"""The console's static files (serving.console): served by name only, with their types and a
Content-Security-Policy that allows this origin alone; nothing in them loads from another site (the
console works offline); and the package data ships them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from fastapi import HTTPException

from serving.console import CONSOLE_CSP, CONSOLE_FILES, console_file, console_response

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_DIR = ROOT / "serving" / "console"


@pytest.mark.parametrize("name", sorted(CONSOLE_FILES))
def test_each_file_is_served_with_its_type_and_the_policy(name: str) -> None:
    response = console_response(name)
    assert response.status_code == 200
    assert response.body == (CONSOLE_DIR / name).read_bytes()
    assert response.headers["content-type"] == CONSOLE_FILES[name]
    assert response.headers["content-security-policy"] == CONSOLE_CSP
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../gateway.py",
        "..%2fgateway.py",
        "__init__.py",
        "app.js/",
        "APP.JS",
        "index.html\x00",
        "a" * 5000,
    ],
)
def test_any_other_name_is_a_404(name: str) -> None:
    assert console_file(name) is None
    with pytest.raises(HTTPException) as refused:
        console_response(name)
    assert refused.value.status_code == 404
    assert len(str(refused.value.detail)) < 200


def test_the_policy_allows_this_origin_only_and_no_inline_script() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONSOLE_CSP.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert "unsafe" not in CONSOLE_CSP


def test_nothing_is_loaded_from_elsewhere() -> None:
    """No URL of another site and no inline script or style in the page: it works offline."""
    for name in CONSOLE_FILES:
        text = (CONSOLE_DIR / name).read_text()
        urls = re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text)
        assert all(u == "http://www.w3.org/2000/svg" for u in urls), (name, urls)  # the SVG namespace only
    page = (CONSOLE_DIR / "index.html").read_text()
    assert re.findall(r"<script[^>]*>\s*[^<\s]", page) == []  # scripts only by src
    assert "<style" not in page and " style=" not in page
    assert set(re.findall(r'(?:src|href)="(/[^"]*)"', page)) == {"/console/app.js", "/console/style.css"}


def test_the_package_data_ships_every_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["serving.console"]
    for name in CONSOLE_FILES:
        assert any(Path(name).match(pattern) for pattern in patterns), name
