"""Command line: `python -m effnetv2_jax.main --config=configs/s_imagenet.py --workdir=DIR`.

Kept short on purpose: flags in, `train_and_evaluate` / `evaluate` out. On a CPU host the
command first restarts itself once with mimalloc preloaded, so that XLA's step buffers are reused
instead of faulted in again each step (`allocator.py`: the V2-S step 1.63 s instead of 2.12 s
with glibc's defaults; EFFNETV2_JAX_ALLOCATOR=system turns it off). Override any config key
with `--config.key=value` (e.g. `--config.train.global_batch_size=256`); an unknown key or a
value of the wrong type stops here, before anything is built. Running the same command again in
the same workdir resumes from its latest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from effnetv2_jax import allocator

if __name__ == "__main__":  # before the imports below take seconds and start threads
    allocator.restart()

from effnetv2_jax.train.loop import evaluate, train_and_evaluate  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, compile cache.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    logging.info("config:\n%s", config)
    if config.mode == "eval":
        results = evaluate(config, _WORKDIR.value)
    else:
        results = train_and_evaluate(config, _WORKDIR.value)
    if results:
        logging.info("final evaluation: %s", results)
        print(" ".join(f"{k}={v:.4f}" for k, v in sorted(results.items())))


if __name__ == "__main__":
    app.run(main)
