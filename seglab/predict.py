"""Label image files with a trained run: what `seglab predict` calls, usable from Python.

Each image gets OUT/labels/NAME.png (palette label ids, or Cityscapes labelIds) and
OUT/overlays/NAME.png (the labels blended over the image); images found in a folder keep their
sub-folders. An image that cannot be read (or labelled: too small for the model, out of memory)
is skipped and reported; every other image is labelled.
Each file is written through a temporary name and a rename, and a failed image writes nothing.
An RGB-D model reads each image's depth as the folder layout keeps it (seglab/data/depth.py):
IMAGES/../depth/NAME.png with its scale in IMAGES/../depth.txt, or from the folder `depth`
names (its depth.txt, or the one beside it); a missing depth file fails that image only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seglab.config import InferenceConfig
from seglab.errors import SeglabError, first_line


@dataclass
class Predictions:
    """What predict_files did: the label maps written and the images it could not label."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (image, one-line reason)
    results: Path | None = None  # instance weights: the COCO results JSON (written: overlays)
    variant: str = ""  # how the model ran (seglab/fast_inference.py)


def collect_images(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Image files and folders (searched recursively) -> [(image, output name without suffix)].

    The output name is the file's stem, under its sub-folder for images found in a folder; two
    inputs that would write the same output are a SeglabError naming both.
    """
    from seglab.data.folder import IMAGE_SUFFIXES

    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(p, p.relative_to(path).with_suffix("")) for p in files if p.is_file()]
        elif path.is_file():
            found.append((path, Path(path.stem)))
        else:
            raise SeglabError(f"{path}: no such image file or folder")
    if not found:
        raise SeglabError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(inputs)}")
    seen: dict[Path, Path] = {}
    for image, name in found:
        if name in seen and seen[name] != image:
            raise SeglabError(
                f"{seen[name]} and {image} would both be written as {name}.png; "
                "predict them into separate --out folders"
            )
        seen[name] = image
    return list(dict.fromkeys(found))  # the same file named twice is labelled once


def check_cityscapes_classes(weights: Path, num_classes: int, classes) -> None:
    """Cityscapes labelIds exist only for a model of the 19 Cityscapes train ids, in order."""
    from seglab.data.cityscapes import CITYSCAPES_CLASSES

    names = tuple(classes.names) if classes is not None else None
    if names == CITYSCAPES_CLASSES or (names is None and num_classes == len(CITYSCAPES_CLASSES)):
        return
    described = f"classes {', '.join(names[:4])}, ..." if names else "classes"
    raise SeglabError(
        f"--labelids: {weights} predicts {num_classes} {described}, not the 19 Cityscapes train "
        "ids (road .. bicycle); labelIds are only defined for a Cityscapes model"
    )


def depth_for(image: Path, folder: str | Path | None) -> Any:
    """(H, W) float32 metres for `image`: FOLDER/NAME.png, FOLDER defaulting to the folder
    layout's depth/ beside the image's folder; the scale from FOLDER/depth.txt, else
    FOLDER/../depth.txt."""
    from seglab.data.depth import DEPTH_FILE, depth_in_metres, read_depth_png, read_depth_scale

    folder = Path(folder) if folder is not None else image.parent.parent / "depth"
    scale_root = folder if (folder / DEPTH_FILE).is_file() else folder.parent
    hint = "give the depth maps' folder with --depth DIR (16-bit PNGs named as the images)"
    # The PNG first: a missing depth map is the likelier mistake, and its message names it.
    values = read_depth_png(folder / f"{image.stem}.png", hint)
    return depth_in_metres(values, read_depth_scale(scale_root))


def predict_files(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    inference: InferenceConfig | Mapping[str, Any] | None = None,
    crf: str | None = None,
    progress: bool = True,
    labelids: bool = False,
    variant: str = "auto",
    backend: str = "torch",
    depth: str | Path | None = None,
) -> Predictions:
    """Label every readable image of `inputs` with the weights of `checkpoint` (a run directory
    or NAME.safetensors) into OUT/labels and OUT/overlays.

    inference: None uses the run's inference section, exactly as evaluate_checkpoint does; a
    mapping overrides only the fields it names; an InferenceConfig replaces it. crf: a
    seglab.crf preset name. labelids: write Cityscapes labelIds (grayscale, for the benchmark
    server) instead of palette train ids; refused for a model of other classes. variant,
    backend: how the model runs (seglab/fast_inference.py; the default is the fastest variant
    with eager's labels). depth: the depth maps' folder for an RGB-D model (depth_for).
    """
    from PIL import Image
    from tqdm import tqdm

    from seglab.atomic import write_atomically, write_png_atomically
    from seglab.data.cityscapes import train_ids_to_label_ids
    from seglab.data.folder import read_image, write_mask
    from seglab.data.labels import default_palette
    from seglab.engine.report import overlay
    from seglab.inference import Segmenter
    from seglab.runs import check_window, resolve_run, run_inference
    from seglab.weights import read_weights_meta

    weights, config = resolve_run(checkpoint)
    if read_weights_meta(weights).get("task") == "instance":  # masks, boxes, scores per object
        if crf or labelids:
            raise SeglabError(f"{weights}: an instance model takes neither --crf nor --labelids")
        from seglab.instance_predict import predict_instance_files

        return predict_instance_files(weights, collect_images(inputs), out, progress)
    segmenter = Segmenter.from_checkpoint(
        weights, "auto", run_inference(config, inference), crf, variant, backend
    )
    images = collect_images(inputs)
    if depth is not None and not segmenter.takes_depth:
        raise SeglabError(f"--depth: {weights} is an RGB model; it takes no depth")
    check_window(segmenter.model, segmenter.inference)
    if labelids:
        check_cityscapes_classes(weights, segmenter.num_classes, segmenter.classes)
    classes = segmenter.classes
    colors = classes.colors if classes else default_palette(segmenter.num_classes)
    out_dir = Path(out)
    result = Predictions(variant=segmenter.variant)
    for path, name in tqdm(images, desc="predicting", unit="img", disable=not progress):
        try:  # reading and labelling come before anything is written for this image
            image = read_image(path)
            metres = depth_for(path, depth) if segmenter.takes_depth else None
            labels = segmenter.predict(image, depth=metres)
        except SeglabError as error:
            result.failed.append((path, str(error)))
            continue
        except RuntimeError as error:  # one odd image (1x1, out of memory) must not stop the rest
            reason = first_line(error, "no message")
            size = "x".join(str(side) for side in image.shape[:2])
            failure = f"{path}: cannot label this {size} image ({type(error).__name__}: {reason})"
            result.failed.append((path, failure))
            continue
        label_path = out_dir / "labels" / f"{name}.png"
        overlay_path = out_dir / "overlays" / f"{name}.png"
        label_path.parent.mkdir(parents=True, exist_ok=True)
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        if labelids:
            ids = Image.fromarray(train_ids_to_label_ids(labels), mode="L")
            write_png_atomically(ids, label_path)
        else:
            write_atomically(label_path, lambda tmp, labels=labels: write_mask(labels, tmp, colors))
        write_png_atomically(Image.fromarray(overlay(image, labels, colors)), overlay_path)
        result.written.append(label_path)
    return result


__all__ = [
    "Predictions",
    "check_cityscapes_classes",
    "collect_images",
    "depth_for",
    "predict_files",
]
