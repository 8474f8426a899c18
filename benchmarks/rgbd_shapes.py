"""Does ACNet use depth? The same ACNet trained on shapes-RGBD with and without its depth.

    OMP_NUM_THREADS=1 python benchmarks/rgbd_shapes.py --out runs/rgbd_shapes [--iters 2000]
        [--width 16] [--lr 0.004] [--batch-size 16] [--jobs 2] [--eval-every 500] [--record-only]

Two copies of one RGB-D shapes set (seglab/data/shapes.py, `--depth`): the real one, and one
whose every depth PNG holds DEPTH_MEAN (2.8425 m), which the depth normalisation maps to 0: the
depth branch then sees a zero input (the RGB-only network), while the network, its parameters,
its inputs' shapes, the images, labels, schedule and seed are identical. Near and far squares
share shape and colours: without depth a model cannot tell them apart (their IoU stays near
what a coin flip gives), with depth it can. --jobs 2 trains the two arms in two processes at
once (one thread each); --record-only records the last step both runs in --out were evaluated
at instead of training (for runs cut short on a busy machine; the record names the step). Writes
the "RGB-D shapes: ACNet with and without depth" section of
benchmarks/RESULTS.md with per-class IoU (--no-write: print only).
"""

from __future__ import annotations

import argparse
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from results_file import write_section  # benchmarks/, the script's folder, is on sys.path
from run_scores import iou_table, latest_common_step, run_command

from seglab.config import load_config
from seglab.data import build_dataset
from seglab.data.depth import DEPTH_MEAN, write_depth
from seglab.data.shapes import DEPTH_SHAPE_CLASSES, FAR_SQUARE, NEAR_SQUARE, write_shapes_dataset
from seglab.data.transforms import eval_transform
from seglab.engine.evaluate import evaluate
from seglab.engine.trainer import train
from seglab.weights import load_weights

HEADING = "## RGB-D shapes: ACNet with and without depth"
CONFIG = "configs/acnet_shapes.yaml"


def withhold_depth(root: Path, out: Path) -> Path:
    """A copy of the dataset at `root` whose every depth map is DEPTH_MEAN metres."""
    shutil.copytree(root, out, dirs_exist_ok=True)
    for path in (out / "depth").glob("*.png"):
        h, w = np.asarray(Image.open(path)).shape
        write_depth(np.full((h, w), DEPTH_MEAN, np.float32), path, 0.001)
    return out


def train_and_score(root: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    cfg = load_config(
        CONFIG,
        [f"data.root={root}", f"run_dir={run_dir}", f"train.iters={args.iters}",
         f"train.eval_every={args.eval_every or args.iters}",
         f"train.checkpoint_every={args.iters}", f"train.threads={args.threads}",
         f"data.batch_size={args.batch_size}", f"optim.lr={args.lr}",
         f"model.options.width={args.width}"],
    )  # fmt: skip
    train(cfg, progress=False)
    model, _ = load_weights(run_dir / "final.safetensors")
    val = build_dataset("folder", root, "val", eval_transform())
    scores = evaluate(model, val, torch.device("cpu"), progress=False).compute()
    return {"mean_iou": scores["mean_iou"], "iou": [float(v) for v in scores["iou"]]}


def section(results: dict, step: int, args: argparse.Namespace) -> str:
    command = run_command("benchmarks/rgbd_shapes.py")
    names = {"rgbd": "RGB-D", "rgb_only": "RGB only (depth input 0)"}
    lines = [
        HEADING,
        "",
        f"`{CONFIG}` (ACNet, one bottleneck per stage, one block per decoder stage, "
        "median-frequency class weights) at width "
        f"{args.width}, AdamW lr {args.lr}, poly over {args.iters} steps, batch "
        f"{args.batch_size}, one seed, 1 thread per run, evaluated at step {step}"
        + ("" if step == args.iters else " (both runs cut there: the machine was busy)")
        + f"; shapes-RGBD with {args.train} train / {args.val} val "
        "scenes, 64x64. RGB only = the same network and data with every depth map set to "
        "DEPTH_MEAN, which the normalisation maps to 0. Val IoU (%); near_square and "
        "far_square differ only in depth; depth also outlines every object (1-4 m in front of "
        "a background plane at about 5 m), which the RGB-only network has to find from "
        "texture alone. "
        f"Command: `OMP_NUM_THREADS=1 {command}`",
        "",
        *iou_table(
            {names[arm]: scores for arm, scores in results.items()}, DEPTH_SHAPE_CLASSES, "input"
        ),  # fmt: skip
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/rgbd_shapes"))
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=0, help="0: at the end only")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.004)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, choices=(1, 2))
    parser.add_argument("--record-only", action="store_true", help="record, do not train")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rgbd = args.out / "data_rgbd"
    if not (rgbd / "val.txt").is_file():
        write_shapes_dataset(rgbd, args.train, args.val, depth=True, progress=False)
    step, arms = args.iters, ("rgbd", "rgb_only")
    if args.record_only:
        runs = {arm: args.out / f"run_{arm}" for arm in arms}
        step, results = latest_common_step(runs, DEPTH_SHAPE_CLASSES)
        if not results:
            raise SystemExit(f"no step of {args.out}'s two runs is evaluated in both yet")
    else:
        roots = {"rgbd": rgbd, "rgb_only": withhold_depth(rgbd, args.out / "data_depth_zero")}
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = {arm: pool.submit(train_and_score, roots[arm], args.out / f"run_{arm}",
                                        args) for arm in arms}  # fmt: skip
            results = {arm: future.result() for arm, future in futures.items()}
    iou = {arm: r["iou"] for arm, r in results.items()}
    print(json.dumps({"classes": DEPTH_SHAPE_CLASSES, "near": NEAR_SQUARE, "far": FAR_SQUARE,
                      **iou}))  # fmt: skip
    text = section(results, step, args)
    print(text)
    if not args.no_write:
        write_section(HEADING, text)


if __name__ == "__main__":
    main()
