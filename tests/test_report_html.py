"""Results to look at: report.html rendered in a real headless browser, its numbers against
metrics.json, the worst images first; overlays/ the same picture in eval and predict, and
readable with a black class colour on a dark image."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from browser import find_browser, render
from PIL import Image

from seglab.data.folder import ClassInfo
from seglab.engine.report import overlay, write_report
from seglab.engine.trainer import train

PAGE_CONTENT = """(() => {
  const text = (selector) => Array.from(document.querySelectorAll(selector), (e) => [
    e.dataset.metric || `${e.dataset.class}/${e.dataset.column}`, e.textContent.trim()]);
  return {
    images: Array.from(document.images, (img) => img.complete && img.naturalWidth > 0),
    summary: Object.fromEntries(text("td[data-metric]")),
    classes: Object.fromEntries(text("td[data-class]")),
    order: Array.from(document.querySelectorAll("figure[data-image]"), (f) => f.dataset.image),
    legend: Array.from(document.querySelectorAll(".legend .item"), (e) => e.textContent),
    width: document.body.scrollWidth,
  };
})()"""


def _shown(value) -> str:
    """How the page must show a score: % with two decimals, n/a where undefined."""
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _image_miou(truth: np.ndarray, prediction: np.ndarray, k: int) -> float:
    """Mean over the classes present in truth or prediction of |P & T| / |P | T| (labelled)."""
    labelled = truth != 255
    scores = []
    for c in range(k):
        p, t = (prediction == c) & labelled, (truth == c) & labelled
        if (p | t).any():
            scores.append((p & t).sum() / (p | t).sum())
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, shapes_root):
    from seglab.config import load_config
    from seglab.engine.evaluate_run import evaluate_checkpoint

    run = tmp_path_factory.mktemp("report") / "run"
    cfg = load_config(
        None,
        [
            f"data.root={shapes_root}",
            f"run_dir={run}",
            "model.name=unet",
            "model.options={width: 4, depth: 2, padding: same}",
            "data.batch_size=4",
            "data.crop_size=[24,24]",
            "train.iters=4",
            "train.eval_every=2",
        ],
    )
    train(cfg, progress=False)
    metrics, report = evaluate_checkpoint(run, crf="deeplab-v2", num_overlays=5, progress=False)
    return run, report.parent


def test_report_html_renders_in_a_browser_with_the_numbers_of_metrics_json(evaluated):
    if find_browser() is None:
        pytest.skip("no chromium installed (make test installs it: apt-get install chromium)")
    run, report = evaluated
    problems, page = render(report / "report.html", PAGE_CONTENT)
    assert problems == []  # no console error or warning, no exception, no failed load
    # confusion matrix, curves, five images: all embedded, all decoded by the browser
    assert len(page["images"]) == 7 and all(page["images"])
    metrics = json.loads((report / "metrics.json").read_text())
    for key in ("mean_iou", "pixel_accuracy", "mean_accuracy", "fw_iou", "mean_dice"):
        assert page["summary"][key] == _shown(metrics[key]), key
    assert page["summary"]["crf.mean_iou"] == _shown(metrics["crf"]["mean_iou"])
    matrix = np.array(metrics["confusion_matrix"])
    for i in range(len(metrics["classes"])):
        for column in ("iou", "accuracy", "dice"):
            assert page["classes"][f"{i}/{column}"] == _shown(metrics[column][i])
        assert page["classes"][f"{i}/crf.iou"] == _shown(metrics["crf"]["iou"][i])
        assert page["classes"][f"{i}/pixels"] == str(int(matrix[i].sum()))
    assert page["legend"] == metrics["classes"]
    assert not list(report.glob("*.png.*")) and (report / "report.md").is_file()


def test_report_shows_the_worst_images_first_with_and_without_crf(evaluated, shapes_root):
    from seglab.data import build_dataset
    from seglab.data.transforms import eval_transform
    from seglab.weights import load_weights

    run, report = evaluated
    model, _ = load_weights(run / "best.safetensors")
    model.eval()
    val = build_dataset("folder", shapes_root, "val", eval_transform())
    scores = {}
    with torch.no_grad():
        for index in range(len(val)):
            image, mask = val[index]
            prediction = model(image[None]).argmax(1)[0].numpy()
            scores[val.names[index]] = _image_miou(mask.numpy(), prediction, 6)
    worst = sorted(scores, key=lambda name: scores[name])[:5]  # stable: ties keep file order
    page = (report / "report.html").read_text()
    positions = [page.index(f'data-image="{name}"') for name in worst]
    assert positions == sorted(positions)
    for name in worst:
        assert f"{name}: image mIoU {_shown(scores[name])}, after the CRF " in page
        strip = Image.open(report / "comparisons" / f"{name}.png")
        assert strip.size == (4 * 32 + 3 * 4, 32)  # image | truth | prediction | after CRF
    assert sorted(p.stem for p in (report / "overlays").glob("*.png")) == sorted(worst)


def test_eval_and_predict_overlays_are_the_same_picture(evaluated, shapes_root, tmp_path):
    from seglab.predict import predict_files

    run, report = evaluated
    names = sorted(p.stem for p in (report / "overlays").glob("*.png"))
    images = [shapes_root / "images" / f"{name}.png" for name in names]
    predict_files(run, images, tmp_path / "out", progress=False)
    for name in names:
        from_eval = np.asarray(Image.open(report / "overlays" / f"{name}.png"))
        from_predict = np.asarray(Image.open(tmp_path / "out" / "overlays" / f"{name}.png"))
        assert np.array_equal(from_eval, from_predict), name


def test_a_black_class_on_a_dark_image_is_outlined_in_white():
    image = np.full((6, 6, 3), 10, np.uint8)  # a dark photo
    labels = np.zeros((6, 6), np.uint8)
    labels[2:5, 1:4] = 1  # a 3x3 square of class 1, coloured black
    colors = [(0, 200, 0), (0, 0, 0)]
    picture = overlay(image, labels, colors, alpha=0.5)
    # Hand-computed: inside a region (no 4-neighbour of another class) the blend
    # 0.5 * 10 + 0.5 * colour; on the square's 8 edge pixels white (black is too dark to
    # show); on the background's edge pixels its own colour, opaque.
    assert tuple(picture[3, 2]) == (5, 5, 5)  # the square's centre
    assert tuple(picture[0, 5]) == (5, 105, 5)  # background far from the square
    for y, x in [(2, 1), (2, 2), (2, 3), (3, 1), (3, 3), (4, 1), (4, 2), (4, 3)]:
        assert tuple(picture[y, x]) == (255, 255, 255)
    for y, x in [(1, 1), (3, 0), (5, 3), (3, 4)]:  # just outside the square
        assert tuple(picture[y, x]) == (0, 200, 0)


def test_report_without_a_browser_still_writes_a_self_contained_page(tmp_path):
    classes = ClassInfo(["bg", "fg"], [(0, 0, 0), (255, 0, 0)])
    metrics = {
        "mean_iou": 0.5,
        "pixel_accuracy": 0.75,
        "mean_accuracy": float("nan"),
        "fw_iou": 0.6,
        "mean_dice": 0.625,
        "iou": [0.5, float("nan")],
        "accuracy": [1.0, float("nan")],
        "dice": [0.625, float("nan")],
    }
    image = np.zeros((4, 4, 3), np.uint8)
    truth = np.zeros((4, 4), np.uint8)
    write_report(
        tmp_path, metrics, np.array([[3, 1], [0, 0]]), classes, {}, [("a", image, truth, truth)]
    )
    page = (tmp_path / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page and 'src="overlays' not in page
    assert '<td data-metric="mean_accuracy">n/a</td>' in page
    assert '<td data-class="0" data-column="pixels">4</td>' in page
    assert "(fg) have no IoU" in page
