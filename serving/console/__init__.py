"""The web console's static files, served by the gateway at ``/console`` (``index.html``) and
``/console/<file>`` (:data:`CONSOLE_FILES` only), without a key: the page asks for an API key once,
keeps it in the tab's ``sessionStorage`` and sends it as ``Authorization: Bearer`` on every API call.

Plain HTML, CSS and JavaScript with SVG drawings: no build step, no CDN, nothing fetched from
elsewhere (the Content-Security-Policy :data:`CONSOLE_CSP` forbids it), so it works offline and
installs with the package (``[tool.setuptools.package-data]``).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import HTTPException
from fastapi.responses import Response

CONSOLE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
"""The files served, with their media types: any other name answers 404."""

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only this origin's files and API: no inline script, nothing from another site."""

CONSOLE_HEADERS = {
    "Content-Security-Policy": CONSOLE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def console_file(name: str) -> bytes | None:
    """The content of the console file ``name`` (None for a name not in :data:`CONSOLE_FILES`)."""
    if name not in CONSOLE_FILES:
        return None
    return files(__name__).joinpath(name).read_bytes()


def console_response(name: str) -> Response:
    """The answer of ``GET /console/<name>``: the file with its type and :data:`CONSOLE_HEADERS`, or
    404 (``not_found``) for any other name."""
    content = console_file(name)
    if content is None:
        raise HTTPException(status_code=404, detail=f"no console file {name[:100]!r}")
    return Response(content, media_type=CONSOLE_FILES[name], headers=CONSOLE_HEADERS)
