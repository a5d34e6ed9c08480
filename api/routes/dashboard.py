"""/dashboard: the web dashboard, static files shipped inside the package (api/dashboard/).

The page signs in with an API key that the user pastes, and reads everything through /v1 with it, so this route
needs no authentication of its own and the API scopes what the page sees to that key's project. Nothing is
loaded from elsewhere: the Content-Security-Policy allows only this server (and data: images, which is how rows
carry theirs).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from api.errors import APIError

router = APIRouter(tags=["dashboard"], include_in_schema=False)

STATIC = Path(__file__).resolve().parents[1] / "dashboard"
FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
"""The page's files; nothing else under the folder is served."""
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> FileResponse:
    if name not in FILES:
        raise APIError(404, f"No dashboard file named '{name[:64]}'.")
    return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)


@router.get("/dashboard")
def page() -> FileResponse:
    return _file("index.html")


@router.get("/dashboard/")
def page_slash() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard/{name}")
def static_file(name: str) -> FileResponse:
    return _file(name)
