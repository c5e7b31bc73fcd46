"""The web chat UI: ``GET /`` serves its page, ``/ui/`` its static modules and stylesheet.

The UI is plain HTML, CSS and ES modules shipped inside the package (no build step, nothing
fetched from the internet); it talks to the gateway only through the public HTTP API.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
UI_PREFIX = "/ui"
_INDEX_ROUTE = "stagecast-ui-index"
_ASSETS_ROUTE = "stagecast-ui-assets"

# Revalidate on every load (ETag / Last-Modified make that a 304), so an upgraded gateway
# never runs a stale mix of old and new modules.
_NO_CACHE = "no-cache"
# The page renders model output; even if an escaping bug slipped through, injected markup
# could neither run script nor load anything from elsewhere.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class _Assets(StaticFiles):
    """``StaticFiles`` whose answers are revalidated on every use."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = _NO_CACHE
        return response


async def _index() -> Response:
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html",
        headers={
            "Cache-Control": _NO_CACHE,
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def install_ui(app: FastAPI) -> None:
    """Add ``GET /`` (the chat page) and ``/ui/*`` (its assets) to ``app``; idempotent.

    Both paths are outside the API's namespaces (``/v1``, ``/stream``, ``/completion``,
    ``/healthz``), so they cannot shadow an API route whatever the registration order.
    """
    if any(getattr(r, "name", None) == _INDEX_ROUTE for r in app.router.routes):
        return
    app.add_api_route(
        "/",
        _index,
        methods=["GET"],
        name=_INDEX_ROUTE,
        include_in_schema=False,
    )
    app.mount(UI_PREFIX, _Assets(directory=STATIC_DIR), name=_ASSETS_ROUTE)
