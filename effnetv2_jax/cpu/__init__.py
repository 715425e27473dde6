"""The XLA:CPU speed layer: what makes EfficientNet fast on a CPU, kept apart from the model.

  ops.py         the CPU implementation of the model's ops (`models.ops`); the model picks it
                 for CPU programs (`models.ops.ops_for`), nothing else imports it
  convs.py       the CPU convolutions (depthwise taps, 1x1 as GEMMs, Winograd dispatch)
  winograd.py    Winograd F(4x4, 3x3) for dense 3x3 stride-1 convs
  kernels.py     C++ kernels (kernels.cc) built on first use and called through jax.ffi
  allocator.py   the entry points' restart with mimalloc (EFFNETV2_JAX_ALLOCATOR=system: none)
  xla_flags.py   XLA:CPU flags for entry points (EFFNETV2_JAX_KEEP_XLA_FLAGS=1: none)

Every piece gives the numbers of XLA's ops; docs/performance.md says what each one buys.

Public API (importing this package imports neither JAX nor the kernels):
  configure_process()  for entry points, first thing: the XLA:CPU flags and the allocator
  kernels_enabled()    whether the CPU ops call the C++ kernels in this process
  kernel_targets()     the kernels' custom-call names (to allow or refuse them in a program)
"""

from __future__ import annotations

import sys

from effnetv2_jax.cpu import allocator, xla_flags

HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "--helpxml")


def configure_process(*, restart_allocator: bool = True) -> None:
    """Sets up this process for XLA:CPU compute; for entry points (CLIs, benchmarks, the test
    suite), never library code. Call it before JAX starts a backend.

    1. `xla_flags.apply()`: XLA_FLAGS gains the XLA:CPU flags (EFFNETV2_JAX_KEEP_XLA_FLAGS=1
       opts out);
    2. with `restart_allocator`, `allocator.restart()`: the process execs itself again with
       mimalloc (EFFNETV2_JAX_ALLOCATOR=system opts out), except when the command line asks for
       help (`HELP_FLAGS`), which computes nothing.
    """
    xla_flags.apply()
    if restart_allocator and not any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        allocator.restart()


def kernels_enabled() -> bool:
    """Whether the CPU ops call the C++ kernels here: built and loaded, on a single CPU device
    (`kernels.enabled`). Builds them on first call."""
    from effnetv2_jax.cpu import kernels  # noqa: PLC0415 - imports JAX
    return kernels.enabled()


def kernel_targets() -> tuple[str, ...]:
    """The XLA custom-call names of the C++ kernels (none may appear in a TPU or GPU program;
    `jax.export` must be told they are safe in a CPU one)."""
    from effnetv2_jax.cpu import kernels  # noqa: PLC0415 - imports JAX
    return kernels.TARGETS
