"""Progress bars where people wait: evaluation, weight conversion, export and NAS candidates.

One library (tqdm) and one rule for all of them: a bar with a count, rate and ETA is drawn on
stderr only when stderr is a terminal and this is process 0 of a (multi-host) job. On a pipe, a
log file, in CI and on the other hosts nothing is drawn, so logs keep only their log lines.

    for batch in progress(batches, total=len(batches), desc="eval", unit="batch"):
        ...

EFFNETV2_JAX_PROGRESS=1 draws bars on a non-terminal too (process 0 only); =0 never draws them.
This module imports nothing of the package, so every layer may use it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TextIO

from tqdm import tqdm

ENV = "EFFNETV2_JAX_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _process_index() -> int:
    """This process's index among a multi-host job's, 0 when JAX is not in use yet.

    JAX is not imported for this: a tool that has not imported it runs on one process."""
    jax = sys.modules.get("jax")
    if jax is None:
        return 0
    try:
        return jax.process_index()
    except RuntimeError:  # no backend could start: not a multi-host job either
        return 0


def enabled(stream: TextIO | None = None) -> bool:
    """Whether bars are drawn on `stream` (default: stderr); see the module docstring."""
    setting = os.environ.get(ENV, "").strip().lower()
    if setting and setting not in _ON + _OFF:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: use 1 (always draw progress bars) or 0 "
                         f"(never); unset draws them on a terminal only")
    if setting in _OFF or _process_index() != 0:
        return False
    if setting in _ON:
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable: Iterable | None = None, *, total: int | None = None,
             desc: str | None = None, unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar on stderr, disabled where `enabled()` says no (then a plain pass-through).

    Args:
      iterable: what to iterate over; None for a bar advanced with `.update(n)`.
      total: the expected count (default: `len(iterable)` where it has one). Without it
        there is no ETA.
      desc: the bar's label ("eval", "convert", ...). unit: what is counted ("batch").
      kwargs: passed to tqdm.
    """
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not enabled(sys.stderr), dynamic_ncols=True, **kwargs)
