"""Which log lines the absl tools (train, evaluate, nas) show: Orbax's INFO lines only on request.

Orbax logs every save, wait and finalisation at INFO (about 190 of the 353 lines of a 6-step
tiny run) through `absl.logging`, so its lines reach the same "absl" logger as ours and no
logger name tells them apart. `quiet_orbax()`, called by the entry points after their flags are
parsed (importing the package changes no logging), filters that logger: a record from Orbax's
source files passes only at or above the level of the Python logger "orbax", WARNING unless
the command line set it with absl's own flag:

    python -m effnetv2_jax.main --config=... --workdir=... --logger_levels=orbax:INFO

Orbax's modules that log through Python's `logging` ("orbax.checkpoint...") follow the same
level, being children of "orbax".
"""

from __future__ import annotations

import logging
import os

from absl import logging as absl_logging

ORBAX_LOGGER = "orbax"
SWITCH = f"--logger_levels={ORBAX_LOGGER}:INFO"


class OrbaxLevelFilter(logging.Filter):
    """Passes a record from a file under `roots` only if the "orbax" logger is enabled for its
    level; every other record passes."""

    def __init__(self, roots: tuple[str, ...]):
        super().__init__()
        self.roots = roots

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(self.roots):
            return True
        return logging.getLogger(ORBAX_LOGGER).isEnabledFor(record.levelno)


def _orbax_roots() -> tuple[str, ...]:
    """The directories of the installed `orbax` namespace package (checkpoint, export, ...)."""
    try:
        import orbax  # noqa: PLC0415 - a namespace package: imports none of its subpackages
    except ImportError:
        return ()
    paths = {form(p) for p in orbax.__path__ for form in (os.path.abspath, os.path.realpath)}
    return tuple(os.path.join(p, "") for p in sorted(paths))


def quiet_orbax() -> None:
    """Orbax's lines below WARNING off, unless `--logger_levels=orbax:INFO` (or any level) set
    the "orbax" logger's level first. Idempotent."""
    orbax_logger = logging.getLogger(ORBAX_LOGGER)
    if orbax_logger.level == logging.NOTSET:
        orbax_logger.setLevel(logging.WARNING)
    absl_logger = absl_logging.get_absl_logger()
    if any(isinstance(f, OrbaxLevelFilter) for f in absl_logger.filters):
        return
    roots = _orbax_roots()
    if roots:
        absl_logger.addFilter(OrbaxLevelFilter(roots))
