"""SIGTERM (a preemption notice) from the entry point's first lines to the last step.

A TPU VM or a batch scheduler sends SIGTERM and, a grace period later, SIGKILL. Python's
default for SIGTERM ends the process at once, which during start-up gave exit code -15 (a
failure to a launcher that restarts preempted runs only after a clean exit). Here the signal is
recorded, never acted on in the middle of something:

* `hold()` and `install()` are the entry point's first calls (`main.py`). `hold()` blocks
  SIGTERM, so one that arrives while the process execs itself with another allocator
  (`cpu/allocator.py`) stays pending across the exec (the signal mask and pending signals
  survive `execve`); `install()` sets the recording handler and unblocks, and a pending
  SIGTERM is recorded then. Only the interpreter's own start and the package's import
  (about 50 ms) come before.
* Training looks at the record between phases: after parsing flags (`main.py`; one process
  only: processes that start `jax.distributed` together wait for each other), after set-up
  (data metadata, model, restore: before compiling), after compiling (before the first step),
  and after every step, where it saves and stops (`train/loop.py`). A SIGTERM before the first
  step thus ends the run with exit code 0, having written nothing new: no checkpoint, not even
  a partial one. A phase in progress (a compilation) is finished first; the grace period's
  SIGKILL during it is harmless, as nothing is being written.
* Modes that write nothing to resume from (`eval`, `compile`) `release()` the signal: the
  default action again, and a SIGTERM that arrived during start-up ends them now, as it would
  have without this module (exit status -15, i.e. 143 in a shell).
* With several processes, JAX's preemption sync service watches SIGTERM once
  `jax.distributed` is initialised (it replaces the handler); a SIGTERM recorded here before
  that is passed on to it (`Preemption.attach`), so every process saves at the same step.

Library use (`train_and_evaluate` from a notebook) gets the handler from `Preemption()`.
"""

from __future__ import annotations

import os
import signal

_requested = False
_installed = False


def _record(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    global _requested
    if not _requested:
        from absl import logging  # noqa: PLC0415 - imported late: hold() comes first

        logging.warning("SIGTERM received: stopping at the next safe point (after this step "
                        "or, during start-up, before anything is written)")
    _requested = True


def hold() -> None:
    """Blocks SIGTERM in this thread (before any other starts): it waits, pending, for
    `install()`, also across an exec."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def install() -> None:
    """Records SIGTERM from now on (a pending one at once); main thread only."""
    global _installed
    signal.signal(signal.SIGTERM, _record)
    _installed = True
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def requested() -> bool:
    """Whether a SIGTERM has been recorded."""
    return _requested


def release() -> None:
    """SIGTERM's default action again (modes with nothing to save); one recorded already ends
    the process now."""
    global _installed
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    _installed = False
    if _requested:
        os.kill(os.getpid(), signal.SIGTERM)


class Preemption:
    """The training loop's view: `requested` during start-up, `reached(step)` after a step.

    Installs the handler unless the entry point did (then it stays for the process's end);
    `restore()` puts back what was there before.
    """

    def __init__(self):
        self.distributed = False
        self._previous = None
        if not _installed:  # library use: this run's own handler, and a fresh record
            global _requested
            _requested = False
            self._previous = signal.getsignal(signal.SIGTERM)
            install()

    @property
    def requested(self) -> bool:
        return _requested

    def attach(self) -> None:
        """After `jax.distributed` is set up (`run.setup`): several processes hand SIGTERM to
        JAX's sync service, one process records it here (again: a single-host Cloud TPU's
        `jax.distributed.initialize` replaced the handler)."""
        import jax  # noqa: PLC0415 - this module is imported before JAX by main.py

        self.distributed = jax.process_count() > 1
        if not self.distributed:
            signal.signal(signal.SIGTERM, _record)
        elif _requested:
            from absl import logging  # noqa: PLC0415

            logging.warning("passing the SIGTERM received during start-up to JAX's "
                            "preemption sync service")
            os.kill(os.getpid(), signal.SIGTERM)

    def reached(self, step: int) -> bool:
        """Whether to save at `step` and stop (all processes agree on the step)."""
        if self.distributed:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            return multihost_utils.reached_preemption_sync_point(step)
        return _requested

    def restore(self) -> None:
        global _installed
        if self._previous is not None and not self.distributed:
            signal.signal(signal.SIGTERM, self._previous)
            _installed = False
