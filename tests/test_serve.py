"""`seglab serve`: the HTTP API against a server started here on 127.0.0.1 (a free port, uvicorn
in a thread), checked against Segmenter.predict on the same images; bad uploads refused in one
line with the server still up; a bounded load test; the page at / in a headless Chromium."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import socket
import statistics
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette", reason="seglab serve needs the serve extra (starlette)")
uvicorn = pytest.importorskip("uvicorn", reason="seglab serve needs the serve extra (uvicorn)")
pytest.importorskip("multipart", reason="seglab serve needs the serve extra (python-multipart)")

from browser import find_browser, render  # noqa: E402

from seglab.data.folder import ClassInfo  # noqa: E402
from seglab.engine.report import overlay  # noqa: E402
from seglab.inference import Segmenter  # noqa: E402
from seglab.models import create_model  # noqa: E402
from seglab.serve import create_app  # noqa: E402
from seglab.serve_model import ServedModel  # noqa: E402
from seglab.weights import save_weights  # noqa: E402

CLASSES = ClassInfo(
    ["sky", "road", "tree", "car"], [(70, 130, 180), (128, 64, 128), (0, 128, 0), (0, 0, 142)]
)
MAX_BYTES = 200_000
MAX_PIXELS = 512 * 512


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random image (blocks upsampled), so the tiny model predicts several classes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, written by hand (no pixel data follows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("unet", num_classes=4, in_channels=3, width=4, depth=2, padding="same")
    path = tmp_path_factory.mktemp("serve") / "unet.safetensors"
    return save_weights(model, path, classes=CLASSES)


@pytest.fixture(scope="module")
def segmenter(weights):
    return Segmenter.from_checkpoint(weights)


@pytest.fixture(scope="module")
def server(weights):
    """Base URL of a running server; a 20 ms gathering window so concurrent requests batch."""
    served = ServedModel(weights, device="cpu", max_pixels=MAX_PIXELS, batch_wait_s=0.02)
    app = create_app(served, max_bytes=MAX_BYTES)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with other tests
    port = sock.getsockname()[1]
    instance = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not instance.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", served
    instance.should_exit = True
    thread.join(timeout=10)
    sock.close()
    from seglab.data.images import set_max_image_pixels

    set_max_image_pixels(None)  # ServedModel set the process-wide limit


def _call(url: str, body: bytes | None = None, content_type: str = "application/octet-stream"):
    """(status, content type, body bytes); 4xx/5xx are returned, not raised."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read()


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "seglab-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_label_png_and_overlay_equal_segmenter_predict(server, segmenter):
    base, _ = server
    image = _image(40, 56, seed=1)
    expected = segmenter.predict(image)
    assert len(np.unique(expected)) > 1  # a map with one class would prove little
    status, kind, body = _call(f"{base}/predict?format=labels", _png(image), "image/png")
    assert (status, kind) == (200, "image/png")
    returned = Image.open(io.BytesIO(body))
    assert returned.mode == "P"  # ids as pixel values, the class colours as its palette
    np.testing.assert_array_equal(np.array(returned), expected)
    assert returned.getpalette()[3:6] == list(CLASSES.colors[1])
    form, content_type = _multipart("image", "photo.png", _png(image))
    status, _, body = _call(f"{base}/predict?format=labels", form, content_type)
    assert status == 200
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(body))), expected)
    status, _, body = _call(f"{base}/predict?format=overlay", _png(image))
    assert status == 200
    blended = np.array(Image.open(io.BytesIO(body)).convert("RGB"))
    np.testing.assert_array_equal(blended, overlay(image, expected, CLASSES.colors))


