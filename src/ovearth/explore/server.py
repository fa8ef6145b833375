"""The explorer's HTTP routes (Starlette): JSON in and out, pictures as PNG.

==============================================  =============================================
``GET  /``                                      the page (``static/index.html``)
``GET  /static/{file}``                         its script and style (packaged, no internet)
``GET  /api/config``                            model, presets, refiners, defaults, upload cap
``GET  /api/images``                            the readable images ``[{id, name, source}]``
``GET  /api/image.png?id=``                     an image's working picture
``POST /api/upload?name=``                      raw file bytes -> ``{id, name}`` (size-capped)
``GET  /api/presets/{name}``                    a built-in protocol's classes and settings
``POST /api/run``                               :mod:`.request` JSON -> the result's JSON
``GET  /api/results/{id}/overlay.png``          class colours over the picture
``GET  /api/results/{id}/scores/{k}.png``       class ``k``'s scores, 0..1 (viridis)
``GET  /api/results/{id}/pixel?x=&y=``          the label and the class scores at a pixel
``GET  /api/results/{id}/attention/{k}``        class ``k``'s decoder attention: summary
``GET  /api/results/{id}/attention/{k}/{kind}.png``  one aggregation over the picture
``GET  /api/results/{id}/preset.yaml``          the settings as a preset file
``GET  /api/results/{id}/export.zip``           the files ``segment`` writes
==============================================  =============================================

Errors are JSON ``{"error": "<one sentence>"}``: 400 bad input (anything the server
cannot parse: JSON, types, numbers, query parameters) or a foreign ``Host``, 403 a
request from another origin or site, 404 unknown image, result or file, 413 too large
(a body over its cap, or a run whose memory estimate exceeds ``--run-memory-gb``), 415 a
body of the wrong type or an unsupported upload, 500 anything unforeseen (logged; the
server keeps going). Blocking work runs in worker threads; the model itself is shared
under :class:`~.session.ExploreSession`'s lock. Every response forbids loading anything
from elsewhere (Content-Security-Policy ``'self'``); which requests are answered at all
(Host, Origin, Sec-Fetch-Site, body types) is :mod:`.guard`'s rule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..data.protocols import list_protocols, load_protocol
from ..data.raster import IMAGE_SUFFIXES
from ..errors import InputError
from ..model.stages import PROMPT_FORMS
from ..refine.registry import list_refiners, refiner_class
from ..segment.settings import REFINE_AT, REFINE_FOR
from . import render
from .budget import OverBudget
from .catalog import NotFound
from .guard import HostRule, RequestGuard, WrongMediaType, require_media_type
from .request import SETTING_FIELDS, parse_run
from .result_routes import (
    get_attention,
    get_attention_png,
    get_export,
    get_overlay_png,
    get_pixel,
    get_preset_yaml,
    get_score_png,
    png_response,
    result_json,
    session_of,
)
from .results import ATTENTION_KINDS
from .session import ExploreSession

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

#: Default cap of an upload, in bytes.
MAX_UPLOAD_BYTES = 64 * 2**20

#: Cap of a JSON request body, in bytes.
MAX_JSON_BYTES = 2**20

#: Headers of every response: nothing from elsewhere, no sniffing, no framing, no referrer.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class TooLarge(Exception):
    """A request body over its cap (413)."""


class Unsupported(Exception):
    """An upload of a type the explorer does not read (415)."""


def create_app(
    session: ExploreSession, hosts: HostRule | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES
) -> Starlette:
    """The explorer's ASGI application over ``session``.

    Args:
        session: the model, images, caches and budgets.
        hosts: the ``Host`` names accepted (default: a server bound to ``127.0.0.1``;
            see :class:`~.guard.HostRule`).
        max_upload_bytes: the upload cap.

    """
    routes = [
        Route("/", _index),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/api/config", _guarded(_config)),
        Route("/api/images", _guarded(_images)),
        Route("/api/image.png", _guarded(_image_png)),
        Route("/api/upload", _guarded(_upload), methods=["POST"]),
        Route("/api/presets/{name}", _guarded(_preset)),
        Route("/api/run", _guarded(_run), methods=["POST"]),
        Route("/api/results/{rid}/overlay.png", _guarded(get_overlay_png)),
        Route("/api/results/{rid}/scores/{k}.png", _guarded(get_score_png)),
        Route("/api/results/{rid}/pixel", _guarded(get_pixel)),
        Route("/api/results/{rid}/attention/{k}", _guarded(get_attention)),
        Route("/api/results/{rid}/attention/{k}/{kind}.png", _guarded(get_attention_png)),
        Route("/api/results/{rid}/preset.yaml", _guarded(get_preset_yaml)),
        Route("/api/results/{rid}/export.zip", _guarded(get_export)),
    ]
    hosts = hosts or HostRule.for_bind("127.0.0.1")
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_SecurityHeaders), Middleware(RequestGuard, hosts=hosts)],
        exception_handlers={HTTPException: _http_error},
        lifespan=_closing(session),
    )
    app.state.session = session
    app.state.max_upload_bytes = max_upload_bytes
    return app


def _closing(session: ExploreSession) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager]:
    """A lifespan that removes the session's uploads when the server stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            session.close()

    return lifespan


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _http_error(request: Request, error: Exception) -> Response:
    status = getattr(error, "status_code", 500)
    message = {404: "Not found.", 405: "Method not allowed."}.get(
        status, str(getattr(error, "detail", error))
    )
    return _error(status, message)


