"""``GET /``: the page (``page.html``: one HTML file, no build step, nothing fetched from
elsewhere). It is always served; with an API key it asks for the key once."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = Path(__file__).resolve().parents[1] / "page.html"

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))
