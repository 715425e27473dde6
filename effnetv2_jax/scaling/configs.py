"""Training configs in and out: a base from any training config, a member as a config `main` runs.

    base = base_from_config(config)                   # e.g. configs/quickstart.py's
    member = compound_scale(base, phi=1)
    member_config(config, base, member)               # the same recipe, scaled model and sizes
    write_config("runs/b1.py", member_config(...))    # python -m effnetv2_jax.main --config=...

A member keeps everything of its base's recipe (data, optimiser, schedule, regularisation) and
changes the model (`model.block_strings`, `model.width`, `model.depth`) and the image sizes: the
progressive schedule becomes explicit ("custom") with both ends grown by train size / base train
size, and `eval.image_size` is the member's eval size.
"""

from __future__ import annotations

import copy
import os

import ml_collections

from effnetv2_jax.models.factory import resolve_model_args
from effnetv2_jax.scaling.base import ScaledModel, ScalingBase, round_resolution
from effnetv2_jax.train import run as run_setup
from effnetv2_jax.train.config import base_config, validate


def _schedule(config: ml_collections.ConfigDict):
    # loop's own reading of the config, so a member trains exactly what its base would.
    _, variant = resolve_model_args(config.model.name, run_setup.model_overrides(config))
    return variant, run_setup.stage_schedule(config, variant)


def base_from_config(config: ml_collections.ConfigDict, name: str = "base") -> ScalingBase:
    """The network a training config trains, with its final train size and its eval size."""
    validate(config)
    arch, _ = resolve_model_args(config.model.name, run_setup.model_overrides(config))
    variant, schedule = _schedule(config)
    return ScalingBase(arch, int(schedule.image_size[1]),
                       int(config.eval.image_size or variant.eval_size), name)


def member_config(config: ml_collections.ConfigDict, base: ScalingBase, member: ScaledModel,
                  resolution_multiple: int = 8) -> ml_collections.ConfigDict:
    """A copy of `config` (the base's training config) that trains `member`.

    The first progressive stage grows in proportion to the last (rounded to
    `resolution_multiple`, never above the last); phi = 0 keeps the base's sizes.
    """
    _, schedule = _schedule(config)
    out = copy.deepcopy(config)
    out.model.block_strings = tuple(member.block_strings)
    out.model.width = float(member.width)
    out.model.depth = float(member.depth)
    first = int(schedule.image_size[0])
    if member.train_size != base.train_size:
        first = min(member.train_size, round_resolution(
            first * member.train_size / base.train_size, resolution_multiple))
    p = out.progressive
    p.preset = "custom"
    p.image_size = (first, member.train_size)
    p.randaug_magnitude = tuple(map(float, schedule.randaug_magnitude))
    p.mixup_alpha = tuple(map(float, schedule.mixup_alpha))
    p.cutmix_alpha = tuple(map(float, schedule.cutmix_alpha))
    p.dropout_rate = tuple(map(float, schedule.dropout_rate))
    out.eval.image_size = member.eval_size
    validate(out)
    return out


def _assignments(config: ml_collections.ConfigDict, default: ml_collections.ConfigDict,
                 prefix: str = "c") -> list[str]:
    """`c.a.b = value` for every leaf that differs from `default` (base_config())."""
    lines = []
    for key, value in config.items():
        if key not in default:
            raise ValueError(f"config key {prefix[2:] + '.' if prefix != 'c' else ''}{key!r} is "
                             f"not a training config key (base_config() lacks it); members are "
                             f"written for effnetv2_jax.main: start from a training recipe")
        ref = default[key]
        if isinstance(value, ml_collections.ConfigDict):
            lines.extend(_assignments(value, ref, f"{prefix}.{key}"))
        elif value != ref or type(value) is not type(ref):
            value = tuple(value) if isinstance(value, list) else value
            line = f"    {prefix}.{key} = {value!r}"
            if len(line) > 99 and isinstance(value, tuple):  # e.g. block strings: one a line
                items = "".join(f"        {v!r},\n" for v in value)
                line = f"    {prefix}.{key} = (\n{items}    )"
            lines.append(line)
    return lines


def config_source(config: ml_collections.ConfigDict, docstring: str) -> str:
    """Python source of a config file whose `get_config()` returns `config` (as the diff from
    `base_config()`), loadable by `--config=FILE` like every recipe in configs/."""
    body = "\n".join(_assignments(config, base_config()))
    return (f'"""{docstring.strip()}\n"""\n\nfrom effnetv2_jax.train.config import base_config\n'
            f"\n\ndef get_config():\n    c = base_config()\n{body}\n    return c\n")


def write_config(path: str, config: ml_collections.ConfigDict, docstring: str) -> str:
    """Writes `config_source(config, docstring)` to `path` (directories created); returns it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(config_source(config, docstring))
    return path