def test_json_shares_are_the_label_counts_and_probabilities_decode(server, segmenter):
    base, _ = server
    image = _image(48, 40, seed=2)
    labels = segmenter.predict(image)
    probs = segmenter.predict(image, probabilities=True)
    status, kind, body = _call(f"{base}/predict?format=json&probabilities=uint8", _png(image))
    assert (status, kind) == (200, "application/json")
    answer = json.loads(body)
    assert (answer["height"], answer["width"]) == (48, 40)
    counts = np.bincount(labels.ravel(), minlength=4)
    assert [c["pixels"] for c in answer["classes"]] == counts.tolist()
    assert [c["name"] for c in answer["classes"]] == list(CLASSES.names)
    shares = [c["share"] for c in answer["classes"]]
    assert sum(shares) == pytest.approx(1.0, abs=1e-12)
    assert shares == pytest.approx((counts / (48 * 40)).tolist(), abs=1e-12)
    encoded = answer["probabilities"]
    assert (encoded["encoding"], encoded["shape"]) == ("uint8", [4, 48, 40])
    decoded = np.frombuffer(base64.b64decode(encoded["data"]), np.uint8).reshape(4, 48, 40)
    # p * 255 rounded: each value within half a step of the true probability
    assert np.abs(decoded * encoded["scale"] - probs).max() <= 0.5 / 255 + 1e-6
    status, _, body = _call(f"{base}/predict?probabilities=float16", _png(image))
    half = json.loads(body)["probabilities"]
    decoded = np.frombuffer(base64.b64decode(half["data"]), "<f2").reshape(4, 48, 40)
    np.testing.assert_allclose(decoded, probs, atol=1e-3)


def test_query_options_apply_like_the_segmenter_settings(server, weights):
    base, _ = server
    image = _image(32, 32, seed=3)
    crf = Segmenter.from_checkpoint(weights, crf="deeplab-v2").predict(image)
    status, _, body = _call(f"{base}/predict?format=labels&crf=deeplab-v2", _png(image))
    assert status == 200
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(body))), crf)
    from seglab.config import InferenceConfig

    flipped = Segmenter.from_checkpoint(weights, inference=InferenceConfig(flip=True))
    status, _, body = _call(f"{base}/predict?format=json&flip=true&scales=0.5,1", _png(image))
    answer = json.loads(body)
    assert status == 200 and answer["inference"]["scales"] == [0.5, 1.0] and answer["crf"] is None
    status, _, body = _call(f"{base}/predict?format=labels&flip=true", _png(image))
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(body))), flipped.predict(image))


