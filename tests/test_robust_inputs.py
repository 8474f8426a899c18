"""Files from strangers (issue 13 points 2, 3, 4, 8 and the extra cases): masks at their true bit
depth, EXIF orientation, decoder errors as one line, duplicate class names, 0/255 binary masks,
and one reading of image dtypes shared by Segmenter.predict and dense_crf.

Expected values are written from the file formats' definitions (PNG bit depths, EXIF
orientation 6 = rotate 90 degrees clockwise to display), not from seglab's output."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from seglab.config import DataConfig
from seglab.crf import dense_crf
from seglab.data import FolderDataset, check_dataset, read_classes_file
from seglab.data.folder import read_image, read_mask
from seglab.data.images import MAX_PIXELS_ENV, image_size, set_max_image_pixels
from seglab.data.summary import dataset_summary
from seglab.errors import SeglabError
from seglab.inference import as_image_tensor


def _png(path, width, height, bit_depth, color_type, raw: bytes = b""):
    """A PNG written by hand (PIL writes neither 48-bit RGB nor lying headers)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def _folder(tmp_path, images, masks, classes="background\nforeground\n", names=None):
    """A folder dataset with split `train`: images/masks are {name: PIL image}."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text(classes)
    for name, image in images.items():
        image.save(
            root / "images" / f"{name}.{'jpg' if image.format_hint else 'png'}", **image.save_args
        )
    for name, mask in masks.items():
        mask.save(root / "masks" / f"{name}.png")
    (root / "train.txt").write_text("\n".join(names or images) + "\n")
    return root


def _image(array, jpeg=False, **save_args):
    image = Image.fromarray(np.asarray(array, np.uint8))
    image.format_hint, image.save_args = jpeg, save_args
    return image


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _quadrants(h: int, w: int) -> np.ndarray:
    """(h, w, 3) with four flat 8-aligned colour blocks, so JPEG keeps them nearly exact."""
    image = np.zeros((h, w, 3), np.uint8)
    image[: h // 2, : w // 2] = (250, 10, 10)
    image[: h // 2, w // 2 :] = (10, 250, 10)
    image[h // 2 :, : w // 2] = (10, 10, 250)
    image[h // 2 :, w // 2 :] = (240, 240, 240)
    return image


# --- point 2: masks at their true values, every decoder error one line naming the file -------


def test_16_bit_mask_values_are_true_and_reported_as_stored(tmp_path):
    # 257 = 0x0101 used to wrap to 1 (in range), 300 to 44 (300 - 256).
    for value in (257, 300):
        mask = Image.fromarray(np.array([[0, 1], [value, 255]], np.uint16))
        assert mask.mode == "I;16"
        root = _folder(tmp_path / str(value), {"a": _image(np.zeros((2, 2, 3)))}, {"a": mask})
        with pytest.raises(SeglabError, match=rf"a\.png: label value {value} is outside"):
            check_dataset(FolderDataset(root, "train"), progress=False)


@pytest.mark.parametrize("dtype, suffix", [("<u2", "png"), (">u2", "tiff"), ("<i4", "tiff")])
def test_16_and_32_bit_masks_read_their_ids(tmp_path, dtype, suffix):
    ids = np.array([[0, 1], [2, 255]])
    path = tmp_path / f"m.{suffix}"
    Image.fromarray(ids.astype(dtype)).save(path)  # I;16, I;16B and I
    np.testing.assert_array_equal(read_mask(path), ids)
    assert read_mask(path).dtype == np.uint8


def test_negative_and_float_masks_are_refused_in_one_line(tmp_path):
    Image.fromarray(np.array([[0, -3]], np.int32)).save(tmp_path / "i.tiff")
    with pytest.raises(SeglabError, match=r"i\.tiff: label value -3 is outside"):
        read_mask(tmp_path / "i.tiff")
    Image.fromarray(np.array([[0.0, 1.0]], np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(SeglabError, match=r"f\.tiff: mask mode F holds floating-point"):
        read_mask(tmp_path / "f.tiff")


def test_one_bit_mask_reads_zero_and_one(tmp_path):
    Image.fromarray(np.array([[False, True], [True, False]])).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), [[0, 1], [1, 0]])


def test_masks_with_alpha(tmp_path):
    ids = np.array([[0, 1], [2, 3]], np.uint8)
    Image.fromarray(np.dstack([ids, np.full_like(ids, 255)]), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "la.png"), ids)  # constant alpha: as L
    Image.fromarray(np.dstack([ids, ids * 60]), "LA").save(tmp_path / "vary.png")
    with pytest.raises(SeglabError, match=r"vary\.png: mask mode LA has a varying alpha"):
        read_mask(tmp_path / "vary.png")
    rgba = np.dstack([ids, ids, ids, np.full_like(ids, 255)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    with pytest.raises(SeglabError, match=r"rgba\.png: mask mode RGBA .*channels are equal"):
        read_mask(tmp_path / "rgba.png")


def test_palette_mask_with_transparency_reads_indices(tmp_path):
    mask = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), "P")
    mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (253 * 3))
    mask.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), [[0, 1], [2, 255]])


def test_huge_declared_size_is_one_line_for_masks_and_images(tmp_path):
    bomb = _png(tmp_path / "bomb.png", 100_000, 100_000, 8, 0)
    for read in (read_mask, read_image):
        with pytest.raises(SeglabError, match=r"bomb\.png: .*100000x100000.*max_image_pixels"):
            read(bomb)


def test_pixel_limit_is_an_option_the_user_can_raise(tmp_path, monkeypatch):
    path = tmp_path / "i.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "399")  # 20 x 20 = 400 pixels
    with pytest.raises(SeglabError, match=f"over the limit of 399.*{MAX_PIXELS_ENV}"):
        read_image(path)
    try:
        set_max_image_pixels(400)  # what data.max_image_pixels does; it wins over the env var
        assert read_image(path).shape == (20, 20, 3)
    finally:
        set_max_image_pixels(None)
    assert DataConfig().max_image_pixels is None


def test_truncated_empty_and_missing_files_are_one_line(tmp_path):
    Image.fromarray(np.arange(64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)).save(
        tmp_path / "full.png"
    )
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("cut.png", "empty.png"):
        for read in (read_image, read_mask):
            with pytest.raises(SeglabError, match=rf"{name}: cannot read (image|mask)"):
                read(tmp_path / name)
    with pytest.raises(SeglabError, match="nothing.png: mask file not found"):
        read_mask(tmp_path / "nothing.png")


# --- point 3: the displayed orientation everywhere ----------------------------------------------


def test_exif_orientation_6_is_applied_to_images(tmp_path):
    stored = _quadrants(16, 32)  # stored 32 wide, 16 high
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=_exif(6), quality=95, subsampling=0)
    displayed = np.rot90(stored, k=-1)  # orientation 6: rotate 90 degrees clockwise
    got = read_image(path)
    assert got.shape == (32, 16, 3)
    assert np.abs(got.astype(int) - displayed).max() < 12
    assert image_size(path) == (16, 32)
    np.testing.assert_array_equal(as_image_tensor(path).permute(1, 2, 0).numpy(), got)
    with Image.open(path) as opened:  # a PIL image passed by the user reads the same
        np.testing.assert_array_equal(as_image_tensor(opened).permute(1, 2, 0).numpy(), got)


def test_check_names_the_exif_rotation_when_sizes_differ(tmp_path):
    image = _image(_quadrants(16, 32), jpeg=True, exif=_exif(6), quality=95)
    mask = Image.fromarray(np.zeros((16, 32), np.uint8))  # drawn on the stored pixels
    root = _folder(tmp_path, {"p": image}, {"p": mask})
    dataset = FolderDataset(root, "train")
    with pytest.raises(SeglabError) as error:
        check_dataset(dataset, progress=False)
    message = str(error.value)
    assert "mask is 32x16 but its image is 16x32 as displayed" in message
    assert "EXIF orientation 6 rotates the stored 32x16" in message
    assert "\n" not in message
    assert "16x32 (1)" in dataset_summary(dataset)


# --- point 4: duplicate class names -------------------------------------------------------------


def test_duplicate_class_names_name_the_file_and_lines(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("background #000000\ncar\nroad\ncar #ff0000\n")
    with pytest.raises(SeglabError, match=r"classes\.txt: class name 'car' appears on lines 2, 4"):
        read_classes_file(path)


# --- point 8: 0/255 binary masks; one reading of image dtypes -----------------------------------


def _binary(tmp_path, label_map=None):
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255  # the foreground, as Carvana/ISIC/Kvasir exports save it
    root = _folder(tmp_path, {"a": _image(np.zeros((4, 4, 3)))}, {"a": Image.fromarray(mask)})
    if label_map is not None:
        (root / "label_map.txt").write_text(label_map)
    return FolderDataset(root, "train")


def test_binary_masks_saved_as_0_255_are_refused_before_training(tmp_path):
    with pytest.raises(
        SeglabError,
        match=r"a\.png: .*only 0 and 255.*255 means ignore.*255 1.*"
        r"label_map\.txt",
    ):
        check_dataset(_binary(tmp_path), progress=False)


@pytest.mark.parametrize("line", ["255 1\n", "# binary export\n255 foreground  # white\n"])
def test_label_map_maps_255_to_a_class(tmp_path, line):
    dataset = _binary(tmp_path, line)
    check_dataset(dataset, progress=False)
    expected = np.zeros((4, 4), np.int64)
    expected[1:3, 1:3] = 1
    np.testing.assert_array_equal(dataset[0][1].numpy(), expected)


def test_bad_label_map_line_is_one_line(tmp_path):
    with pytest.raises(SeglabError, match=r"label_map\.txt:1: expected `STORED NEW`"):
        _binary(tmp_path, "255 sky\n")


def _uint8_image():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 6, 7), generator=g, dtype=torch.uint8)


def test_predict_reads_float_0_1_and_uint16_like_uint8():
    image = _uint8_image()
    hwc = image.permute(1, 2, 0).numpy()
    assert torch.equal(as_image_tensor(image.float() / 255), image)
    assert torch.equal(as_image_tensor(hwc.astype(np.uint16) * 257), image)  # 65535 = 255 * 257
    assert torch.equal(as_image_tensor(hwc.astype(np.float64) / 255), image)


@pytest.mark.parametrize(
    "value, message",
    [
        (lambda im: im.float(), "spans 0..255; divide it by 255"),
        (lambda im: (im.float() / 255 - 0.45) / 0.225, "before mean/std normalisation"),
        (lambda im: im.long(), "dtype int64 has no agreed range"),
        (lambda im: im.permute(1, 2, 0).numpy().astype(np.uint16), "maximum is 255"),
    ],
)
def test_predict_and_dense_crf_refuse_the_same_ambiguous_images(value, message):
    image = _uint8_image()
    image[0, 0, 0], image[0, 0, 1] = 0, 255
    with pytest.raises(SeglabError, match=message):
        as_image_tensor(value(image))
    crf_input = value(image)
    if isinstance(crf_input, np.ndarray):
        crf_input = torch.from_numpy(crf_input).permute(2, 0, 1)
    with pytest.raises(SeglabError, match=message):
        dense_crf(torch.full((1, 2, 6, 7), 0.5), crf_input[None])


def test_dense_crf_reads_float_images_as_0_1_like_segmenter():
    g = torch.Generator().manual_seed(1)
    image = _uint8_image()[None]
    probabilities = torch.softmax(torch.randn(1, 3, 6, 7, generator=g), 1)
    expected = dense_crf(probabilities, image, preset="pydensecrf")
    torch.testing.assert_close(
        dense_crf(probabilities, image.float() / 255, "pydensecrf"), expected
    )
    sixteen = image.to(torch.int32).mul(257).to(torch.uint16)
    torch.testing.assert_close(dense_crf(probabilities, sixteen, "pydensecrf"), expected)


# --- the extra cases: what annotation tools and phones produce ----------------------------------


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    got = read_image(tmp_path / "c.jpg")  # C=0 M=Y=255 K=0 is red: R = 255 - C, G = 255 - M, ...
    assert np.abs(got.astype(int) - (255, 0, 0)).max() < 8


def test_icc_profile_is_ignored_stored_values_are_read(tmp_path):
    values = np.array([[[10, 120, 250], [200, 30, 90]]], np.uint8)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    Image.fromarray(values).save(tmp_path / "icc.png", icc_profile=profile)
    np.testing.assert_array_equal(read_image(tmp_path / "icc.png"), values)


def test_16_bit_images_are_scaled_to_8_bit(tmp_path):
    stored = np.array([0, 25700, 65535, 300])  # 25700 = 100 * 257
    expected = np.round(stored * 255 / 65535)  # 0, 100, 255, 1
    Image.fromarray(stored[None].astype(np.uint16)).save(tmp_path / "gray16.png")
    got = read_image(tmp_path / "gray16.png")
    np.testing.assert_array_equal(got[0], np.repeat(expected[:, None], 3, axis=1))
    # 48-bit RGB: PIL hands over the high byte, v // 256: within one step of the scaled value
    row = b"\x00" + b"".join(struct.pack(">HHH", v, v, v) for v in stored)
    got = read_image(_png(tmp_path / "rgb48.png", 4, 1, 16, 2, row))
    assert np.abs(got[0].astype(int) - expected[:, None]).max() <= 1


def test_grayscale_and_palette_images_become_rgb(tmp_path):
    Image.fromarray(np.array([[0, 128]], np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_image(tmp_path / "l.png"), [[[0] * 3, [128] * 3]])
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 250, 20, 30] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=0)  # transparency dropped, colour kept
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), [[[0, 0, 0], [250, 20, 30]]])


def test_symlinks_odd_names_and_a_jpeg_named_png(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    name = "IMG 0001 Müller ü"  # spaces and non-ASCII, as phones and people name files
    Image.fromarray(_quadrants(16, 16)).save(store / "photo.jpg", quality=95, subsampling=0)
    Image.fromarray(np.eye(16, dtype=np.uint8)).save(store / "mask.png")
    root = _folder(tmp_path, {}, {}, names=[name])
    (root / "images" / f"{name}.png").symlink_to(store / "photo.jpg")  # a JPEG named .png
    (root / "masks" / f"{name}.png").symlink_to(store / "mask.png")
    dataset = FolderDataset(root, "train")
    check_dataset(dataset, progress=False)
    image, mask = dataset.load(0)
    assert np.abs(image.astype(int) - _quadrants(16, 16)).max() < 12
    np.testing.assert_array_equal(mask, np.eye(16))
    (store / "mask.png").write_bytes(b"")
    with pytest.raises(SeglabError, match=f"{name}.png: cannot read mask"):
        dataset.check(0)
