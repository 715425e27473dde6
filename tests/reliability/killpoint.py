"""`python tests/reliability/killpoint.py POINT <effnetv2_jax.main flags>`: the training command,
SIGKILLed by itself from inside one exact moment, for kill tests that must hit that moment
every time (an outside kill at a random time is what benchmarks/faults.py adds).

POINT:
  compile:N     during the N-th ahead-of-time compilation (N=2: the second stage's train step):
                the kill fires from a timer thread while the main thread is inside compile().
  checkpoint:S  during the asynchronous write of checkpoint step S, in Orbax's background
                thread, after the arrays are written and before the step is committed
                (renamed on a local disk; its commit marker written on gs://).
  eval:N        during the N-th evaluation, after its first batch.
"""

import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _on_compile(n: int) -> None:
    import jax  # noqa: PLC0415

    original, calls = jax.stages.Lowered.compile, [0]

    def compile_then_die(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            print(f"killpoint: SIGKILL inside compilation {n}", flush=True)
            threading.Timer(0.01, _die).start()
        return original(self, *args, **kwargs)

    jax.stages.Lowered.compile = compile_then_die


def _on_checkpoint(step: int) -> None:
    from orbax.checkpoint._src.path import atomicity  # noqa: PLC0415

    def patch(cls, is_step):
        original = cls.finalize

        async def finalize_or_die(self, *args, **kwargs):
            if is_step(self.get_final()):
                print(f"killpoint: SIGKILL inside the asynchronous write of step {step}",
                      flush=True)
                _die()
            return await original(self, *args, **kwargs)

        cls.finalize = finalize_or_die

    # On a local disk Orbax renames `<step>.orbax-checkpoint-tmp-*` when the step is complete;
    # on gs:// it writes in place and commits with a marker file: die before either.
    patch(atomicity.AtomicRenameTemporaryPath,
          lambda final: final.name == "state" and final.parent.name.startswith(f"{step}."))
    patch(atomicity.CommitFileTemporaryPath,
          lambda final: final.name == str(step) or (final.name == "state"
                                                    and final.parent.name == str(step)))


def _on_eval(n: int) -> None:
    from effnetv2_jax import data  # noqa: PLC0415

    original, calls = data.make_eval_iterator, [0]

    def batches_then_die(*args, **kwargs):
        calls[0] += 1
        iterator = original(*args, **kwargs)
        if calls[0] != n:
            return iterator

        def generate():
            yield next(iterator)
            print(f"killpoint: SIGKILL inside evaluation {n}", flush=True)
            _die()

        return generate()

    data.make_eval_iterator = batches_then_die


def main() -> None:
    point, argv = sys.argv[1], [sys.argv[0], *sys.argv[2:]]
    kind, _, number = point.partition(":")
    {"compile": _on_compile, "checkpoint": _on_checkpoint, "eval": _on_eval}[kind](int(number))
    from absl import app  # noqa: PLC0415

    from effnetv2_jax import main as entry  # noqa: PLC0415
    app.run(entry.main, argv=argv)


if __name__ == "__main__":
    main()
