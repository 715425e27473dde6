"""Command line: `python -m effnetv2_jax.main --config=configs/s_imagenet.py --workdir=DIR`.

Kept short on purpose: flags in, `train_and_evaluate` / `evaluate` / `compile_check` out. On a
CPU host the command first restarts itself once with mimalloc preloaded, so that XLA's step
buffers are reused instead of faulted in again each step (`cpu/allocator.py`;
EFFNETV2_JAX_ALLOCATOR=system turns it off), and sets the XLA:CPU flags (`cpu/xla_flags.py`;
EFFNETV2_JAX_KEEP_XLA_FLAGS=1 turns them off). Override any config key with `--config.key=value`
(e.g. `--config.train.global_batch_size=256`); an unknown key or a value of the wrong type stops
here, before anything is built. Running the same command again in the same workdir resumes from
its latest checkpoint. SIGTERM (a preemption) at any moment of a training run ends it with exit
code 0: during start-up before anything is written, later after saving the step it finished
(`train/preemption.py`).

`--mode=compile --topology=v5p-64` compiles every progressive stage's train step and the eval
step for that TPU slice on this machine (libtpu, no TPU needed), prints memory, FLOPs and a
roofline estimate per step, writes them to the workdir, and exits non-zero naming any step
that does not fit (`train/aot.py`).
"""

import sys

from effnetv2_jax.train import preemption  # os and signal only: milliseconds

if __name__ == "__main__":  # first: a SIGTERM from here on is recorded, not fatal
    preemption.hold()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from effnetv2_jax import cpu  # noqa: E402
from effnetv2_jax.train import config_check  # noqa: E402

_MODES = ("train", "eval", "train_and_eval", "compile")

_COMPILING = "--mode=compile" in sys.argv or any(
    a == "--mode" and b == "compile" for a, b in zip(sys.argv, sys.argv[1:]))
if __name__ == "__main__":  # before the imports below take seconds and start threads
    cpu.configure_process(restart_allocator=not _COMPILING)  # compiling runs no XLA:CPU step
    preemption.install()

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, compile cache.")
_MODE = flags.DEFINE_enum("mode", None, _MODES, "Overrides config.mode; 'compile' compiles "
                          "every step for --topology (or this job's devices) and reports.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "--mode=compile: a TPU slice as gcloud names "
                                "it (v4-8, v5litepod-16, v5p-64, v6e-8) or a libtpu topology "
                                "(v5e:2x2); unset: this job's devices.")
_SLICES = flags.DEFINE_integer("slices", 1, "--mode=compile: slices of --topology over DCN.")
_STAGES = flags.DEFINE_enum("stages", "all", ("all", "last"), "--mode=compile: every stage's "
                            "train step and the eval step, or only the last (largest) stage's.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from effnetv2_jax.logs import quiet_orbax  # noqa: PLC0415

    quiet_orbax()  # Orbax's INFO lines only with --logger_levels=orbax:INFO (logs.py)
    config = _CONFIG.value
    mode = _MODE.value or config.mode
    if mode != "compile" and (_TOPOLOGY.value or _SLICES.value != 1 or _STAGES.value != "all"):
        raise app.UsageError("--topology, --slices and --stages are for --mode=compile")
    logging.info("config:\n%s", config)
    if mode in ("eval", "compile"):
        preemption.release()  # nothing to save: SIGTERM ends these at once, as by default
    elif preemption.requested() and not _may_have_peers(config):
        logging.warning("preempted during start-up (before set-up): nothing built or written; "
                        "exiting")
        return
    if mode == "compile":
        from effnetv2_jax.train import aot, topology  # noqa: PLC0415
        if _TOPOLOGY.value:
            topology.quiet_libtpu()  # before libtpu loads: this host need not be a TPU VM
        try:
            aot.compile_check(config, _WORKDIR.value, _TOPOLOGY.value, _SLICES.value,
                              _STAGES.value)
        except aot.CompileCheckError as error:
            sys.exit(f"compile check failed:\n{error}")
        return
    from effnetv2_jax.train.loop import evaluate, train_and_evaluate  # noqa: PLC0415
    with config.unlocked():
        config.mode = mode
    if mode == "eval":
        results = evaluate(config, _WORKDIR.value)
    else:
        results = train_and_evaluate(config, _WORKDIR.value)
    if results:
        logging.info("final evaluation: %s", results)
        print(" ".join(f"{k}={v:.4f}" for k, v in sorted(results.items())))


def _may_have_peers(config) -> bool:
    """Other processes may be starting this run with us (they wait for us in
    jax.distributed.initialize, so a SIGTERM waits for set-up and JAX's sync service)."""
    from effnetv2_jax.train import sharding  # noqa: PLC0415 - imports JAX

    return bool(config.distributed.coordinator_address) or sharding.on_cloud_tpu()


def run() -> None:
    """The `effnetv2-train` console script (setup.py): `python -m effnetv2_jax.main` under
    another name, with the same process set-up first."""
    preemption.hold()
    cpu.configure_process(restart_allocator=not _COMPILING)
    preemption.install()
    app.run(main, flags_parser=config_check.parse_flags)


if __name__ == "__main__":
    # An unknown --config.KEY or recipe key: one line naming it and the closest valid keys.
    app.run(main, flags_parser=config_check.parse_flags)
