"""`GET /`: the demo page (one static HTML file, vanilla JS and CSS from `app/static/`, no build step).

The page only calls the public API (`/answer`, `/batch`, `/batch/{id}`) from the browser; this router serves
files and nothing else. The page and its assets stay open when an API key is set (`app.auth.is_open_path`):
they hold no data, and the page asks for the key and sends it as `X-API-Key` with every API call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def static_files() -> StaticFiles:
    """The app mounts this at `/static` (a mount, not a route: it lists no operations in the schema)."""
    return StaticFiles(directory=STATIC_DIR)
