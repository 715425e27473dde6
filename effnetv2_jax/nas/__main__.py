"""Command line: `python -m effnetv2_jax.nas --config=configs/nas_quickstart.py --workdir=DIR`.

Runs (or, in the same workdir, resumes) the search and prints each candidate as it finishes,
then the top `nas.top_k` candidates and where the log, `best_config.py` and `pareto.png` are.
Override any key with `--config.key=value`, e.g. `--config.nas.num_candidates=40`. On a
terminal a progress bar counts the candidates (with an ETA); `--logger_levels=orbax:INFO` shows
Orbax's checkpointing lines, which are off by default.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from effnetv2_jax import cpu
from effnetv2_jax.train import config_check

_CONFIG = config_flags.DEFINE_config_file("config", None, "Search config file (a training "
                                          "config with a `nas` section).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Log, candidates' runs, best config, plot.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from effnetv2_jax.logs import quiet_orbax  # noqa: PLC0415

    quiet_orbax()  # Orbax's INFO lines only with --logger_levels=orbax:INFO (logs.py)
    config = _CONFIG.value
    logging.info("config:\n%s", config)
    import jax  # noqa: PLC0415 - after the flags: --help imports no JAX

    from effnetv2_jax.nas import log, outputs  # noqa: PLC0415
    from effnetv2_jax.nas.search import run_search  # noqa: PLC0415

    printing = jax.process_index() == 0
    result = run_search(config, _WORKDIR.value,
                        on_record=lambda r: print(outputs.describe(r), flush=True)
                        if printing else None)
    if not printing:
        return
    failed = sum(not r.ok for r in result.records)
    print(f"\n{len(result.records)} candidates ({failed} failed); top {config.nas.top_k} "
          f"by reward A * S^{config.nas.reward_w} * P^{config.nas.reward_v}:")
    print(outputs.format_table(result.top(config.nas.top_k)))
    print(f"\nlog:         {os.path.join(result.workdir, log.LOG_NAME)}")
    if result.best is not None:
        print(f"best config: {os.path.join(result.workdir, outputs.BEST_CONFIG)}")
        print(f"plot:        {os.path.join(result.workdir, 'pareto.png')}")


def run() -> None:
    """The `effnetv2-nas` console script (setup.py): `python -m effnetv2_jax.nas` under another
    name, with the XLA:CPU flags set first (cpu/xla_flags.py)."""
    cpu.configure_process(restart_allocator=False)
    app.run(main, flags_parser=config_check.parse_flags)


if __name__ == "__main__":
    run()
