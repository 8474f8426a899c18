"""ACNet and the RGB-D data path: parameters by hand, depth through transforms and loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.data.depth import DEPTH_MEAN, DEPTH_STD, read_depth, write_depth
from seglab.errors import SeglabError
from seglab.models import count_parameters, create_model

SMALL = {"width": 8, "layers": (1, 1, 1, 1), "decoder_blocks": (1, 1, 1, 1, 1)}


def trans_block(i: int, p: int, upsample: bool) -> int:
    """TransBasicBlock: 3x3 i->i + BN, 3x3 (transposed when upsampling) i->p + BN, shortcut
    (2x2 transposed i->p + BN when upsampling, 1x1 + BN when i != p)."""
    shortcut = 4 * i * p + 2 * p if upsample else (i * p + 2 * p if i != p else 0)
    return 9 * i * i + 2 * i + 9 * i * p + 2 * p + shortcut


def test_paper_configuration_parameters_derived_by_hand():
    k = 40  # NYUv2's 40 classes
    trunk = 25_557_032 - (2048 * 1000 + 1000)  # torchvision resnet50 without fc
    depth_trunk = trunk - 64 * 3 * 49 + 64 * 1 * 49  # conv1 takes one channel
    merge_trunk = trunk - 64 * 3 * 49 - 2 * 64  # no conv1, no bn1
    acm = sum(c * c + c for c in (64, 256, 512, 1024, 2048))  # 1x1 conv with bias, per branch
    agant = sum(i * o + 2 * o for i, o in ((64, 64), (256, 64), (512, 128), (1024, 256),
                                           (2048, 512)))  # fmt: skip
    stages = 0
    for inplanes, planes, blocks in ((512, 256, 6), (256, 128, 4), (128, 64, 3), (64, 64, 3)):
        stages += (blocks - 1) * trans_block(inplanes, inplanes, False)
        stages += trans_block(inplanes, planes, True)
    final = 3 * trans_block(64, 64, False) + (64 * k * 4 + k)  # final_conv + final_deconv
    aux = sum(c * k + k for c in (256, 128, 64, 64))
    expected = trunk + depth_trunk + merge_trunk + 2 * acm + agant + stages + final + aux
    with torch.device("meta"):
        model = create_model("acnet", num_classes=k)
    assert count_parameters(model) == expected == 116_628_168


def test_training_outputs_are_five_scales_and_eval_one_map():
    torch.manual_seed(0)
    model = create_model("acnet", 3, 4, **SMALL)
    out = model.train()(torch.randn(2, 4, 64, 96))
    assert out["out"].shape == (2, 3, 64, 96)
    assert [a.shape[-2:] for a in out["aux"]] == [(32, 48), (16, 24), (8, 12), (4, 6)]
    assert model.aux_weights == (1.0, 1.0, 1.0, 1.0)
    assert model.eval()(torch.randn(1, 4, 33, 47)).shape == (1, 3, 33, 47)


def test_depth_reaches_the_output_and_rgb_does_too():
    torch.manual_seed(0)
    model = create_model("acnet", 3, 4, **SMALL).eval()
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        base = model(x)
        for channel in (0, 3):
            changed = x.clone()
            changed[:, channel] += 1.0
            assert not torch.allclose(model(changed), base)


def test_pretrained_loads_resnet50_as_the_official_code(tmp_path):
    from torchvision.models import resnet50

    state = resnet50().state_dict()
    torch.save(state, tmp_path / "r50.pth")
    model = create_model("acnet", 40, 4, pretrained=str(tmp_path / "r50.pth"))
    assert torch.equal(model.rgb.conv1.weight, state["conv1.weight"])
    assert torch.allclose(model.depth.conv1.weight, state["conv1.weight"].mean(1, keepdim=True))
    for branch in (model.rgb, model.depth, model.merge):
        assert torch.equal(branch.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])


def test_depth_png_round_trip_in_millimetres(tmp_path):
    metres = np.array([[0.0, 1.2345], [4.0, 65.535]], np.float32)
    write_depth(metres, tmp_path / "d.png", 0.001)
    back = read_depth(tmp_path / "d.png", 0.001)
    assert np.allclose(back, [[0.0, 1.234], [4.0, 65.535]], atol=1e-3)  # 1234.5 rounds to even


def test_transforms_move_depth_with_the_mask_nearest_and_pad_it_with_zero():
    from seglab.data.transforms import train_transform

    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    mask = torch.zeros(8, 8, dtype=torch.int64)
    depth = torch.full((8, 8), 1.0)
    mask[:, 4:], depth[:, 4:] = 1, 3.0  # right half: class 1 at 3 m
    torch.manual_seed(0)
    x, y = train_transform([12, 12], [1.3, 1.7], True, {"rotate": 20})(image, mask, depth)
    assert x.shape == (4, 12, 12) and y.shape == (12, 12)
    metres = x[3] * DEPTH_STD + DEPTH_MEAN
    values = {round(v, 3) for v in metres.unique().tolist()}
    assert values <= {0.0, 1.0, 3.0}, values  # nearest: no blended depths; 0 where uncovered
    # Depth follows the labels: class 1 is at 3 m, class 0 at 1 m wherever both are known.
    known = (y != 255) & (metres > 0)
    assert torch.equal(metres[known] > 2, y[known] == 1)


def test_shapes_with_depth_separates_near_and_far_squares_by_depth_only(tmp_path):
    from seglab.data import FolderDataset
    from seglab.data.shapes import FAR_SQUARE, NEAR_SQUARE, render_scene, write_shapes_dataset

    root = write_shapes_dataset(tmp_path / "rgbd", 12, 2, size=48, progress=False, depth=True)
    data = FolderDataset(root, "train")
    assert data.inputs == ("image", "depth") and data.num_classes == 7
    near, far = [], []
    for i in range(len(data)):
        labels, metres = data.load(i)[1], data.load_depth(i)
        near += metres[labels == NEAR_SQUARE].tolist()
        far += metres[labels == FAR_SQUARE].tolist()
    assert near and far and max(near) < 2.1 and min(far) > 2.9
    # The images are those of the RGB set: depth draws come after every RGB draw.
    rgb = render_scene(np.random.default_rng([0, 0, 3]), 48)[0]
    rgbd = render_scene(np.random.default_rng([0, 0, 3]), 48, depth=True)[0]
    assert np.array_equal(rgb, rgbd)
    x, _ = FolderDataset(root, "train", transform=None)[0]
    assert x.shape == (4, 48, 48)


def test_depth_model_on_an_rgb_dataset_is_one_line_before_training(shapes_root, tiny_config):
    from seglab.engine.trainer import train

    cfg = tiny_config("model.name=acnet", "model.options={width: 8, layers: [1, 1, 1, 1]}")
    with pytest.raises(SeglabError, match="takes image \\+ depth but .* has image; add its depth"):
        train(cfg, progress=False)


def test_segmenter_takes_image_and_depth():
    from seglab.inference import Segmenter

    torch.manual_seed(0)
    model = create_model("acnet", 3, 4, **SMALL)
    segmenter = Segmenter(model)
    image = np.zeros((20, 28, 3), np.uint8)
    labels = segmenter.predict(image, depth=np.full((20, 28), 2.0, np.float32))
    assert labels.shape == (20, 28)
    with pytest.raises(SeglabError, match="needs one depth map"):
        segmenter.predict(image)
    # The same forward by hand: normalised image, normalised depth as channel 4.
    from seglab.data.transforms import normalize_image

    x = torch.cat([normalize_image(torch.zeros(1, 3, 20, 28, dtype=torch.uint8)),
                   torch.full((1, 1, 20, 28), (2.0 - DEPTH_MEAN) / DEPTH_STD)], 1)  # fmt: skip
    with torch.no_grad():
        assert np.array_equal(model.eval()(x).argmax(1)[0].numpy(), labels)


def test_short_rgbd_training_learns(tmp_path):
    from short_training import short_training_scores

    from seglab.data.shapes import write_shapes_dataset

    root = write_shapes_dataset(tmp_path / "rgbd", 24, 4, size=32, progress=False, depth=True)
    scores = short_training_scores(
        root, tmp_path / "run", "acnet",
        "{width: 8, layers: [1, 1, 1, 1], decoder_blocks: [1, 1, 1, 1, 1]}", 60,
    )  # fmt: skip
    assert scores["pixel_accuracy"] > 0.5, scores


def test_predict_files_reads_each_images_depth_from_the_folder_layout_or_depth_dir(tmp_path):
    import shutil

    from seglab.data.folder import read_image
    from seglab.data.shapes import write_shapes_dataset
    from seglab.inference import Segmenter
    from seglab.predict import predict_files
    from seglab.weights import save_weights

    torch.manual_seed(0)
    root = write_shapes_dataset(tmp_path / "rgbd", 2, 2, size=32, progress=False, depth=True)
    weights = save_weights(create_model("acnet", 7, 4, **SMALL), tmp_path / "acnet.safetensors")
    image_path = root / "images" / "val_00000.png"
    result = predict_files(weights, [image_path], tmp_path / "out", progress=False)
    assert not result.failed and len(result.written) == 1
    # the same labels by hand: the depth PNG in millimetres (depth.txt says 0.001), in metres
    metres = read_depth(root / "depth" / "val_00000.png", 0.001)
    expected = Segmenter.from_checkpoint(weights).predict(read_image(image_path), depth=metres)
    assert np.array_equal(np.asarray(Image.open(result.written[0])), expected)
    # an image outside the layout fails alone, naming the depth file it looked for and the fix
    lone = tmp_path / "lone" / "photo.png"
    lone.parent.mkdir()
    shutil.copy(image_path, lone)
    result = predict_files(weights, [lone, image_path], tmp_path / "out2", progress=False)
    assert len(result.written) == 1 and len(result.failed) == 1
    assert (
        "photo.png: depth file missing; give the depth maps' folder with --depth DIR"
        in (result.failed[0][1])
    )
    shutil.copy(root / "depth" / "val_00000.png", root / "depth" / "photo.png")
    result = predict_files(weights, [lone], tmp_path / "out3", progress=False, depth=root / "depth")
    assert not result.failed and np.array_equal(np.asarray(Image.open(result.written[0])), expected)
    rgb = save_weights(create_model("unet", 6, 3, width=4, depth=2), tmp_path / "unet.safetensors")
    with pytest.raises(SeglabError, match="is an RGB model; it takes no depth"):
        predict_files(rgb, [image_path], tmp_path / "out4", progress=False, depth=root / "depth")
