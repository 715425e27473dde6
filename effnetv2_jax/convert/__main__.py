"""Command line: `python -m effnetv2_jax.convert --source {tf1,timm,keras} --model NAME
--input PATH --output DIR`. Prints what it wrote; on a mismatch, the list of offending tensors."""

from __future__ import annotations

import argparse
import sys

from effnetv2_jax import cpu
from effnetv2_jax.convert.common import SOURCES, ConversionError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effnetv2_jax.convert",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, choices=SOURCES,
                        help="tf1: official TF checkpoint (directory, prefix or .index); timm: "
                             ".safetensors or .pth state dict; keras: .weights.h5, .h5 or .keras")
    parser.add_argument("--model", required=True,
                        help="registered variant, e.g. efficientnetv2-s, efficientnet-b3")
    parser.add_argument("--input", required=True, help="the weight file")
    parser.add_argument("--output", required=True, help="directory for checkpoints/0/")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier outputs (default: the file's)")
    parser.add_argument("--new-head", action="store_true",
                        help="allow --num-classes to differ from the file's: re-initialise the "
                             "classifier (for fine-tuning)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a re-initialised classifier")
    parser.add_argument("--no-ema", action="store_true",
                        help="read the raw weights, not the EMA copies (tf1, timm checkpoints)")
    parser.add_argument("--tf1-prefix", default=None,
                        help="variable scope of a TF1 checkpoint (default: the model name)")
    parser.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                        help="normalisation mean in pixels (default: the variant's)")
    parser.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                        help="normalisation std in pixels, e.g. 127.5 127.5 127.5 for AdvProp")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace checkpoints already in --output")
    args = parser.parse_args(argv)
    from effnetv2_jax.convert.pipeline import convert  # noqa: PLC0415 - imports JAX

    try:
        report = convert(args.source, args.model, args.input, args.output,
                         num_classes=args.num_classes, new_head=args.new_head,
                         use_ema=not args.no_ema, seed=args.seed, mean=args.mean,
                         std=args.std, tf1_prefix=args.tf1_prefix,
                         overwrite=args.overwrite)
    except (ConversionError, FileNotFoundError, FileExistsError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    cpu.configure_process(restart_allocator=False)  # XLA:CPU flags (cpu/xla_flags.py)
    sys.exit(main())
