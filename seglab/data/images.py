"""Reading image and mask files from strangers (phones, annotation tools), and the one meaning of
an image array's dtype.

Every image file seglab reads goes through `read_rgb` (or `image_size` for headers), every mask
through `read_label_values`; both apply the EXIF orientation (ImageOps.exif_transpose), so
pixels are what a viewer displays, and turn any decoder failure into one SeglabError line
naming the file. What is done with each kind of file:

    images  RGB: as stored. L, 1, P, LA, PA, RGBA, CMYK, YCbCr: PIL's convert("RGB") (alpha
            dropped, not composited; CMYK inverted as PIL reads Adobe JPEGs). 16-bit gray (I;16*,
            I) scaled to 8 bits (round(v * 255 / 65535)); 48-bit RGB PNGs are given 8-bit by PIL
            (the high byte). F (float) refused. ICC profiles are ignored: the stored values are
            taken as sRGB, so training and prediction see the same numbers whatever the profile.
    masks   true integer values: 1 (0/1), L, P (the palette index; transparency ignored), I;16,
            I;16L, I;16B, I (32-bit). LA and PA with a constant alpha are read as L and P. F,
            RGB, RGBA, CMYK and varying alpha are refused (RGB stays refused even when gray:
            a later colour-coded reader gives RGB masks their meaning from classes.txt).

The decompression-bomb guard: a file declaring more than `max_image_pixels()` pixels is refused
before it is decoded. The limit is DEFAULT_MAX_IMAGE_PIXELS, or the environment variable
SEGLAB_MAX_IMAGE_PIXELS, or what `set_max_image_pixels` (config key data.max_image_pixels) set.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from seglab.errors import SeglabError

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
"""PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS): nothing PIL reads by default is refused."""

MAX_PIXELS_ENV = "SEGLAB_MAX_IMAGE_PIXELS"
ORIENTATION_TAG = 0x0112
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # the EXIF orientations that rotate by 90 degrees
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_configured_max_pixels: int | None = None


def set_max_image_pixels(limit: int | None) -> None:
    """Set the pixel limit for this process (None: back to the environment or the default)."""
    global _configured_max_pixels
    if limit is not None and limit < 1:
        raise SeglabError(f"data.max_image_pixels must be a positive pixel count, got {limit}")
    _configured_max_pixels = limit


def max_image_pixels() -> int:
    """The decompression-bomb limit in pixels (set_max_image_pixels, then the env var, then
    DEFAULT_MAX_IMAGE_PIXELS)."""
    if _configured_max_pixels is not None:
        return _configured_max_pixels
    text = os.environ.get(MAX_PIXELS_ENV)
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise SeglabError(f"{MAX_PIXELS_ENV}={text!r} is not a whole number of pixels") from None


class ImageTooLarge(SeglabError):
    """An image that declares more pixels than max_image_pixels() (an HTTP server answers 413)."""


def _decode(
    path: str | Path | io.BytesIO,
    what: str,
    read: Callable[[Image.Image], object],
    name: str | None = None,
):
    """Open `path` (or bytes in memory, called `name` in messages), check its declared size, and
    run `read` on it; any failure is one line."""
    source = path if isinstance(path, io.BytesIO) else Path(path)
    path = name or source
    limit = max_image_pixels()
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # seglab's own check below, with its message and its limit
    try:
        with warnings.catch_warnings(), Image.open(source) as image:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = image.size
            if width * height > limit:
                raise ImageTooLarge(
                    f"{path}: {what} declares {width}x{height} = {width * height} pixels, over "
                    f"the limit of {limit} (a guard against decompression bombs); if the file "
                    f"is trusted raise data.max_image_pixels or {MAX_PIXELS_ENV}"
                )
            return read(image)
    except SeglabError:
        raise
    except FileNotFoundError:
        raise SeglabError(f"{path}: {what} file not found") from None
    except Exception as error:  # decoders of untrusted files raise anything: name the file
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        reason = reason.replace(f" {source!r}", "")  # PIL names a BytesIO by its repr
        raise SeglabError(
            f"{path}: cannot read {what} ({reason}); replace the file or drop it from the split"
        ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ORIENTATION_TAG, 1))
    except (TypeError, ValueError):
        return 1


def displayed(image: Image.Image) -> Image.Image:
    """`image` as a viewer shows it (its EXIF orientation applied); itself if it has none."""
    return ImageOps.exif_transpose(image) if _orientation(image) not in (0, 1) else image


def rgb_array(image: Image.Image, path: str | Path = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PIL image in its displayed orientation (see the module doc)."""
    image = displayed(image)
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        raise SeglabError(
            f"{path}: image mode F holds floating-point values; save it as an 8-bit RGB image"
        )
    return np.array(image.convert("RGB"))


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, as displayed; a SeglabError names the file."""
    return _decode(path, "image", lambda image: rgb_array(image, path))


def read_rgb_bytes(data: bytes, name: str = "upload") -> np.ndarray:
    """read_rgb for an image file's bytes in memory (an HTTP upload); messages name `name`."""
    return _decode(io.BytesIO(data), "image", lambda image: rgb_array(image, name), name)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed, from the file's header only."""

    def size(image: Image.Image) -> tuple[int, int]:
        w, h = image.size
        return (h, w) if _orientation(image) in SWAPPING_ORIENTATIONS else (w, h)

    return _decode(path, "image", size)


def stored_orientation(path: str | Path) -> tuple[int, tuple[int, int]]:
    """(EXIF orientation, stored (width, height)) of an image file, from its header."""
    return _decode(path, "image", lambda image: (_orientation(image), image.size))


def _label_values(image: Image.Image, path: Path) -> np.ndarray:
    image = displayed(image)
    mode = image.mode
    if mode in ("LA", "PA"):
        pixels = np.array(image)
        alpha = pixels[..., 1]
        if alpha.size and alpha.min() != alpha.max():
            raise SeglabError(
                f"{path}: mask mode {mode} has a varying alpha channel ({alpha.min()}..."
                f"{alpha.max()}); seglab does not guess what transparency means: save the label "
                "ids as an 8-bit grayscale or palette PNG without alpha"
            )
        return pixels[..., 0]
    if mode in ("1", "L", "P") or mode in SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.int64 if mode in SIXTEEN_BIT_MODES else np.uint8)
    if mode == "F":
        raise SeglabError(
            f"{path}: mask mode F holds floating-point values, not label ids; save the ids as "
            "an 8-bit grayscale, palette or 16-bit PNG"
        )
    hint = ""
    if mode in ("RGB", "RGBA"):
        pixels = np.array(image)
        if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
            hint = " (its channels are equal: it is gray saved as colour)"
    raise SeglabError(
        f"{path}: mask mode {mode} holds colours, not label ids{hint}; save it as a palette or "
        "8-bit grayscale PNG whose pixel values are class ids"
    )


def read_label_values(path: str | Path) -> np.ndarray:
    """(H, W) integer mask values as stored (uint8, or int64 for 16/32-bit masks), displayed
    orientation; a SeglabError names the file for a mode that holds no label ids."""
    return _decode(path, "mask", lambda image: _label_values(image, Path(path)))


def _refuse_dtype(what: str, dtype) -> SeglabError:
    name = str(dtype).replace("torch.", "")
    return SeglabError(
        f"{what}: image dtype {name} has no agreed range; pass uint8 (0..255), float (0..1) "
        "or uint16 (0..65535)"
    )


def rgb_uint8(image, what: str = "image"):
    """The one reading of an image array's values, shared by Segmenter.predict and dense_crf.

    uint8 is 0..255 as is; float is 0..1 (an overshoot of one 8-bit step, e.g. from
    resampling, is clipped); uint16 is 16-bit 0..65535, scaled by 255 / 65535. Returns uint8 of
    the same shape, as a numpy array for a numpy array, else a tensor on the same device.
    Refuses in one line: other dtypes (bool, int*, ...), NaN, a float outside 0..1 (0..255
    floats and mean/std-normalised images would be misread), and a uint16 whose maximum is
    1..255 (8-bit values in a 16-bit array: ambiguous).
    """
    if isinstance(image, np.ndarray):
        if image.dtype.kind != "f" and image.dtype not in (np.uint8, np.uint16):
            raise _refuse_dtype(what, image.dtype)
        cast = np.int32 if image.dtype == np.uint16 else None  # torch reduces int32, not uint16
        tensor = torch.from_numpy(np.require(image, cast, ["C_CONTIGUOUS", "WRITEABLE"]))
        return rgb_uint8_tensor(tensor, what, sixteen=image.dtype == np.uint16).numpy()
    return rgb_uint8_tensor(image, what, sixteen=image.dtype == torch.uint16)


def rgb_uint8_tensor(values: torch.Tensor, what: str, sixteen: bool) -> torch.Tensor:
    """rgb_uint8 for a tensor; `sixteen`: its values are 16-bit (a uint16 source)."""
    if values.dtype == torch.uint8:
        return values
    if not (sixteen or values.is_floating_point()):
        raise _refuse_dtype(what, values.dtype)
    if values.numel() == 0:
        return values.to(torch.uint8)
    if sixteen:
        values = values.to(torch.int32)
        top = int(values.max())
        if 0 < top <= 255:
            raise SeglabError(
                f"{what}: a uint16 image is read as 16-bit (0..65535) but this one's maximum is "
                f"{top}; if it holds 8-bit values cast it to uint8"
            )
        return ((values * 255 + 32767) // 65535).to(torch.uint8)
    low, high = float(values.min()), float(values.max())
    tolerance = 1 / 255
    if not (low >= -tolerance and high <= 1 + tolerance):  # NaN fails both comparisons
        fix = (
            "divide it by 255" if low >= 0 else "pass the image from before mean/std normalisation"
        )
        raise SeglabError(
            f"{what}: float images are read as RGB in 0..1 but this one spans "
            f"{low:.4g}..{high:.4g}; {fix}, or pass uint8 (0..255)"
        )
    return (values.float().clamp(0, 1) * 255).round().to(torch.uint8)
