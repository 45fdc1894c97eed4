"""The Starlette application: the page, its two static files and the JSON API under ``/api/``.

API (documented in docs/viewer.md):

=======  ==================================  =====================================================================
GET      /api/info                           version, model, operating point, limits, optional features
GET      /api/exams                          the exams (opaque ids, labels, views present and missing)
POST     /api/exams/{id}/predict             image, breast and exam records (computed once, then cached)
GET      /api/exams/{id}/sr                  zip of DICOM SRs (when ``mammodetr.sr`` is installed)
GET      /api/images/{id}                    size, windows (16-bit units), chest-wall side, flip for the hanging
GET      /api/images/{id}/pixels             the downscaled image, little-endian uint16, row by row
POST     /api/images/{id}/gradcam            Grad-CAM on the same grid, uint8 base64
POST     /api/upload                         multipart DICOM files -> new exams (+ a reason per refused file)
=======  ==================================  =====================================================================
"""

from __future__ import annotations

import logging
from importlib import resources

from mammodetr.data.image import ImageReadError

from .security import Guard
from .uploads import UploadRefused, receive_upload
from .viewer import Unavailable, Viewer

__all__ = ["create_app", "STATIC_FILES"]

log = logging.getLogger(__name__)

# The only files served besides the API: name -> media type (no path from a request reaches the file system).
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "viewer.js": "text/javascript; charset=utf-8",
                "viewer.css": "text/css; charset=utf-8"}


def _static() -> dict[str, bytes]:
    folder = resources.files("mammodetr.serve") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_FILES}


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


async def _call(func, *args):
    """Run blocking work off the event loop; map failures to JSON errors with one-line reasons."""
    from starlette.concurrency import run_in_threadpool

    try:
        return await run_in_threadpool(func, *args)
    except KeyError:
        return _error(404, "no such exam or image")
    except ImageReadError as e:
        return _error(422, e.reason)
    except Unavailable as e:
        return _error(501, str(e))
    except ValueError as e:
        return _error(400, str(e).splitlines()[0] if str(e) else "bad request")
    except Exception as e:  # noqa: BLE001 - logged by type only: a message may quote a path or a header value
        log.error("internal error in %s (%s)", getattr(func, "__name__", "request"), type(e).__name__)
        return _error(500, f"internal error ({type(e).__name__}); see the server's console")


def create_app(viewer: Viewer) -> Guard:
    """The ASGI application for ``viewer``, behind the :class:`~mammodetr.serve.security.Guard`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    static = _static()

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in static:
            return _error(404, "not found")
        return Response(static[name], media_type=STATIC_FILES[name])

    async def json_of(func, *args) -> Response:
        out = await _call(func, *args)
        return out if isinstance(out, Response) else JSONResponse(out)

    async def info(request: Request) -> Response:
        return await json_of(viewer.info)

    async def exams(request: Request) -> Response:
        return await json_of(viewer.exams)

    async def predict(request: Request) -> Response:
        return await json_of(viewer.predict, request.path_params["exam_id"])

    async def image(request: Request) -> Response:
        return await json_of(viewer.image_info, request.path_params["image_id"])

    async def gradcam(request: Request) -> Response:
        return await json_of(viewer.gradcam, request.path_params["image_id"])

    async def pixels(request: Request) -> Response:
        out = await _call(viewer.pixels, request.path_params["image_id"])
        return out if isinstance(out, Response) else Response(out, media_type="application/octet-stream")

    async def sr(request: Request) -> Response:
        out = await _call(viewer.sr_zip, request.path_params["exam_id"])
        if isinstance(out, Response):
            return out
        return Response(out, media_type="application/zip",
                        headers={"content-disposition": 'attachment; filename="mammodetr-sr.zip"'})

    async def upload(request: Request) -> Response:
        opts = viewer.options
        try:
            files = await receive_upload(request.headers.get("content-type", ""), request.headers.get("content-length"),
                                         request.stream(), viewer.store.upload_dir,
                                         max_file_bytes=opts.max_upload_mb * 2**20, max_files=opts.max_upload_files)
        except UploadRefused as e:
            log.info("upload refused (%d)", e.status)
            return _error(e.status, str(e))
        out = await _call(viewer.add_upload, files)
        if isinstance(out, Response):
            return out
        return JSONResponse(out, status_code=200 if out["exams"] else 400)

    routes = [
        Route("/", page), Route("/static/{name}", page),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/info", info), Route("/api/exams", exams),
        Route("/api/exams/{exam_id}/predict", predict, methods=["POST"]),
        Route("/api/exams/{exam_id}/sr", sr),
        Route("/api/images/{image_id}", image), Route("/api/images/{image_id}/pixels", pixels),
        Route("/api/images/{image_id}/gradcam", gradcam, methods=["POST"]),
        Route("/api/upload", upload, methods=["POST"]),
    ]
    return Guard(Starlette(routes=routes), viewer.options.allow_host)
