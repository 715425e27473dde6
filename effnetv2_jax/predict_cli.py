"""Command line: classify image files with a checkpoint and print a table.

    python -m effnetv2_jax.predict --checkpoint DIR image1.jpg image2.png ...
    python -m effnetv2_jax.predict --model efficientnetv2-s --pretrained in21k-ft-in1k cat.jpg
    effnetv2-predict --checkpoint DIR image1.jpg ...        # the same, as a console script

The code of `python -m effnetv2_jax.predict` lives here, under a name of its own:
`effnetv2_jax.predict` is the function (`inference.predict`), and effnetv2_jax/predict.py only
runs this module's `main`.

DIR is a training workdir, a converted checkpoint (`python -m effnetv2_jax.convert`), or one
step directory. `--pretrained` takes a tag of `--model` (`effnetv2_jax.list_pretrained`; bare
`--pretrained`: the default tag), fetched through the Hugging Face cache and converted once, or a
local weight file (`effnetv2_jax.load_pretrained`). No TensorFlow is needed. A missing or
unreadable image gets a one-line error on stderr and the others are still classified; the exit
status is 1 if any image failed, 2 if the checkpoint did not load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from effnetv2_jax import inference

_NAME_WIDTH = 48


def format_table(paths: list[str], predictions: inference.Predictions) -> str:
    """One row per (image, rank): image, rank, class index, name, probability."""
    width = max([len("image")] + [len(p) for p in paths])
    lines = [f"{'image':<{width}}  rank  {'class':>5}  {'name':<{_NAME_WIDTH}}  probability"]
    for path, indices, names, probs in zip(paths, predictions.indices, predictions.names,
                                           predictions.probabilities):
        for rank, (index, name, prob) in enumerate(zip(indices, names, probs), start=1):
            if len(name) > _NAME_WIDTH:
                name = name[:_NAME_WIDTH - 3] + "..."
            shown = path if rank == 1 else ""
            lines.append(f"{shown:<{width}}  {rank:>4}  {int(index):>5}  {name:<{_NAME_WIDTH}}  "
                         f"{float(prob):>11.4f}")
    return "\n".join(lines)


@contextlib.contextmanager
def _native_stderr_silenced():
    """libjpeg and TensorFlow's C++ runtime write their own lines to file descriptor 2 for a
    corrupt image; the CLI reports each bad file in one line of its own instead."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    parser = argparse.ArgumentParser(prog="python -m effnetv2_jax.predict",
                                     description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint",
                        help="workdir, converted checkpoint directory or step directory")
    source.add_argument("--pretrained", nargs="?", const=True, metavar="TAG_OR_FILE",
                        help="pretrained weights of --model: a tag (default: the model's "
                             "default tag) or a local weight file")
    parser.add_argument("--model", default=None,
                        help="registered variant for --pretrained, e.g. efficientnetv2-s")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP, WebP)")
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image")
    parser.add_argument("--image-size", type=int, default=None,
                        help="eval size in pixels (default: the checkpoint's)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA, weights")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.pretrained is not None and not args.model:
        parser.error("--pretrained needs --model (e.g. --model efficientnetv2-s)")
    if args.pretrained is not None and args.step is not None:
        parser.error("--step is for --checkpoint")
    from effnetv2_jax import cpu, inference  # noqa: PLC0415 (after parsing: --help needs no JAX)

    cpu.configure_process(restart_allocator=False)  # XLA:CPU flags (cpu/xla_flags.py)

    images, paths, failed = [], [], 0
    for path in args.images:
        try:
            with _native_stderr_silenced():
                images.append(inference.read_image(path))
            paths.append(path)
        except inference.ImageError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    try:
        if args.pretrained is not None:
            from effnetv2_jax.pretrained.load import load_pretrained  # noqa: PLC0415

            loaded = load_pretrained(args.model, args.pretrained, use_ema=not args.no_ema)
        else:
            loaded = inference.load_checkpoint(args.checkpoint, step=args.step,
                                               use_ema=not args.no_ema)
    except (FileNotFoundError, ValueError, KeyError) as error:
        what = (f"pretrained {args.model} {'' if args.pretrained is True else args.pretrained}"
                .rstrip() if args.pretrained is not None else f"checkpoint {args.checkpoint}")
        print(f"error: cannot load {what}: {error}", file=sys.stderr)
        return 2
    if images:
        predictions = inference.predict(loaded, images, top_k=args.top_k,
                                        image_size=args.image_size)
        print(f"{loaded.metadata['model']}, step {loaded.step}, {loaded.weights} weights, "
              f"{args.image_size or loaded.eval_size} px")
        print(format_table(paths, predictions))
    return 1 if failed else 0

