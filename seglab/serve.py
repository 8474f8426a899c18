"""`seglab serve`: a trained model behind HTTP, with a page at `/` to try it.

    POST /predict?format=json|labels|overlay   body: the image file (raw bytes, or multipart
                                               form data with one file field)
    GET  /health   {"status": "ok", counters of requests and batches}
    GET  /model    name, classes with colours, inference settings, the accepted options

Query options of /predict, each replacing only that setting of the run's inference section (as
`seglab predict`'s flags do): crf=PRESET|none, mode=whole|slide|overlap_tile, crop=HxW,
scales=0.5,1, flip=true|false; with format=json, probabilities=uint8|float16 adds the class
probabilities (K, H, W) as base64 of C-order bytes (uint8: p * 255 rounded; float16 little-endian).

Requests are batched: one worker thread takes the first waiting request, gathers those arriving
within `batch_wait_s` (up to the inference batch size), and labels them with
Segmenter.predict_batch, which runs same-size images in one forward pass.

Refused with a 4xx status and {"error": "one line"}: an empty body, more than `max_bytes`
bytes (413), an image declaring more than `max_pixels` pixels (413, before it is decoded), a
file that is not a readable image (400), bad options (400), an image the model cannot label
(422, e.g. smaller than its downsampling). A failing image never takes down the server or the
other images of its batch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
from pathlib import Path

import numpy as np

from seglab.errors import SeglabError
from seglab.serve_model import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_MAX_PIXELS,
    FORMATS,
    PROBABILITY_ENCODINGS,
    Refused,
    ServedModel,
    one_line,
)

DEFAULT_MAX_BYTES = 20 * 2**20
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file in a form upload
PAGE = Path(__file__).with_name("serve_page.html")


def encode_png(array: np.ndarray, colors=None) -> bytes:
    """(H, W) labels as a palette PNG (ids as pixel values) or (H, W, 3) uint8 as RGB PNG."""
    from PIL import Image

    from seglab.data.folder import write_mask

    buffer = io.BytesIO()
    if colors is not None:
        write_mask(array, buffer, colors)
    else:
        Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def label_summary(labels: np.ndarray, probs, encoding: str | None, served: ServedModel) -> dict:
    """The JSON answer: every class with its pixel count and share, probabilities if asked."""
    k = len(served.names)
    counts = np.bincount(labels.ravel(), minlength=k)
    total = max(int(labels.size), 1)
    answer: dict = {
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "classes": [
            {"id": i, "name": served.names[i], "pixels": int(counts[i]), "share": counts[i] / total}
            for i in range(k)
        ],
    }
    if encoding is not None:
        if encoding == "uint8":
            data = np.round(np.clip(probs, 0, 1) * 255).astype(np.uint8)
        else:
            data = probs.astype("<f2")
        answer["probabilities"] = {
            "encoding": encoding,
            "shape": list(data.shape),
            "scale": 1 / 255 if encoding == "uint8" else 1.0,
            "data": base64.b64encode(np.ascontiguousarray(data).tobytes()).decode("ascii"),
        }
    return answer


async def read_upload(request, max_bytes: int) -> tuple[bytes, str]:
    """The image bytes of a request (raw body, or the first file of a multipart form) and the
    name errors call it; Refused for an empty or oversized body."""
    declared = request.headers.get("content-length")
    is_form = request.headers.get("content-type", "").startswith("multipart/form-data")
    limit = max_bytes + (MULTIPART_SLACK if is_form else 0)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"upload of {declared} bytes is over the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"upload is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    name = "upload"
    if is_form:
        from starlette.requests import Request

        async def replay():  # the form parser reads the body we already hold
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
        except Exception as error:  # noqa: BLE001 - malformed forms raise several types
            raise Refused(400, f"malformed multipart form ({one_line(error)})") from None
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise Refused(400, "the multipart form has no file field; send the image as 'image'")
        name = files[0].filename or "upload"
        body = await files[0].read()
        await form.close()
        if len(body) > max_bytes:
            raise Refused(413, f"{name} is over the limit of {max_bytes} bytes")
    if not body:
        raise Refused(400, "empty body: POST an image file (raw bytes or a multipart file field)")
    return body, name


def create_app(served: ServedModel, max_bytes: int = DEFAULT_MAX_BYTES):
    """The Starlette application for `served`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from seglab.data.images import ImageTooLarge, read_rgb_bytes
    from seglab.engine.report import overlay

    async def predict(request):
        served.stats["requests"] += 1
        try:
            query = request.query_params
            fmt = query.get("format", "json")
            if fmt not in FORMATS:
                raise Refused(400, f"format {fmt!r} is not one of: {', '.join(FORMATS)}")
            encoding = query.get("probabilities") or None
            if encoding is not None and (fmt != "json" or encoding not in PROBABILITY_ENCODINGS):
                raise Refused(400, "probabilities=uint8|float16 goes with format=json")
            key, inference, crf = served.options(query)
            body, name = await read_upload(request, max_bytes)
            try:
                image = await run_in_threadpool(read_rgb_bytes, body, name)
            except ImageTooLarge as error:
                raise Refused(413, str(error)) from None
            except SeglabError as error:
                raise Refused(400, str(error)) from None
            future = served.submit(image, key, encoding is not None)
            try:
                result = await asyncio.wrap_future(future)
            except SeglabError as error:
                raise Refused(422, str(error)) from None
            except RuntimeError as error:  # e.g. an image smaller than the model's downsampling
                size = "x".join(map(str, image.shape[:2]))
                raise Refused(422, f"cannot label this {size} image ({one_line(error)})") from None
            probs = result if encoding is not None else None
            labels = result.argmax(0).astype(np.uint8) if encoding is not None else result
            if fmt == "labels":
                png = await run_in_threadpool(encode_png, labels, served.colors)
                return Response(png, media_type="image/png")
            if fmt == "overlay":
                blended = await run_in_threadpool(overlay, image, labels, served.colors)
                return Response(
                    await run_in_threadpool(encode_png, blended), media_type="image/png"
                )
            answer = await run_in_threadpool(label_summary, labels, probs, encoding, served)
            answer.update(inference=dataclasses.asdict(inference), crf=crf)
            return JSONResponse(answer)
        except Refused as refused:
            return JSONResponse({"error": one_line(refused)}, status_code=refused.status)
        except Exception as error:  # noqa: BLE001 - one request's failure is its own answer
            return JSONResponse({"error": f"internal error: {one_line(error)}"}, status_code=500)

    async def health(request):
        return JSONResponse({"status": "ok", **served.stats})

    async def model(request):
        return JSONResponse({**served.describe(), "max_bytes": max_bytes})

    async def page(request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    routes = [
        Route("/", page),
        Route("/health", health),
        Route("/model", model),
        Route("/predict", predict, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        served.close()

    return Starlette(routes=routes, lifespan=lifespan)


def serve(
    weights_or_run: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    inference: dict | None = None,
    crf: str | None = None,
    device: str = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
) -> None:
    """Load the weights and serve them until interrupted (what `seglab serve` runs)."""
    try:
        import uvicorn
    except ImportError:
        raise SeglabError(
            "seglab serve needs starlette and uvicorn: pip install 'seglab[serve]'"
        ) from None
    served = ServedModel(weights_or_run, inference, crf, device, max_pixels, batch_wait_s)
    print(f"seglab serve: {served.weights} on http://{host}:{port}/ (page at /, API at /predict)")
    print(f"inference: {served.segmenter.variant}")
    uvicorn.run(create_app(served, max_bytes), host=host, port=port, log_level="warning")


__all__ = ["ServedModel", "create_app", "serve"]
