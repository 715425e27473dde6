"""Command line: a scaled family of any training config, or the grid search for its coefficients.

    python -m effnetv2_jax.scaling --base=configs/efficientnet_b0.py --phi=1..7
    python -m effnetv2_jax.scaling --base=configs/s_imagenet.py --phi=1..4 --rule=v2
    python -m effnetv2_jax.scaling --base=configs/quickstart.py --search --workdir=runs/grid \
        --base.train.num_epochs=3

The family: one line per member (rule, phi, width and depth coefficients, blocks, train / eval
pixels, parameters, FLOPs and their ratio to the base), and one config file per member in
`--out` (default runs/scaling/<base>), which `python -m effnetv2_jax.main --config=FILE` trains.
`--base` is a config file like `--config` of main (`FILE:ARG` and `--base.key=value` work).
`--search` runs the grid search at phi = 1 instead (`grid_search.py`) and prints the ranking.
"""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

from effnetv2_jax import cpu
from effnetv2_jax.models.arch import resolve_arch
from effnetv2_jax.scaling import compound, grid_search, v2_rule
from effnetv2_jax.train import config_check


HELP_FLAGS = ("-h", "--help", "-?", "--helpshort", "--helpfull")


def parse_flags(argv: list[str]) -> flags.FlagValues:
    """The command line's flags, parsed into their own FlagValues (so tests and notebooks can
    call `main` with any argv, next to other absl programs)."""
    f = define_flags(argv)
    flags.mark_flags_as_required(["base"], flag_values=f)
    rest = f(argv)
    if len(rest) > 1:
        raise flags.Error(f"unexpected arguments: {rest[1:]}")
    return f


def define_flags(argv: list[str]) -> flags.FlagValues:
    """The command line's flags, defined in their own FlagValues and not parsed yet."""
    f = flags.FlagValues()
    config_flags.DEFINE_config_file("base", None, "Training config of the base network.",
                                    flag_values=f, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("phi", "1..4", "Members: 'A..B' (integers A to B) or a comma list of "
                        "numbers >= 0 (0 is the base).", flag_values=f)
    flags.DEFINE_enum("rule", "v1", ["v1", "v2", "both"], "v1: compound scaling; v2: "
                      "late-stage depth, capped eval size.", flag_values=f)
    flags.DEFINE_float("alpha", compound.ALPHA, "Depth multiplier per unit of phi.",
                       flag_values=f)
    flags.DEFINE_float("beta", compound.BETA, "Width multiplier per unit of phi.", flag_values=f)
    flags.DEFINE_float("gamma", compound.GAMMA, "Resolution multiplier per unit of phi.",
                       flag_values=f)
    flags.DEFINE_integer("resolution_multiple", 0, "Round image sizes to a multiple of this "
                         "(0: 8 for v1, 16 for v2).", flag_values=f)
    flags.DEFINE_integer("max_eval_size", v2_rule.MAX_EVAL_SIZE, "V2 rule: largest eval size, "
                         "pixels.", flag_values=f)
    flags.DEFINE_list("late_stages", [], "V2 rule: stages (1-based, 0 = stem) that get the "
                      "extra blocks; empty: the last two.", flag_values=f)
    flags.DEFINE_string("out", "", "Directory for the members' config files (default "
                        "runs/scaling/<base file name>); 'none' writes nothing.", flag_values=f)
    flags.DEFINE_integer("num_classes", 0, "Classes for the counts (0: the config's, else the "
                         "dataset's, else 1000).", flag_values=f)
    flags.DEFINE_bool("search", False, "Run the grid search for alpha, beta, gamma.",
                      flag_values=f)
    flags.DEFINE_string("workdir", "", "Grid search: results.jsonl and candidates.",
                        flag_values=f)
    flags.DEFINE_list("alphas", list(map(str, grid_search.DEFAULT_ALPHAS)),
                      "Grid search: alpha values.", flag_values=f)
    flags.DEFINE_list("betas", list(map(str, grid_search.DEFAULT_BETAS)),
                      "Grid search: beta values.", flag_values=f)
    flags.DEFINE_list("gammas", list(map(str, grid_search.DEFAULT_GAMMAS)),
                      "Grid search: gamma values.", flag_values=f)
    flags.DEFINE_float("target", 2.0, "Grid search: FLOPs factor alpha*beta^2*gamma^2.",
                       flag_values=f)
    flags.DEFINE_float("tolerance", 0.1, "Grid search: allowed |factor - target|.",
                       flag_values=f)
    return f


def parse_phis(spec: str) -> list[float]:
    """'1..4' -> [1, 2, 3, 4]; '0.5,1,2' -> [0.5, 1.0, 2.0]."""
    try:
        if ".." in spec:
            first, last = (int(x) for x in spec.split(".."))
            values = list(range(first, last + 1))
        else:
            values = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--phi={spec!r} is neither 'A..B' (integers) nor a comma list of "
                         f"numbers") from None
    if not values or min(values) < 0:
        raise ValueError(f"--phi={spec!r} must give at least one value, all >= 0")
    return values


