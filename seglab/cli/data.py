"""`seglab data shapes | check | stats | convert`: dataset tools."""

from __future__ import annotations

import argparse


def run_shapes(args: argparse.Namespace) -> None:
    from seglab.data.shapes import write_shapes_dataset

    root = write_shapes_dataset(
        args.out, args.train, args.val, args.size, args.seed, not args.quiet, args.depth,
        instances=args.instances, weak=args.weak,
    )  # fmt: skip
    kind = "RGB-D" if args.depth else ""
    print(f"wrote {args.train} train + {args.val} val {kind}{' ' * bool(kind)}images of "
          f"{args.size}x{args.size} to {root}")  # fmt: skip


def run_check(args: argparse.Namespace) -> None:
    from seglab.data import build_dataset
    from seglab.data.folder import check_dataset
    from seglab.data.folder_layout import FolderLayout, data_layout
    from seglab.data.layout_hints import layout_hint
    from seglab.data.summary import dataset_splits, dataset_summary
    from seglab.errors import SeglabError

    layout = data_layout(args)  # --image-dir, --mask-suffix, ... as the data.* keys
    try:
        splits = args.split or dataset_splits(args.format, args.root)
        if layout is not None and layout.val_fraction is not None and splits == ["all"]:
            splits = ["train", "val"]
        for split in splits:
            dataset = build_dataset(args.format, args.root, split, layout=layout)
            check_dataset(dataset, progress=not args.quiet)
            print(dataset_summary(dataset) + "; all readable, sizes match, labels in range")
    except SeglabError as error:
        hint = layout_hint(args.root, args.format, layout or FolderLayout())
        raise SeglabError(f"{error}; {hint}" if hint else str(error)) from None


def run_stats(args: argparse.Namespace) -> None:
    from seglab.data import build_dataset
    from seglab.data.summary import dataset_summary
    from seglab.losses import class_pixel_counts, median_frequency_weights

    dataset = build_dataset(args.format, args.root, args.split)
    print(dataset_summary(dataset))
    masks = (dataset.load(i)[1] for i in range(len(dataset)))
    pixels, image_pixels = class_pixel_counts(masks, dataset.num_classes)
    weights = median_frequency_weights(pixels, image_pixels)
    total = max(pixels.sum(), 1)
    print(f"{'id':>3}  {'class':<16} {'pixels':>12} {'share %':>8} {'median-freq weight':>19}")
    for i, name in enumerate(dataset.classes.names):
        print(
            f"{i:>3}  {name:<16} {pixels[i]:>12} {100 * pixels[i] / total:>8.2f} "
            f"{weights[i]:>19.4f}"
        )


def run_convert(args: argparse.Namespace) -> None:
    from seglab.data.voc import write_sbd_train_aug

    count = write_sbd_train_aug(args.sbd_root, args.voc_root, progress=not args.quiet)
    print(f"wrote train_aug ({count} images) into {args.voc_root}")


def formats_epilog() -> str:
    """The registered dataset layouts with their descriptions (seglab.data registry)."""
    from seglab.data import format_help_lines

    return "dataset layouts (--format):\n" + "\n".join(f"  {line}" for line in format_help_lines())


def declare_data(parser: argparse.ArgumentParser) -> None:
    tools = parser.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    shapes = tools.add_parser("shapes", help="write the synthetic shapes dataset")
    shapes.add_argument("out")
    shapes.add_argument("--train", type=int, default=2000, help="training images")
    shapes.add_argument("--val", type=int, default=200, help="validation images")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument(
        "--instances",
        action="store_true",
        help="also write annotations/instances_SPLIT.json (COCO, each object an instance)",
    )
    shapes.add_argument(
        "--depth", action="store_true", help="RGB-D: add depth/, near and far squares"
    )
    shapes.add_argument(
        "--weak",
        action="store_true",
        help="also write weak labels: tags/, points/, scribbles/, boxes/ (data/weak_labels.py)",
    )
    shapes.set_defaults(func=run_shapes)
    layouts = {"epilog": formats_epilog(), "formatter_class": argparse.RawDescriptionHelpFormatter}
    format_help = "dataset layout, listed below (default folder)"
    check = tools.add_parser("check", help="validate every image and mask of a dataset", **layouts)
    check.add_argument("root")
    check.add_argument("--format", default="folder", help=format_help)
    check.add_argument("--split", action="append", help="split(s) to check (default: all)")
    folder_only = "folder format, as data.{}"
    for flag, default in (("image-dir", "images"), ("mask-dir", "masks"), ("mask-suffix", ".png")):
        key = flag.replace("-", "_")
        check.add_argument(f"--{flag}", default=default, help=folder_only.format(key))
    check.add_argument("--image-suffix", help="e.g. .jpg (default any image extension)")
    check.add_argument("--val-fraction", type=float, help="hold-out fraction without split files")
    check.set_defaults(func=run_check)
    stats = tools.add_parser(
        "stats", help="per-class pixel frequencies and SegNet weights", **layouts
    )
    stats.add_argument("root")
    stats.add_argument("--format", default="folder", help=format_help)
    stats.add_argument("--split", default="train")
    stats.set_defaults(func=run_stats)
    convert = tools.add_parser("convert", help="convert a dataset release once (sbd)")
    convert.add_argument("source", choices=["sbd"], help="sbd: SBD .mat -> VOC train_aug")
    convert.add_argument("sbd_root", help="SBD's benchmark_RELEASE/dataset folder")
    convert.add_argument("voc_root", help="the VOC folder (VOCdevkit or VOC2012)")
    convert.set_defaults(func=run_convert)


def add_commands(commands) -> None:
    commands.add_lazy("data", "dataset tools: shapes, check, stats, convert", declare_data)
