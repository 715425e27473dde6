"""Command line: export a checkpoint for serving.

    python -m effnetv2_jax.export --checkpoint DIR --format {savedmodel,jax_export,tflite,onnx} \
        --output OUT [--batch N|dynamic] [--with-preprocessing] [--quantize] [--overwrite]

Prints what it wrote (size, input and output specs); a progress bar on a terminal. Exit status 1
on a bad argument, a missing checkpoint or an op that TFLite or ONNX cannot convert (the message
names it).
"""

from __future__ import annotations

import argparse
import os
import sys

from effnetv2_jax import cpu


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    from effnetv2_jax.export.from_checkpoint import (FORMATS, PLATFORMS, export_checkpoint,
                                                     parse_batch)

    parser = argparse.ArgumentParser(prog="python -m effnetv2_jax.export",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="workdir, converted checkpoint directory or step directory")
    parser.add_argument("--format", required=True,
                        help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--output", required=True,
                        help="SavedModel directory, or the .jax / .tflite / .onnx file to "
                             "write")
    parser.add_argument("--batch", default="dynamic",
                        help="fixed batch size, or 'dynamic' (default: any batch)")
    parser.add_argument("--with-preprocessing", action="store_true",
                        help="savedmodel/tflite: uint8 [batch, H, W, 3] images of any size in, "
                             "the checkpoint's eval preprocessing, probabilities and top-k out")
    parser.add_argument("--quantize", action="store_true",
                        help="tflite: dynamic-range quantization (int8 weights)")
    parser.add_argument("--top-k", type=int, default=5,
                        help="classes in the top-k outputs (with --with-preprocessing)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.add_argument("--raw-weights", action="store_true",
                        help="export the raw weights instead of the EMA copies")
    parser.add_argument("--platforms", default="cpu",
                        help=f"comma-separated platforms to lower for ({', '.join(PLATFORMS)}); "
                             f"savedmodel and jax_export")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output")
    args = parser.parse_args(argv)
    try:
        report = export_checkpoint(
            args.checkpoint, args.format, args.output, batch=parse_batch(args.batch),
            with_preprocessing=args.with_preprocessing, quantize=args.quantize,
            top_k=args.top_k, step=args.step, use_ema=not args.raw_weights,
            platforms=[p.strip() for p in args.platforms.split(",") if p.strip()],
            overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        # Each error class is defined by a module that needs its extra (TensorFlow, jax2onnx):
        # one that raised was imported.
        conversion_errors = tuple(
            getattr(sys.modules[module], name) for module, name in (
                ("effnetv2_jax.export.tflite", "TFLiteConversionError"),
                ("effnetv2_jax.export.onnx_export", "ONNXConversionError"))
            if module in sys.modules)
        if not isinstance(error, conversion_errors):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    cpu.configure_process(restart_allocator=False)  # XLA:CPU flags (cpu/xla_flags.py)
    sys.exit(main())
