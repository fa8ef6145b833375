"""The explorer's routes of a result: its JSON, pictures, pixel readout, attention, preset and export.

Handlers of ``/api/results/{rid}/...`` (:func:`~ovearth.explore.server.create_app` mounts
them behind its guard) and the request helpers they share with the other routes.
"""

from __future__ import annotations

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import InputError
from . import render
from .catalog import NotFound
from .export import export_zip, preset_yaml, safe_stem
from .results import ATTENTION_KINDS, Result, pixel_readout
from .session import ExploreSession


def session_of(request: Request) -> ExploreSession:
    """The explorer session the app serves."""
    return request.app.state.session


def png_response(data: bytes) -> Response:
    """PNG bytes as an ``image/png`` response."""
    return Response(data, media_type="image/png")


def int_param(request: Request, name: str) -> int:
    """Query parameter ``name`` as an integer, else an InputError (HTTP 400)."""
    value = request.query_params.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise InputError(f"Query parameter '{name}' must be an integer, got '{value[:20]}'.") from None


def result_json(result: Result, session: ExploreSession) -> dict:
    """What the page needs of a result: classes (colour, presence, share), names, URLs, timing."""
    vocabulary, settings = result.request.vocabulary, result.request.settings
    labels, valid = result.labels, result.picture.valid
    counts = np.bincount(labels[valid].ravel(), minlength=256) / max(int(valid.sum()), 1)
    thresholds = settings.class_thresholds(vocabulary.labels)
    base = f"/api/results/{result.id}"
    classes = [
        {
            "index": k,
            "page_index": result.request.enabled[k],
            "name": label,
            "names": list(vocabulary.classes[k]),
            "color": "#{:02x}{:02x}{:02x}".format(*(int(c) for c in result.colors[k])),
            "presence": float(result.presence[k]),
            "threshold": thresholds[k],
            "share": float(counts[k]),
            "scores": f"{base}/scores/{k}.png",
        }
        for k, label in enumerate(vocabulary.labels)
    ]
    names = [
        {"name": name, "class": vocabulary.labels[k], "presence": float(result.name_presence[i])}
        for i, (name, k) in enumerate(zip(vocabulary.names, vocabulary.name_class, strict=True))
    ]
    height, width = labels.shape
    return {
        "id": result.id,
        "image": {
            "id": result.request.image,
            "width": width,
            "height": height,
            "full_size": list(result.picture.full_size),
            "step": result.picture.step,
        },
        "classes": classes,
        "names": names,
        "unclassified_share": float(counts[254]),
        "computed": list(result.computed),
        "reused": len(vocabulary.names) - len(result.computed),
        "seconds": round(result.seconds, 4),
        "model_runs": session.model_runs,
        "overlay": f"{base}/overlay.png",
        "preset": f"{base}/preset.yaml",
        "export": f"{base}/export.zip",
    }


async def result_of(request: Request) -> Result:
    """The result ``{rid}`` names (404 when it is no longer kept)."""
    return session_of(request).result(request.path_params["rid"])


async def get_overlay_png(request: Request) -> Response:
    """``GET /api/results/{rid}/overlay.png``: the labels over the picture."""
    result = await result_of(request)

    def draw() -> bytes:
        blended = render.blend(result.picture.rgb, result.labels, result.colors)
        return render.png(render.shown(blended, nearest=True))

    return png_response(await run_in_threadpool(draw))


def class_index(result: Result, request: Request) -> int:
    """The class index in the path (parsed here: a route's int convertor fails on 5000 digits)."""
    text, count = request.path_params["k"], len(result.request.vocabulary)
    k = int(text) if text.isascii() and text.isdecimal() and len(text) <= 6 else -1
    if not 0 <= k < count:
        raise NotFound(f"No class '{text[:20]}' in this result ({count} classes: 0..{count - 1}).")
    return k


async def get_score_png(request: Request) -> Response:
    """``GET /api/results/{rid}/scores/{k}.png``: class ``k``'s score map."""
    result = await result_of(request)
    k = class_index(result, request)

    def draw() -> bytes:
        return render.png(render.shown(render.score_map(result.class_logits[k], result.picture.valid)))

    return png_response(await run_in_threadpool(draw))


async def get_pixel(request: Request) -> Response:
    """``GET /api/results/{rid}/pixel?x=&y=``: the label and the class scores at a pixel."""
    result = await result_of(request)
    x, y = int_param(request, "x"), int_param(request, "y")
    return JSONResponse(pixel_readout(result, x, y))


async def get_attention(request: Request) -> Response:
    """``GET /api/results/{rid}/attention/{k}``: class ``k``'s decoder attention, summarised."""
    session = session_of(request)
    result = await result_of(request)
    k = class_index(result, request)
    maps = await run_in_threadpool(session.attention, result, k)
    base = f"/api/results/{result.id}/attention/{k}"
    return JSONResponse(
        {
            "class": result.request.vocabulary.labels[k],
            "prompt": maps.prompt,
            "presence": maps.presence,
            "kept": maps.kept,
            "grid": list(maps.grid),
            "maps": {kind: f"{base}/{kind}.png" for kind in ATTENTION_KINDS},
        }
    )


async def get_attention_png(request: Request) -> Response:
    """``GET /api/results/{rid}/attention/{k}/{kind}.png``: one aggregation over the picture."""
    session = session_of(request)
    result = await result_of(request)
    k = class_index(result, request)
    kind = request.path_params["kind"]
    if kind not in ATTENTION_KINDS:
        raise NotFound(f"No attention map '{kind[:40]}'; known: {', '.join(ATTENTION_KINDS)}.")
    maps = await run_in_threadpool(session.attention, result, k)
    return png_response(
        await run_in_threadpool(
            lambda: render.png(render.attention_map(result.picture.rgb, maps.weights[kind], maps.grid))
        )
    )


def image_name(session: ExploreSession, result: Result) -> str:
    """The name of the result's image (an upload removed since: its file's own name)."""
    try:
        return session.catalog.name(result.request.image)
    except NotFound:  # an upload removed since: the file's own name
        return result.picture.path.name


async def get_preset_yaml(request: Request) -> Response:
    """``GET /api/results/{rid}/preset.yaml``: the run's classes and settings as a protocol file."""
    session = session_of(request)
    result = await result_of(request)
    name = image_name(session, result)
    return Response(
        preset_yaml(result, name),
        media_type="application/yaml",
        headers={"content-disposition": f'attachment; filename="{safe_stem(name)}_preset.yaml"'},
    )


async def get_export(request: Request) -> Response:
    """``GET /api/results/{rid}/export.zip``: the files `segment --scores` writes, and the preset."""
    session = session_of(request)
    result = await result_of(request)
    filename, data = await run_in_threadpool(export_zip, result, session.loaded, image_name(session, result))
    return Response(
        data,
        media_type="application/zip",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )
