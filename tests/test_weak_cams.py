"""MDC and FickleNet CAM generators (seglab/weak/), seeds and pseudo masks, against hand-worked
cases; a short training run shows FickleNet's CAMs localise; the `seglab weak` pipeline runs."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglab.weak.cam import normalise_cams, seeds_and_pseudo_mask, upsample_cams
from seglab.weak.ficklenet import FickleNet, expand_windows, window_dropout
from seglab.weak.mdc import MDCNet, fuse_maps


def test_mdc_fusion_is_the_undilated_map_plus_the_mean_of_the_dilated_ones():
    # H0, H1, H2, H3 each light one pixel; H = H0 + (H1 + H2 + H3) / 3 by hand:
    # [[1, 3/3], [6/3, 9/3]] = [[1, 1], [2, 3]]
    h0 = torch.tensor([[1.0, 0], [0, 0]])
    h1 = torch.tensor([[0, 3.0], [0, 0]])
    h2 = torch.tensor([[0, 0], [6.0, 0]])
    h3 = torch.tensor([[0, 0], [0, 9.0]])
    assert torch.equal(fuse_maps([h0, h1, h2, h3]), torch.tensor([[1.0, 1], [2, 3]]))
    assert torch.equal(fuse_maps([h0]), h0)  # dilations (1,): a plain CAM


def test_mdc_cams_fuse_the_relud_block_maps_and_normalise_per_class(monkeypatch):
    model = MDCNet(1, width=4)
    maps = [torch.tensor([[[[2.0, -4], [0, 0]]]]), torch.tensor([[[[0.0, 0], [6, 0]]]])]
    monkeypatch.setattr(model, "forward", lambda images: maps)
    # ReLU: [[2, 0], [0, 0]] + [[0, 0], [6, 0]] / 1 = [[2, 0], [6, 0]]; / max 6
    expected = torch.tensor([[[[1 / 3, 0], [1, 0]]]])
    assert torch.allclose(model.cams(torch.zeros(1, 3, 8, 8)), expected, atol=1e-5)


def test_mdc_has_one_classifier_block_per_dilation_with_that_dilation():
    model = MDCNet(3, width=4)
    assert [block[0].dilation for block in model.blocks] == [(1, 1), (3, 3), (6, 6), (9, 9)]
    outputs = model(torch.zeros(2, 3, 32, 32))
    assert len(outputs) == 4 and all(o.shape == (2, 3, 4, 4) for o in outputs)


def test_expand_windows_lays_each_zero_padded_window_side_by_side():
    x = torch.tensor([[[[1.0, 2], [3, 4]]]])
    expanded = expand_windows(x, 3)
    assert expanded.shape == (1, 1, 6, 6)
    # window around (0, 0) with zero padding: [[0,0,0],[0,1,2],[0,3,4]]
    assert torch.equal(expanded[0, 0, :3, :3], torch.tensor([[0.0, 0, 0], [0, 1, 2], [0, 3, 4]]))
    # window around (1, 1): [[1,2,0],[3,4,0],[0,0,0]]
    assert torch.equal(expanded[0, 0, 3:, 3:], torch.tensor([[1.0, 2, 0], [3, 4, 0], [0, 0, 0]]))


def test_the_k_stride_conv_on_the_expanded_map_is_the_padded_k_by_k_conv():
    torch.manual_seed(0)
    x, weight = torch.randn(2, 3, 5, 4), torch.randn(6, 3, 3, 3)
    direct = F.conv2d(x, weight, padding=1)
    assert torch.allclose(F.conv2d(expand_windows(x, 3), weight, stride=3), direct, atol=1e-5)


@pytest.mark.parametrize("keep_centre", [False, True])
def test_window_dropout_keeps_the_expectation_exactly_over_all_masks(keep_centre):
    """E over every selection of the centre window's 9 (or 8) units, each weighted by
    p^dropped (1-p)^kept, of the stride-3 conv's output = the deterministic padded conv."""
    torch.manual_seed(1)
    p = 0.3
    x, weight = torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3)
    expanded = expand_windows(x, 3)  # (1, 1, 9, 9); location (1, 1) reads rows/cols 3..5
    free = [(r, c) for r in range(3) for c in range(3) if not (keep_centre and (r, c) == (1, 1))]
    expectation = 0.0
    for bits in itertools.product([False, True], repeat=len(free)):
        keep = torch.ones_like(expanded, dtype=torch.bool)
        for (r, c), kept in zip(free, bits, strict=True):
            keep[0, 0, 3 + r, 3 + c] = kept
        kept_count = sum(bits)
        prob = (1 - p) ** kept_count * p ** (len(free) - kept_count)
        out = F.conv2d(window_dropout(expanded, p, 3, keep_centre, keep=keep), weight, stride=3)
        expectation += prob * out[0, 0, 1, 1].item()
    assert expectation == pytest.approx(F.conv2d(x, weight, padding=1)[0, 0, 1, 1].item(), abs=1e-5)