def _floats(name: str, values: list[str]) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise ValueError(f"--{name}={','.join(values)} must be a comma list of numbers") from None


def num_classes(f, config) -> tuple[int, str]:
    """Classes for the counts, and where the number came from."""
    if f.num_classes:
        return f.num_classes, "--num_classes"
    if config.model.num_classes:
        return config.model.num_classes, "config"
    from effnetv2_jax import data  # noqa: PLC0415 (reads dataset metadata only)
    from effnetv2_jax.train import inputs  # noqa: PLC0415
    try:
        return data.dataset_info(inputs.data_config(config)).num_classes, "dataset"
    except Exception as error:  # noqa: BLE001 - any unavailable dataset: counts still useful
        return 1000, f"dataset not readable here ({str(error).splitlines()[0][:80]})"


def _human(macs: int) -> str:
    """Multiply-adds with a unit: 8.37 G, 2.31 M."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if macs >= scale:
            return f"{macs / scale:.2f} {unit}"
    return str(macs)


def _member(f, rule: str, base, phi: float):
    multiple = f.resolution_multiple or (8 if rule == "v1" else 16)
    if rule == "v1":
        return compound.compound_scale(base, phi, f.alpha, f.beta, f.gamma,
                                       resolution_multiple=multiple), multiple
    late = [int(s) for s in f.late_stages] or None
    return v2_rule.v2_scale(base, phi, f.alpha, f.beta, f.gamma,
                            late_stages=late, max_eval_size=f.max_eval_size,
                            resolution_multiple=multiple), multiple


def family(f, config, base_path: str) -> None:
    # Imported here, not above: they import JAX, which --help does not need.
    from effnetv2_jax.models.counting import count_flops, count_params  # noqa: PLC0415
    from effnetv2_jax.scaling import configs  # noqa: PLC0415

    stem = os.path.splitext(os.path.basename(base_path))[0]
    out = f.out or os.path.join("runs", "scaling", stem)
    base = configs.base_from_config(config, stem)
    classes, source = num_classes(f, config)
    base_params = count_params(base.arch, num_classes=classes)["trainable"]
    base_flops = count_flops(base.arch, base.eval_size, num_classes=classes)
    print(f"base {base_path}: {config.model.name} strings, width {base.arch.width}, depth "
          f"{base.arch.depth}, train {base.train_size} px, eval {base.eval_size} px; "
          f"{classes} classes ({source})")
    print(f"alpha {f.alpha}, beta {f.beta}, gamma {f.gamma}: FLOPs factor "
          f"alpha*beta^2*gamma^2 = "
          f"{compound.flops_factor(f.alpha, f.beta, f.gamma):.3f} per unit of phi")
    header = (f"{'rule':<4} {'phi':>5} {'width':>6} {'depth':>6} {'blocks':>6} {'train':>5} "
              f"{'eval':>5} {'params':>12} {'FLOPs':>9} {'x base':>7}  config")
    print(header)
    print(f"{'base':<4} {0:>5g} {base.arch.width:>6.3f} {base.arch.depth:>6.3f} "
          f"{resolve_arch(base.arch).num_blocks:>6} {base.train_size:>5} "
          f"{base.eval_size:>5} {base_params:>12,} {_human(base_flops):>9} {1.0:>7.2f}  "
          f"{base_path}")
    rules = ("v1", "v2") if f.rule == "both" else (f.rule,)
    for rule in rules:
        for phi in parse_phis(f.phi):
            member, multiple = _member(f, rule, base, phi)
            params = count_params(member.arch, num_classes=classes)["trainable"]
            flops = count_flops(member.arch, member.eval_size, num_classes=classes)
            path = "-"
            if out != "none":
                path = os.path.join(out, f"{stem}_{rule}_phi{phi:g}.py")
                doc = (f"{stem} scaled by the {rule.upper()} rule, phi={phi:g} "
                       f"(alpha={member.alpha}, beta={member.beta}, gamma={member.gamma}).\n\n"
                       f"    python -m effnetv2_jax.main --config={path} --workdir=DIR\n\n"
                       f"Written by `python -m effnetv2_jax.scaling` from {base_path}:\n"
                       f"width {member.width:.4f}, depth {member.depth:.4f}, "
                       f"{member.num_blocks} blocks, train {member.train_size} px, eval "
                       f"{member.eval_size} px;\n{params:,} trainable parameters and "
                       f"{flops / 1e9:.3f} B multiply-adds at {member.eval_size} px with "
                       f"{classes} classes.")
                configs.write_config(path, configs.member_config(config, base, member,
                                                                 multiple), doc)
            print(f"{rule:<4} {phi:>5g} {member.width:>6.3f} {member.depth:>6.3f} "
                  f"{member.num_blocks:>6} {member.train_size:>5} {member.eval_size:>5} "
                  f"{params:>12,} {_human(flops):>9} {flops / base_flops:>7.2f}  {path}")


def search(f, config) -> None:
    if not f.workdir:
        raise ValueError("--search needs --workdir=DIR (results.jsonl and the candidates' "
                         "checkpoints; reuse it to resume)")
    candidates = grid_search.grid_candidates(
        _floats("alphas", f.alphas), _floats("betas", f.betas),
        _floats("gammas", f.gammas), target=f.target, tolerance=f.tolerance)
    print(f"{len(candidates)} candidates with |alpha*beta^2*gamma^2 - {f.target}| <= "
          f"{f.tolerance}; results in {os.path.join(f.workdir, grid_search.RESULTS_FILE)}")
    records = grid_search.run_grid_search(config, f.workdir, candidates,
                                      resolution_multiple=f.resolution_multiple or 8)
    print(f"{'rank':>4} {'alpha':>6} {'beta':>6} {'gamma':>6} {'factor':>6} {'accuracy':>8} "
          f"{'step s':>8} {'params':>10} {'FLOPs(M)':>9}")
    for rank, r in enumerate(records, 1):
        if r.get("accuracy") is None:
            print(f"{rank:>4} {r['alpha']:>6.3f} {r['beta']:>6.3f} {r['gamma']:>6.3f} "
                  f"{r['flops_factor']:>6.3f}  failed: {r.get('error')}")
            continue
        print(f"{rank:>4} {r['alpha']:>6.3f} {r['beta']:>6.3f} {r['gamma']:>6.3f} "
              f"{r['flops_factor']:>6.3f} {r['accuracy']:>8.4f} {r['step_seconds']:>8.4f} "
              f"{r['params']:>10,} {r['flops'] / 1e6:>9.2f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(f"{__doc__}\nflags:\n{define_flags(argv).get_help(include_special_flags=False)}")
        return 0
    cpu.configure_process(restart_allocator=False)  # XLA:CPU flags (cpu/xla_flags.py)
    try:
        f = parse_flags(argv)
    except Exception as error:
        # A misspelt key in --base.KEY=... or in the base file: one line, as the other commands.
        unknown = config_check.diagnose(argv, "base") or config_check.from_exception(error)
        if unknown is not None:
            print(f"effnetv2_jax.scaling: {unknown}", file=sys.stderr)
            return 2
        if not isinstance(error, flags.Error):
            raise
        print(f"error: {error}\nusage: python -m effnetv2_jax.scaling --base=CONFIG "
              f"[--phi=1..4] [--rule=v1|v2|both] [--out=DIR] | --search --workdir=DIR",
              file=sys.stderr)
        return 2
    config = f.base
    try:
        if f.search:
            search(f, config)
        else:
            family(f, config, config_flags.get_config_filename(f["base"]))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
