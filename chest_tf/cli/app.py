"""Review a model in the browser: ``python -m chest_tf.app [MODEL] [--host 127.0.0.1] [--port N]``.

    python -m chest_tf.app saved_models/resnet18_chestmnist_224      # an export folder
    python -m chest_tf.app runs/phantom_28/resnet18_s0 --port 7860   # a run dir
    python -m chest_tf.app model.keras --dataset chestmnist          # a bare .keras file
    python -m chest_tf.app                                           # the bundled demo model

Starts a local web page (Gradio, the ``.[app]`` extra): drop PNG, JPEG or DICOM files, read each
finding's probability against its validation threshold and the call, the input checks' warnings
and the OOD flag, look at a heatmap overlay for a chosen finding and method, download the results
as CSV or JSON, and read the model's metrics, operating points, figures and card. The page and the
server are ``chest_tf.review``.

Without MODEL it serves the bundled demo: a small ResNet-18 trained on the generated phantom set
and exported on first use (a few minutes on 2 CPU cores), cached under the data dir
(``chest_tf.review.demo``). Phantom numbers say nothing about real radiographs.

Safety: it listens on 127.0.0.1 unless ``--host`` says otherwise; uploads over ``--max-file-mb``
and images over ``--max-pixels`` are refused; uploads live in a temporary folder removed when the
app stops (Ctrl-C or SIGTERM). Research use only, not for clinical use.
"""
from __future__ import annotations

import argparse

from chest_tf import imageio
from chest_tf.errors import ConfigError
from chest_tf.review.demo import demo_root, ensure_demo_model
from chest_tf.review.page import DEFAULT_HOST, DEFAULT_MAX_FILE_MB, check_gradio, serve
from chest_tf.serving.input_checks import CHECK_NAMES, DEFAULT_POLICY, parse_check_levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chest_tf.app",
        description="Review a model in the browser: drop radiographs, read the calls against the validation "
                    "thresholds, see heatmaps, input checks and the OOD flag, download CSV/JSON. "
                    "Research use only, not for clinical use.",
    )
    parser.add_argument("model", nargs="?",
                        help="export folder, run dir or .keras file (default: the bundled demo model, built on "
                             f"first use under {demo_root()})")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    parser.add_argument("--dataset", help="label names and task for a bare .keras file")
    parser.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_FILE_MB,
                        help=f"refuse uploads larger than this many MiB (default {DEFAULT_MAX_FILE_MB})")
    parser.add_argument("--max-pixels", type=int, default=imageio.DEFAULT_MAX_PIXELS,
                        help=f"refuse images with more pixels than this (default {imageio.DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--check", action="append", default=[], metavar="NAME=LEVEL",
                        help="input check level: NAME one of " + ", ".join(CHECK_NAMES) +
                             "; LEVEL error (not predicted), warning (shown) or off (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.max_pixels < 1:
        raise ConfigError(f"--max-pixels must be positive, got {args.max_pixels}")
    if args.max_file_mb <= 0:
        raise ConfigError(f"--max-file-mb must be positive, got {args.max_file_mb:g}")
    policy = DEFAULT_POLICY.with_levels(parse_check_levels(args.check))
    check_gradio()  # before a demo build, not after it
    model = args.model if args.model else ensure_demo_model()
    return serve(model, dataset=args.dataset, host=args.host, port=args.port, max_pixels=args.max_pixels,
                 max_file_bytes=int(args.max_file_mb * 2**20), policy=policy)
