"""Print a variant's architecture, parameter count and FLOPs, without allocating its weights.

    python -m effnetv2_jax.describe efficientnetv2-s
    python -m effnetv2_jax.describe efficientnet-b4 --image-size 300 --width 1.2
    python -m effnetv2_jax.describe --list
"""

from __future__ import annotations

import argparse
import sys

from effnetv2_jax.models.arch import resolve_arch
from effnetv2_jax.models.block_spec import ConvType
from effnetv2_jax.models.variants import list_models


def stage_table(arch) -> list[str]:
    """One line per stage: type, kernel, stride, expansion, channels, repeats, SE."""
    resolved = resolve_arch(arch)
    lines = [f"{'stage':>5} {'type':<12} {'k':>2} {'s':>2} {'e':>2} {'in':>5} {'out':>5} "
             f"{'blocks':>6}  se"]
    for stage in sorted({b.stage for b in resolved.blocks}):
        blocks = [b for b in resolved.blocks if b.stage == stage]
        first = blocks[0]
        kind = "Fused-MBConv" if first.conv_type == ConvType.FUSED_MBCONV else "MBConv"
        lines.append(f"{stage:>5} {kind:<12} {first.kernel_size:>2} {first.stride:>2} "
                     f"{first.expand_ratio:>2} {first.in_channels:>5} {first.out_channels:>5} "
                     f"{len(blocks):>6}  {'yes' if first.se_channels else 'no'}")
    lines.append(f"stem {resolved.stem_channels} channels, head {resolved.head_channels} "
                 f"channels, {resolved.num_blocks} blocks")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="efficientnetv2-s",
                        help="a registered name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the registered variants")
    parser.add_argument("--image-size", type=int, default=None,
                        help="pixels for the FLOPs count (default: the variant's eval size)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--width", type=float, default=None, help="override the width coefficient")
    parser.add_argument("--depth", type=float, default=None, help="override the depth coefficient")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(list_models()))
        return 0
    # Imported after parsing: they import JAX, which --help and --list do not need.
    from effnetv2_jax.models.counting import arch_macs, count_params  # noqa: PLC0415
    from effnetv2_jax.models.factory import resolve_model_args  # noqa: PLC0415

    overrides = {k: v for k, v in (("width", args.width), ("depth", args.depth)) if v is not None}
    try:
        arch, variant = resolve_model_args(args.model, overrides)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = args.image_size or variant.eval_size
    counts = count_params(args.model, num_classes=args.num_classes, **overrides)
    print(f"{args.model}: train {variant.train_size} px, eval {variant.eval_size} px, "
          f"dropout {arch.dropout_rate}, survival {arch.survival_prob}, "
          f"activation {arch.activation}")
    print("\n".join(stage_table(arch)))
    print(f"parameters: {counts['trainable']:,} trainable, {counts['total']:,} with BN statistics")
    print(f"FLOPs (multiply-adds) at {size} px: "
          f"{arch_macs(resolve_arch(arch), size, args.num_classes) / 1e9:.3f} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