def _guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Turn the handler's exceptions into JSON errors; an unforeseen one is logged, not fatal."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except InputError as error:
            return _error(400, str(error))
        except NotFound as error:
            return _error(404, str(error))
        except (TooLarge, OverBudget) as error:
            return _error(413, str(error))
        except (Unsupported, WrongMediaType) as error:
            return _error(415, str(error))
        except Exception as error:  # the page shows it; the server keeps going
            logger.exception("%s %s failed", request.method, request.url.path)
            lines = [line for line in str(error).splitlines() if line.strip()]
            detail = f": {lines[0]}" if lines else ""
            return _error(500, f"Unexpected {type(error).__name__}{detail}.")

    return wrapper


class _SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _body(request: Request, cap: int) -> bytes:
    """The request body, refused (:class:`TooLarge`) as soon as it exceeds ``cap`` bytes."""
    declared = request.headers.get("content-length", "").strip()
    if declared.isascii() and declared.isdecimal() and int(declared) > cap:
        raise TooLarge(f"The request is {int(declared)} bytes; the limit is {cap} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise TooLarge(f"The request is over the limit of {cap} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def _index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def _config(request: Request) -> Response:
    session = session_of(request)
    refiners = []
    for name in list_refiners():
        fields = dataclasses.fields(refiner_class(name))
        refiners.append({"name": name, "params": {f.name: f.default for f in fields}})
    base = session.base.to_dict()
    device = next(session.loaded.model.parameters()).device
    return JSONResponse(
        {
            "model": session.loaded.source,
            "device": str(device),
            "presets": list_protocols(),
            "refiners": refiners,
            "prompt_forms": list(PROMPT_FORMS),
            "refine_at": list(REFINE_AT),
            "refine_for": list(REFINE_FOR),
            "attention_kinds": list(ATTENTION_KINDS),
            "defaults": {name: base[name] for name in SETTING_FIELDS},
            "max_upload_bytes": request.app.state.max_upload_bytes,
            "run_memory_bytes": session.budget.limit,
            "allowed_models": list(session.allowed_models),
        }
    )


async def _images(request: Request) -> Response:
    entries = await run_in_threadpool(session_of(request).catalog.entries)
    return JSONResponse({"images": [{"id": e.id, "name": e.name, "source": e.source} for e in entries]})


async def _image_png(request: Request) -> Response:
    session = session_of(request)
    picture = await run_in_threadpool(session.picture, request.query_params.get("id", ""))
    return png_response(await run_in_threadpool(lambda: render.png(render.shown(picture.rgb))))


async def _upload(request: Request) -> Response:
    require_media_type(request, "application/octet-stream", "an upload's bytes")
    name = request.query_params.get("name", "")
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        raise Unsupported(f"Upload '{name[:80]}': unsupported image type; use GeoTIFF, PNG or JPEG.")
    data = await _body(request, request.app.state.max_upload_bytes)
    if not data:
        raise InputError("The upload is empty.")
    entry = await run_in_threadpool(session_of(request).catalog.add_upload, name, data)
    return JSONResponse({"id": entry.id, "name": entry.name, "source": entry.source})


async def _preset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in list_protocols():  # names only: a path would read any YAML file
        raise NotFound(f"No preset '{name[:80]}'; known: {', '.join(list_protocols())}.")
    protocol = load_protocol(name)
    settings = protocol.settings.to_dict()
    return JSONResponse(
        {
            "name": protocol.name,
            "title": protocol.title,
            "classes": [",".join(names) for names in protocol.vocabulary.classes],
            "settings": {key: settings[key] for key in SETTING_FIELDS},
        }
    )


async def _run(request: Request) -> Response:
    session = session_of(request)
    require_media_type(request, "application/json", "the run request")
    body = await _body(request, MAX_JSON_BYTES)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, numbers of over 4300 digits, deep nesting
        raise InputError("The request body is not valid JSON.") from None
    run = parse_run(data, session.base, session.allowed_models)
    result = await run_in_threadpool(session.run, run)
    return JSONResponse(result_json(result, session))
