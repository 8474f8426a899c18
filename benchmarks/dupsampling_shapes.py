"""DUpsampling's argument on shapes: a label-fitted W against bilinear upsampling.

    OMP_NUM_THREADS=1 python benchmarks/dupsampling_shapes.py --out runs/dupsampling_shapes
        [--train 1000] [--val 200] [--strides 4 8 16] [--features 16 32] [--iters 600]
        [--output-stride 16] [--batch-size 8] [--lr 1e-3] [--median-frequency] [--jobs 2]
        [--eval-every 100] [--record-only]

1. Reconstruction (Tian et al., CVPR 2019, section 3.1): the val masks of a shapes set, each
   one-hot label map reduced to stride r and rebuilt at full size, mIoU of the argmax. Bilinear:
   r x r average pooling, then bilinear upsampling (the best a bilinear decoder can do from K
   numbers per position). W: x = W^T v per r x r patch, rebuilt as W x, with W fitted on the
   train masks (seglab/models/dupsampling.py, PCA), at C' = K numbers per position (the same
   count as bilinear's) and at the --features counts (16: configs/dupsampling_shapes.yaml).
2. Training: configs/dupsampling_shapes.yaml (ResNet-18, C' 16) at --output-stride (16, the
   paper's, by default; the recipe's 8 costs twice the time) against the same network with
   `upsampling: bilinear` (the last 1x1 conv to K classes, bilinear x r), same data, schedule,
   seed and steps; val mIoU and per-class IoU. --jobs 2 trains both at once (one thread each).
   --record-only records the last step both runs in --out were evaluated at instead of
   training (for runs cut short on a busy machine; the record names the step).
Writes the "DUpsampling on shapes" section of benchmarks/RESULTS.md (--no-write: print only).
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from results_file import write_section  # benchmarks/, the script's folder, is on sys.path
from run_scores import iou_table, latest_common_step, run_command

from seglab.config import load_config
from seglab.data import build_dataset
from seglab.data.shapes import SHAPE_CLASSES, write_shapes_dataset
from seglab.data.transforms import eval_transform
from seglab.engine.evaluate import evaluate
from seglab.engine.trainer import train
from seglab.models.dupsampling import (
    bilinear_reconstruction_miou,
    fit_dupsampling_matrix,
    reconstruction_miou,
)
from seglab.weights import load_weights

HEADING = "## DUpsampling on shapes"
CONFIG = "configs/dupsampling_shapes.yaml"
RECIPE_FEATURES = 16


def reconstruction_rows(root: Path, strides: list[int], feature_counts: list[int]) -> list[dict]:
    train_set, val = build_dataset("folder", root, "train"), build_dataset("folder", root, "val")
    k = val.num_classes
    rows = []
    for r in strides:
        row = {"stride": r, "bilinear": bilinear_reconstruction_miou(val, r, k)}
        for features in (k, *feature_counts):
            basis = fit_dupsampling_matrix(train_set, r, k, features)
            row[f"w_{features}"] = reconstruction_miou(val, basis, r, k)
        rows.append(row)
    return rows


def cached_reconstruction(path: Path, root: Path, args) -> list[dict]:
    """reconstruction_rows, kept in `path` for a later --record-only of the same set."""
    key = {"strides": args.strides, "features": args.features, "root": str(root)}
    if path.is_file() and json.loads(path.read_text())["key"] == key:
        return json.loads(path.read_text())["rows"]
    rows = reconstruction_rows(root, args.strides, args.features)
    path.write_text(json.dumps({"key": key, "rows": rows}))
    return rows


def train_and_score(root: Path, run_dir: Path, upsampling: str, args) -> dict:
    torch.set_num_threads(args.threads)
    cfg = load_config(
        CONFIG,
        [f"data.root={root}", f"run_dir={run_dir}", f"train.iters={args.iters}",
         f"train.eval_every={args.eval_every or args.iters}",
         f"train.checkpoint_every={args.iters}",
         f"train.threads={args.threads}", f"data.batch_size={args.batch_size}",
         f"optim.lr={args.lr}",
         *(["loss.class_weights=median_frequency"] if args.median_frequency else []),
         f"model.options.upsampling={upsampling}",
         f"model.options.output_stride={args.output_stride}"],
    )  # fmt: skip
    train(cfg, progress=False)
    model, _ = load_weights(run_dir / "final.safetensors")
    val = build_dataset("folder", root, "val", eval_transform())
    scores = evaluate(model, val, torch.device("cpu"), progress=False).compute()
    return {"mean_iou": scores["mean_iou"], "iou": [float(v) for v in scores["iou"]]}


def section(recon: list[dict], trained: dict, step: int, args) -> str:
    command = run_command("benchmarks/dupsampling_shapes.py")
    k = len(SHAPE_CLASSES)
    counts = [k, *args.features]
    lines = [
        HEADING,
        "",
        f"The embedded shapes set (`write_shapes_dataset`, {args.train} train / {args.val} val "
        f"scenes, 64x64, {k} classes). Command: `OMP_NUM_THREADS=1 {command}`",
        "",
        "Label reconstruction, val masks: one-hot labels reduced to stride r and rebuilt at "
        "full size, mIoU (%) of the argmax. Bilinear = r x r average pooling then bilinear "
        f"upsampling ({k} numbers per position); W = the DUpsampling matrix fitted on the "
        "train masks, C' numbers per position.",
        "",
        "| stride r | bilinear | " + " | ".join(f"W, C' = {c}" for c in counts) + " |",
        "|---:|---:|" + "---:|" * len(counts),
    ]
    for row in recon:
        cells = " | ".join(f"{100 * row[f'w_{c}']:.2f}" for c in counts)
        lines.append(f"| {row['stride']} | {100 * row['bilinear']:.2f} | {cells} |")
    if trained:
        lines += [
            "",
            f"Training: `{CONFIG}` (ResNet-18, C' = {RECIPE_FEATURES}) at output stride "
            f"{args.output_stride} against the same network with `upsampling: bilinear`, "
            f"batch {args.batch_size}, AdamW lr {args.lr:g}, poly over {args.iters} steps"
            + (", median-frequency class weights" if args.median_frequency else "")
            + ", one "
            f"seed, 1 thread; val IoU (%) at step {step}"
            + ("." if step == args.iters else " (both runs cut there: the machine was busy)."),
            "",
            *iou_table(trained, SHAPE_CLASSES, "head"),
        ]
    elif args.record_only:
        lines += ["", "Training: not recorded (the runs stopped before their first evaluation)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/dupsampling_shapes"))
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--strides", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--features", type=int, nargs="+", default=[RECIPE_FEATURES, 32])
    parser.add_argument("--iters", type=int, default=600, help="0: reconstruction only")
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--median-frequency", action="store_true",
                        help="median-frequency class weights in both arms")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, choices=(1, 2))
    parser.add_argument("--eval-every", type=int, default=0, help="0: at the end only")
    parser.add_argument("--record-only", action="store_true", help="record, do not train")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    root = args.out / "data"
    if not (root / "val.txt").is_file():
        write_shapes_dataset(root, args.train, args.val, progress=False)
    recon = cached_reconstruction(args.out / "reconstruction.json", root, args)
    print(json.dumps(recon), flush=True)
    trained, step, arms = {}, args.iters, ("dupsampling", "bilinear")
    if args.record_only:
        runs = {arm: args.out / f"run_{arm}" for arm in arms}
        step, trained = latest_common_step(runs, SHAPE_CLASSES)  # none yet: reconstruction only
    elif args.iters:
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = {
                arm: pool.submit(train_and_score, root, args.out / f"run_{arm}", arm, args)
                for arm in arms
            }
            trained = {arm: future.result() for arm, future in futures.items()}
        print(json.dumps(trained), flush=True)
    text = section(recon, trained, step, args)
    print(text)
    if not args.no_write:
        write_section(HEADING, text)


if __name__ == "__main__":
    main()