def test_window_dropout_draws_masks_with_the_drop_rate_and_keeps_centres():
    torch.manual_seed(2)
    expanded = torch.ones(1, 4, 30, 30)  # 10 x 10 windows of 3 x 3
    out = window_dropout(expanded, 0.5, 3, keep_centre=True)
    centres = out[:, :, 1::3, 1::3]
    assert torch.equal(centres, torch.ones_like(centres))  # kept, unscaled
    others = out.clone()
    others[:, :, 1::3, 1::3] = float("nan")
    values = others[~others.isnan()]
    assert set(values.unique().tolist()) <= {0.0, 2.0}  # dropped or scaled by 1/(1-p)
    assert (values == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)


def test_ficklenet_aggregates_many_stochastic_maps():
    torch.manual_seed(0)
    model = FickleNet(2, width=4, samples=4, aggregate="max").eval()
    images = torch.randn(1, 3, 32, 32)
    first, second = model.cams(images), model.cams(images)
    assert first.shape == (1, 2, 4, 4) and not torch.equal(first, second)  # stochastic inference
    assert torch.equal(model(images)[0], model(images)[0])  # eval forward: deterministic


def test_seeds_and_pseudo_mask_by_hand():
    cams = np.array([[[0.9, 0.5, 0.1, 0.0]], [[0.2, 0.6, 0.25, 0.05]]])  # classes 1, 2; 1 x 4
    seeds, pseudo = seeds_and_pseudo_mask(cams, [1, 2], fg_threshold=0.55, bg_threshold=0.2)
    # best: (1, .9) (2, .6) (2, .25) (2, .05)
    assert pseudo.tolist() == [[1, 2, 2, 0]]
    assert seeds.tolist() == [[1, 2, 255, 0]]
    seeds, pseudo = seeds_and_pseudo_mask(cams, [1], fg_threshold=0.55, bg_threshold=0.2)
    assert pseudo.tolist() == [[1, 1, 0, 0]] and seeds.tolist() == [[1, 255, 0, 0]]
    seeds, pseudo = seeds_and_pseudo_mask(cams, [], 0.55, 0.2)  # untagged: all background
    assert pseudo.tolist() == seeds.tolist() == [[0, 0, 0, 0]]


def test_normalised_cams_have_max_one_per_class_and_no_negatives():
    cams = torch.tensor([[[[-1.0, 2], [4, 0]], [[0.5, 0], [0, 0]]]])
    out = normalise_cams(cams)
    assert torch.allclose(out[0, 0], torch.tensor([[0.0, 0.5], [1, 0]]), atol=1e-4)
    assert torch.allclose(out[0, 1], torch.tensor([[1.0, 0], [0, 0]]), atol=1e-4)
    assert upsample_cams(out, (4, 4)).amax(dim=(2, 3)).allclose(torch.ones(1, 2), atol=1e-4)


def _squares(n: int, size: int, generator: torch.Generator):
    """Noise images with one 12 x 12 square, red (class 1) or blue (class 2)."""
    images = torch.rand(n, 3, size, size, generator=generator) * 0.2
    tags, boxes = torch.zeros(n, 2), []
    for i in range(n):
        c = int(torch.randint(2, (1,), generator=generator))
        y, x = (int(v) for v in torch.randint(size - 12, (2,), generator=generator))
        images[i, 2 * c, y : y + 12, x : x + 12] = 1.0
        tags[i, c] = 1
        boxes.append((c, y, x))
    return (images - 0.5) / 0.25, tags, boxes


