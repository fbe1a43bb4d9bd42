"""The explorer's FastAPI app: a JSON API over the Lens API (documented at ``/api/openapi.json``) and
the static front end in ``static/``, plotly.js served from the installed plotly package.

Safe by default: the only files it serves are its own static files, plotly.js and concept-example
images that it makes from the Lenses it was given (a client names Lenses, layers and units, never a
path); every parameter is bounded and checked, and a bad one is a 4xx whose message lists the valid
choices. Endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool and a slow
map or graph never stops the server from answering other requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import plotly
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .. import __version__
from .._util.errors import SemlensError
from ..lens.lens import Lens
from ..store.files import LensFileError
from .routes import audit, clusters, compare, correct, explain, maps, search, spaces, units
from .schemas import Problem
from .state import Explorer, NotFound, said

STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
MAX_BODY = 8 * 2**20  # bytes: an image probe, or an audit's concept lists
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self' 'unsafe-eval'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),  # plotly styles its plots inline; its WebGL traces compile shaders through Function()
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

class Guard:
    """ASGI middleware: refuses request bodies above ``MAX_BODY`` before anything reads them (a body
    of unknown length too), and adds security headers to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        refusal = None
        if b"transfer-encoding" in headers or not length.isdigit():
            refusal = (411, "send the request body with a valid Content-Length")
        elif int(length) > MAX_BODY:
            refusal = (413, f"the request body is larger than {MAX_BODY // 2**20} MiB")
        if refusal:
            return await JSONResponse({"detail": refusal[1]}, status_code=refusal[0], headers=HEADERS)(
                scope, receive, send
            )

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [
                    (k.lower().encode(), v.encode()) for k, v in HEADERS.items()
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    lenses: Sequence[Lens | str | Path], allowed_hosts: Sequence[str] | None = None, opener: Callable[[Path], Lens] = Lens.open
) -> FastAPI:
    """The explorer app over ``lenses`` (opened Lenses, or directories that ``opener`` opens: one that fails to is
    served as damaged, beside the others).

    ``allowed_hosts`` limits the Host header a request may carry (``semlens serve`` passes the loopback
    names when it binds 127.0.0.1, so that other web sites cannot reach the API through DNS rebinding).
    """
    explorer = Explorer(lenses, opener)
    app = FastAPI(
        title="semlens explorer",
        version=__version__,
        description="Search, browse, audit and compare the units of the served Lenses. Units are `layer/index`; "
        "Lenses are addressed by index or directory name.",
        openapi_url="/api/openapi.json",
        docs_url=None,  # the interactive docs load their scripts from a CDN; the explorer has an offline API page
        redoc_url=None,
        responses={
            400: {"model": Problem},
            404: {"model": Problem},
            422: {"description": "A parameter fails validation."},
        },
    )
    app.add_middleware(Guard)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.explorer = explorer

    @app.exception_handler(SemlensError)
    async def refused(_request: Request, error: SemlensError) -> JSONResponse:
        """The error in one line, without paths of this machine; a damaged file marks its Lens as damaged."""
        if isinstance(error, LensFileError):
            explorer.found_damaged(error)
        return JSONResponse({"detail": explorer.public(said(error))}, status_code=404 if isinstance(error, NotFound) else 400)

    for routes in (units, clusters, search, maps, audit, compare, explain, correct, spaces):
        app.include_router(routes.router)

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_script() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app