BAD_REQUESTS = [
    ("empty body", "", b"", 400, "empty body"),
    ("text file", "", b"name,value\nroad,1\n", 400, "cannot read image"),
    ("truncated PNG", "", None, 400, "cannot read image"),
    ("huge declared size", "", _declared_png(100_000, 100_000), 413, "100000x100000"),
    ("over max bytes", "", b"\x89PNG" + bytes(MAX_BYTES), 413, "over the limit"),
    ("unknown format", "?format=jpeg", b"x", 400, "format 'jpeg'"),
    ("unknown CRF", "?crf=bogus", b"x", 400, "unknown CRF preset"),
    ("bad crop", "?mode=slide&crop=10", b"x", 400, "crop"),
    ("too many pixels in crop", "?mode=slide&crop=4000x4000", b"x", 400, "over the server"),
    ("bad flip", "?flip=maybe", b"x", 400, "flip"),
    ("probabilities on a PNG", "?format=labels&probabilities=uint8", b"x", 400, "format=json"),
    ("form without file", "?multipart", b"", 400, "no file field"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_inputs_are_refused_in_one_line_and_the_server_stays_up(server, case):
    base, _ = server
    _, query, body, status, reason = case
    content_type = "application/octet-stream"
    if body is None:  # the first 200 bytes of a real PNG
        body = _png(_image(64, 64, seed=4))[:200]
    if query == "?multipart":
        query = ""
        body = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n'
        content_type = "multipart/form-data; boundary=b"
    got, kind, answer = _call(f"{base}/predict{query}", body, content_type)
    error = json.loads(answer)["error"]
    assert (got, kind) == (status, "application/json"), error
    assert reason in error and "\n" not in error
    assert _call(f"{base}/health")[0] == 200


def test_an_image_the_model_cannot_label_is_a_422_not_a_crash(server):
    base, _ = server
    status, _, answer = _call(f"{base}/predict", _png(_image(1, 1, seed=5)))
    error = json.loads(answer)["error"]
    assert status == 422 and "1x1" in error and "\n" not in error
    assert json.loads(_call(f"{base}/health")[2])["status"] == "ok"


def test_model_endpoint_names_classes_colours_and_settings(server):
    base, _ = server
    status, _, body = _call(f"{base}/model")
    model = json.loads(body)
    assert status == 200 and model["name"] == "unet" and model["num_classes"] == 4
    assert [c["name"] for c in model["classes"]] == list(CLASSES.names)
    assert [tuple(c["color"]) for c in model["classes"]] == list(CLASSES.colors)
    assert model["inference"]["mode"] == "whole" and model["max_bytes"] == MAX_BYTES
    assert "deeplab-v2" in model["crf_presets"] and model["max_pixels"] == MAX_PIXELS


def test_load_200_requests_from_8_clients_all_answered_and_batched(server, segmenter):
    base, served = server
    images = [_image(40, 48, seed=10), _image(32, 64, seed=11)]  # two sizes: two batch groups
    bodies = [_png(image) for image in images]
    expected = [segmenter.predict(image) for image in images]
    before = dict(served.stats)

    def one(i: int):
        start = time.perf_counter()
        status, _, body = _call(f"{base}/predict?format=labels", bodies[i % 2])
        seconds = time.perf_counter() - start
        labels = np.array(Image.open(io.BytesIO(body))) if status == 200 else None
        return i, status, labels, seconds

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert sorted(r[0] for r in results) == list(range(200))  # none lost
    assert [r[1] for r in results] == [200] * 200
    for i, _, labels, _ in results:
        np.testing.assert_array_equal(labels, expected[i % 2])
    assert served.stats["images"] - before["images"] == 200
    assert served.stats["largest_batch"] > 1  # concurrent requests shared forward passes
    batches = served.stats["batches"] - before["batches"]
    latencies = sorted(1000 * r[3] for r in results)
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * len(latencies)) - 1]
    print(f"\nload: 200 requests, 8 clients: p50 {p50:.1f} ms, p95 {p95:.1f} ms, {batches} batches")


PAGE_CHECK = """(async () => {
  await window.seglabReady;
  const bytes = Uint8Array.from(atob("%s"), (c) => c.charCodeAt(0));
  const file = new File([bytes], "photo.png", {type: "image/png"});
  const input = document.getElementById("file");
  const transfer = new DataTransfer();
  transfer.items.add(file);
  input.files = transfer.files;  // what choosing a file in the dialog does
  input.dispatchEvent(new Event("change"));
  const img = document.getElementById("overlay");
  const until = async (ok) => {
    for (let i = 0; i < 300 && !ok(); i++) await new Promise((r) => setTimeout(r, 50));
  };
  await until(() => !img.hidden && img.naturalWidth > 0 && document.querySelector(".share"));
  const shown = [img.naturalWidth, img.naturalHeight];
  const legend = Array.from(document.querySelectorAll(".legend .item"), (e) => e.dataset.class);
  const crf = document.getElementById("crf");
  crf.checked = true;
  crf.dispatchEvent(new Event("change"));
  const status = document.getElementById("status");
  await until(() => status.textContent.includes("CRF"));
  return {shown, legend, status: status.textContent, error: status.className};
})()"""


def test_page_uploads_an_image_and_shows_the_overlay_and_legend(server):
    if find_browser() is None:
        pytest.skip("no chromium installed (make test installs it: apt-get install chromium)")
    base, served = server
    image = base64.b64encode(_png(_image(40, 56, seed=6))).decode()
    before = served.stats["images"]
    problems, page = render(f"{base}/", PAGE_CHECK % image)
    assert problems == []  # no console error or warning, no exception, no failed load
    assert page["shown"] == [56, 40]
    assert page["legend"] == list(CLASSES.names)
    assert page["status"].startswith("56×40") and "CRF deeplab-largefov" in page["status"]
    assert page["error"] == ""
    assert served.stats["images"] - before == 4  # overlay + shares, without and with the CRF
