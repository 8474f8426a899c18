"""The boundary F-score on the evaluation device (batch_boundary_f) against the distance-
transform reference, and in `seglab eval`'s metrics and report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seglab.boundary_metrics import batch_boundary_f, image_boundary_f
from seglab.data.shapes import write_shapes_dataset
from seglab.engine.evaluate_run import evaluate_checkpoint
from seglab.models import create_model
from seglab.weights import save_weights


@pytest.mark.parametrize("tolerance", [0, 1, 1.5, 2, 3])
def test_batched_boundary_f_equals_the_distance_transform_reference(tolerance):
    rng = np.random.default_rng(0)
    # blocky random maps (borders of every shape), a few ignored target pixels, 4 classes
    target = np.kron(rng.integers(0, 4, (4, 3, 4)), np.ones((1, 3, 3), np.int64))
    prediction = np.kron(rng.integers(0, 4, (4, 3, 4)), np.ones((1, 3, 3), np.int64))
    prediction[0] = np.roll(target[0], 1, axis=1)  # close to the truth
    target[1, 2:4, 5] = 255  # ignored pixels: no border runs through them unpredicted
    prediction[2] = 0  # no border where the truth has some: a low score
    target[3], prediction[3] = 1, 1  # no border in either map: NaN, left out of the mean
    scores = batch_boundary_f(torch.as_tensor(prediction), torch.as_tensor(target), 4, tolerance)
    pairs = zip(prediction, target, strict=True)
    expected = [image_boundary_f(p, t, 4, tolerance) for p, t in pairs]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9)
    assert np.isnan(expected[3]) and expected[2] < expected[0] <= 1


def test_eval_reports_boundary_f_with_its_tolerance(tmp_path):
    root = write_shapes_dataset(tmp_path / "data", train=2, val=3, size=24, progress=False)
    torch.manual_seed(0)
    model = create_model("unet", 6, 3, width=4, depth=1, padding="same")
    weights = tmp_path / "w.safetensors"
    save_weights(model, weights)
    metrics, report = evaluate_checkpoint(
        weights,
        root,
        "val",
        tmp_path / "report",
        progress=False,
        variant="eager",
        boundary_tolerance=1.0,
    )
    # independently: the model's argmax on each val image, BF by the distance transform
    from seglab.data.folder import FolderDataset
    from seglab.data.transforms import eval_transform

    model.eval()
    dataset = FolderDataset(root, "val", eval_transform())
    scores = []
    for i in range(len(dataset)):
        image, mask = dataset[i]
        with torch.no_grad():
            predicted = model(image[None]).argmax(1)[0].numpy()
        score = image_boundary_f(predicted, mask.numpy(), 6, 1.0)
        scores += [] if np.isnan(score) else [score]
    assert metrics["boundary_f"] == pytest.approx(np.mean(scores), rel=1e-6)
    assert metrics["boundary_tolerance_px"] == 1.0
    text = report.read_text()
    assert f"| boundary F (tolerance 1 px) | {100 * metrics['boundary_f']:.2f} |" in text
    assert 'data-metric="boundary_f"' in (report.parent / "report.html").read_text()
