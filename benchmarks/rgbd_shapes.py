"""Does ACNet use depth? The same ACNet trained on shapes-RGBD with and without its depth.

    OMP_NUM_THREADS=2 python benchmarks/rgbd_shapes.py --out runs/rgbd_shapes [--iters 600]

Two copies of one RGB-D shapes set (seglab/data/shapes.py, `--depth`): the real one, and one
whose depth PNGs are all the same constant (5 m), so the network, its inputs' shapes, the
images, labels, schedule and seed are identical and only the depth information differs. Near
and far squares share shape and colours: without depth a model cannot tell them apart (their
IoU stays near what a coin flip gives), with depth it can.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seglab.config import load_config
from seglab.data import build_dataset
from seglab.data.depth import write_depth
from seglab.data.shapes import DEPTH_SHAPE_CLASSES, FAR_SQUARE, NEAR_SQUARE, write_shapes_dataset
from seglab.data.transforms import eval_transform
from seglab.engine.evaluate import evaluate
from seglab.engine.trainer import train
from seglab.weights import load_weights


def withhold_depth(root: Path, out: Path) -> Path:
    """A copy of the dataset at `root` whose every depth map is a constant 5 m."""
    shutil.copytree(root, out, dirs_exist_ok=True)
    for path in (out / "depth").glob("*.png"):
        h, w = np.asarray(Image.open(path)).shape
        write_depth(np.full((h, w), 5.0, np.float32), path, 0.001)
    return out


def train_and_score(root: Path, run_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    cfg = load_config(
        "configs/acnet_shapes.yaml",
        [f"data.root={root}", f"run_dir={run_dir}", f"train.iters={args.iters}",
         f"train.eval_every={args.iters}", f"train.threads={args.threads}",
         f"data.batch_size={args.batch_size}"],
    )  # fmt: skip
    train(cfg, progress=False)
    model, _ = load_weights(run_dir / "final.safetensors")
    val = build_dataset("folder", root, "val", eval_transform())
    scores = evaluate(model, val, torch.device("cpu"), progress=False).compute()
    iou = scores["iou"]
    return {
        "mean_iou": scores["mean_iou"],
        "near_square_iou": iou[NEAR_SQUARE],
        "far_square_iou": iou[FAR_SQUARE],
        "other_classes_iou": float(np.mean([iou[i] for i in range(len(iou))
                                            if i not in (NEAR_SQUARE, FAR_SQUARE)])),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/rgbd_shapes"))
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rgbd = write_shapes_dataset(args.out / "data_rgbd", args.train, args.val, depth=True,
                                progress=False)  # fmt: skip
    rgb_only = withhold_depth(rgbd, args.out / "data_constant_depth")
    results = {
        "rgbd": train_and_score(rgbd, args.out / "run_rgbd", args),
        "rgb_only": train_and_score(rgb_only, args.out / "run_constant_depth", args),
    }
    print(json.dumps({"classes": DEPTH_SHAPE_CLASSES, **vars(args), "out": str(args.out),
                      **results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
