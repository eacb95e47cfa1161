"""``GET /``: a page to try steering in a browser, unsteered and steered answers side by side.

The page is one static file shipped with the package (no CDN: it works offline); it streams both
answers from this server's own /v1/chat/completions, so it shows exactly what an API client gets.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse


@cache
def playground_page() -> str:
    """The page's HTML, read once from the package data."""
    return files(__package__).joinpath("playground.html").read_text(encoding="utf-8")


def playground_router() -> APIRouter:
    """The route serving the page; open even with --api-key, since the page asks for the key itself."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> str:
        return playground_page()

    return router
