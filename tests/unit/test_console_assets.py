"""The console's static files (serving.console): served by name only, with their types and a
Content-Security-Policy that allows this origin alone; nothing in them loads from another site (the
console works offline); and the package data ships them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from fastapi import HTTPException

from officeray.contracts import REVIEW_DECISIONS, TaskStatus
from officeray.gatekeeper import Verdict
from officeray.review import MAX_REVIEW_FEEDBACK_CHARS
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


def _app() -> str:
    return (CONSOLE_DIR / "app.js").read_text()


def test_the_script_never_writes_markup() -> None:
    """Every text from the API goes in as text (textContent, attributes): no HTML is parsed."""
    script = _app()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert 'setAttribute("style"' not in script  # inline styles are refused by the policy


def test_every_element_the_script_uses_is_in_the_page() -> None:
    page = (CONSOLE_DIR / "index.html").read_text()
    ids = set(re.findall(r'\bid="([\w-]+)"', page))
    used = set(re.findall(r'\$\("([\w-]+)"\)', _app()))
    assert used and used <= ids, sorted(used - ids)
    for needed in ("task-subtasks", "task-parent", "task-review", "artifacts-table", "reviews-table"):
        assert needed in used, needed


def test_the_status_filter_offers_every_task_status() -> None:
    page = (CONSOLE_DIR / "index.html").read_text()
    select = page.split('<select id="filter-status">', 1)[1].split("</select>", 1)[0]
    offered = set(re.findall(r"<option>(\w+)</option>", select))
    assert offered == {s.value for s in TaskStatus}


def test_the_review_panel_sends_the_decisions_the_api_takes() -> None:
    script = _app()
    assert set(re.findall(r'decide\("(\w+)"\)', script)) == set(REVIEW_DECISIONS)
    assert f"MAX_REVIEW_FEEDBACK_CHARS = {MAX_REVIEW_FEEDBACK_CHARS};" in script
    assert "/review`" in script and '"/v1/reviews"' in script
    assert re.search(r"if \(decision === \"revise\" && !said\)", script)  # send back needs feedback


def test_artifacts_download_with_the_key_through_a_blob() -> None:
    """The artifact API needs the Authorization header: a plain link would be refused."""
    script = _app()
    assert "/artifacts`" in script and "/artifacts/${" in script
    assert "URL.createObjectURL" in script and "URL.revokeObjectURL" in script
    assert 'path.split("/").map(encodeURIComponent)' in script  # each segment encoded, "/" kept


def test_every_gatekeeper_verdict_has_a_style() -> None:
    css = (CONSOLE_DIR / "style.css").read_text()
    for verdict in Verdict:
        assert f".verdict-{verdict.value}" in css, verdict
    for decision in REVIEW_DECISIONS:
        assert f".decision-{decision}" in css, decision
