"""`seglab serve RUN`: label images over HTTP (seglab/serve.py), with a page at `/`."""

from __future__ import annotations

import argparse

from seglab.cli.options import add_inference_options, inference_overrides


def run_serve(args: argparse.Namespace) -> None:
    from seglab.serve import serve

    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        inference=inference_overrides(args),
        crf=args.crf,
        device=args.device,
        max_bytes=args.max_bytes,
        max_pixels=args.max_pixels,
        batch_wait_s=args.batch_wait_ms / 1000,
    )


def declare_serve(parser: argparse.ArgumentParser) -> None:
    from seglab.cli.evaluate import WEIGHTS_HELP
    from seglab.serve import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

    parser.add_argument("checkpoint", help=WEIGHTS_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="larger uploads are refused with 413 (default %(default)s)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="images declaring more pixels are refused with 413 before decoding "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=DEFAULT_BATCH_WAIT_S * 1000,
        help="how long the first request waits for others to share its forward pass "
        "(default %(default)s)",
    )
    add_inference_options(parser)
    parser.set_defaults(func=run_serve)


def add_commands(commands) -> None:
    commands.add_lazy("serve", "label images over HTTP, with a page to try them", declare_serve)