def test_a_short_training_makes_ficklenet_cams_localise_the_tagged_object():
    """Trained on tags alone (100 steps), the tagged class's CAM peaks inside its square far
    more often than chance (the square's area share, 144 / 48^2 = 6.25%) and holds more
    than twice that share of the map's mass."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    images, tags, _ = _squares(64, 48, generator)
    test_images, _, boxes = _squares(32, 48, generator)
    model = FickleNet(2, width=4, stage=1, samples=8)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(100):
        batch = torch.randint(64, (16,))
        loss = model.loss(images[batch], tags[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    cams = upsample_cams(model.cams(test_images), (48, 48))
    peaks, mass, chance = 0, 0.0, 144 / 48**2
    for i, (c, y, x) in enumerate(boxes):
        py, px = divmod(int(cams[i, c].argmax()), 48)
        peaks += y <= py < y + 12 and x <= px < x + 12
        mass += float(cams[i, c, y : y + 12, x : x + 12].sum() / cams[i, c].sum())
    assert peaks / len(boxes) >= 0.6 > 5 * chance
    assert mass / len(boxes) >= 2 * chance


def test_seglab_weak_runs_every_stage_into_the_run_directory(tmp_path, monkeypatch):
    from seglab.cli import main
    from seglab.data.shapes import write_shapes_dataset

    write_shapes_dataset(tmp_path / "data", train=4, val=2, size=32, progress=False, weak=True)
    monkeypatch.chdir(tmp_path)
    args = ["data.root=data", "run_dir=run", "weak.cam.iters=2", "weak.cam.batch_size=2",
            "weak.cam.options.width=4", "train.iters=2", "train.eval_every=2",
            "data.batch_size=2", "model.options.width=4"]  # fmt: skip
    from pathlib import Path

    config = str(Path(__file__).parent.parent / "configs" / "weak_mdc_shapes.yaml")
    assert main(["--quiet", "weak", config, *args]) == 0
    run = tmp_path / "run"
    assert (run / "cam" / "cam.safetensors").is_file()
    assert len(list((run / "pseudo_masks" / "masks").glob("*.png"))) == 4
    assert len(list((run / "pseudo_masks" / "seeds").glob("*.png"))) == 4
    assert (run / "segmentation" / "best.safetensors").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["pseudo_mask_mean_iou_train"] <= 1
    tag_scores = json.loads((run / "cam" / "val_tags.json").read_text())  # the 2 val images
    assert len(tag_scores["f1"]) == 5 and tag_scores["exact_match"] in (0.0, 0.5, 1.0)
    assert summary["val_tag_exact_match"] == tag_scores["exact_match"]
    assert 0 <= summary["val_mean_iou"] <= 1 and not math.isnan(summary["val_mean_iou"])
    # the val masks of the training copy are the true ones, the train masks the pseudo ones
    assert (run / "pseudo_data" / "masks" / "val_00000.png").resolve() == (
        tmp_path / "data" / "masks" / "val_00000.png"
    ).resolve()
    assert (run / "pseudo_data" / "masks" / "train_00000.png").resolve() == (
        run / "pseudo_masks" / "masks" / "train_00000.png"
    ).resolve()


def test_cam_backbone_is_vgg16_cut_after_its_stage_at_the_asked_stride():
    from seglab.weak.cam import CamBackbone

    # width 8: conv3 has 256 * 8 / 64 = 32 channels; output stride 4: pools 1-2 halve, so a
    # 64-pixel image gives a 16x16 map; conv4/conv5 are not built (not computed, not saved)
    backbone = CamBackbone(width=8, output_stride=4, stage=2, batch_norm=True)
    assert (backbone.channels, backbone.stride) == (32, 4)
    assert backbone(torch.zeros(2, 3, 64, 64)).shape == (2, 32, 16, 16)
    names = {name.split(".")[1] for name, _ in backbone.named_parameters()}
    assert names == {"conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3"}
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules()) == 7
    plain = CamBackbone(width=8, output_stride=8, stage=2)
    assert plain(torch.zeros(1, 3, 64, 64)).shape == (1, 32, 8, 8)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())


def test_pooling_of_score_maps_by_hand():
    from seglab.weak.cam import pool_scores

    scores = torch.tensor([[[[0.0, 0.0], [0.0, math.log(5.0)]]]])  # (1, 1, 2, 2)
    assert pool_scores(scores, "gap").item() == pytest.approx(math.log(5.0) / 4)
    assert pool_scores(scores, "gmp").item() == pytest.approx(math.log(5.0))
    # r = 1: log mean exp = log((1 + 1 + 1 + 5) / 4) = log 2
    assert pool_scores(scores, "lse", r=1.0).item() == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError, match="pooling"):
        pool_scores(scores, "median")


def test_the_dense_crf_snaps_a_blurred_cam_to_the_object():
    from seglab.weak.pseudo import crf_pseudo_mask

    # a green 16x16 square on a dark noisy background; class 2's CAM is the square dilated by
    # 4 pixels and blurred (what a stride-4 CAM upsampled looks like): thresholded it
    # overshoots the square, refined by the CRF it follows the square's edges
    rng = np.random.default_rng(0)
    image = rng.integers(0, 30, (40, 40, 3)).astype(np.uint8)
    truth = np.zeros((40, 40), bool)
    truth[12:28, 12:28] = True
    image[truth] = (60, 180, 75)
    from scipy import ndimage

    blob = ndimage.gaussian_filter(ndimage.binary_dilation(truth, iterations=4).astype(float), 2)
    cams = np.zeros((5, 40, 40))
    cams[1] = blob / blob.max()

    def iou(mask):
        return (mask & truth).sum() / (mask | truth).sum()

    _, unrefined = seeds_and_pseudo_mask(cams, [2], 0.5, 0.35)
    refined = crf_pseudo_mask(cams, [2], image, 0.35, "pydensecrf")
    assert set(np.unique(refined)) <= {0, 2}
    assert iou(unrefined == 2) < 0.8 < iou(refined == 2)
    assert not crf_pseudo_mask(cams, [], image, 0.35).any()  # untagged: all background


def test_seglab_weak_names_a_wrong_crf_preset(tmp_path):
    from seglab.errors import SeglabError
    from seglab.weak.pipeline import load_weak_config

    config = str(Path(__file__).parent.parent / "configs" / "weak_cam_shapes.yaml")
    with pytest.raises(SeglabError, match="weak.pseudo.crf"):
        load_weak_config(config, [f"data.root={tmp_path}", "weak.pseudo.crf=fancy"])
    cfg, weak = load_weak_config(config, [f"data.root={tmp_path}"])
    assert weak["cam"]["options"]["dilations"] == [1]  # the plain-CAM baseline


def test_tag_f1_and_exact_match_by_hand():
    from seglab.weak.cam import tag_f1

    predicted = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    tags = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]])
    scores = tag_f1(predicted, tags)
    # class 0: TP 2 (images 0, 3), FP 1 (image 1), FN 1 (image 2): F1 = 4 / (4 + 2)
    # class 1: TP 1, no error: 1; class 2: never predicted nor present: 1 by definition
    assert scores["f1"] == pytest.approx([4 / 6, 1.0, 1.0])
    assert scores["exact_match"] == 0.5  # images 0 and 3


def test_score_tags_reads_the_classifier_logit_sign_of_each_class():
    """A fake generator whose pooled score of class c is +1 on image i iff c == i % 2:
    predicted tags [1, 0], [0, 1], [1, 0] against true [1, 0], [1, 1], [0, 0]."""
    from seglab.weak.pseudo import score_tags

    class Fake(torch.nn.Module):
        pooling, lse_r = "gap", 5.0

        def forward(self, images):  # (N, 1, 2, 2), channel 0 = image index
            index = images[:, 0, 0, 0].long()
            maps = torch.full((len(index), 2, 2, 2), -1.0)
            maps[index % 2 == 0, 0], maps[index % 2 == 1, 1] = 1.0, 1.0
            return [maps, maps * 3]  # two branches: their mean decides

    class Data:
        num_foreground, tags = 2, [[1], [1, 2], []]

        def __len__(self):
            return 3

        def image(self, i):
            return torch.full((1, 2, 2), float(i))

    scores = score_tags(Fake(), Data(), batch_size=2)
    # class 1: TP image 0, FN image 1, FP image 2 -> 2 / 4; class 2: TP image 1 -> 1
    assert scores["f1"] == pytest.approx([0.5, 1.0]) and scores["exact_match"] == 1 / 3
    assert scores["mean_f1"] == pytest.approx(0.75)


def test_train_cam_with_warmup_and_amp_takes_finite_steps_and_leaves_a_plain_layout():
    from seglab.weak.pseudo import train_cam

    class Data(torch.utils.data.Dataset):
        num_foreground = 2

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.randn(3, 16, 16), torch.tensor([i % 2, 1.0 - i % 2])

    torch.manual_seed(0)
    model = MDCNet(2, dilations=(1, 3), width=4, stage=1, batch_norm=True)
    losses = train_cam(model, Data(), 3, 2, 3e-3, warmup_iters=2, amp=True)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    weight = model.blocks[0][0].weight
    assert weight.is_contiguous() and weight.dtype == torch.float32
