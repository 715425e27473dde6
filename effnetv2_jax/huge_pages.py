"""Transparent huge pages for XLA:CPU's per-step buffers: the command line restarts itself once
with glibc's `glibc.malloc.hugetlb=1` tunable.

Each XLA:CPU execution allocates its temporary buffer (1.5 GB for the V2-S train step at 128 px,
batch 32) and frees it when it ends. glibc serves blocks that large with a fresh `mmap`, so every
step faults each 4 KiB page in again: 376,000 page faults per V2-S step, a fifth of its CPU time
in the kernel (`perf`). With the tunable, glibc asks the kernel for 2 MiB pages for its large
blocks (`madvise(MADV_HUGEPAGE)`): about 1,200 faults per step, and the step takes 2.2 instead of
2.65 s on 2 cores (eval at 224 px: 1.52 -> 1.44 s; `benchmarks/vs_timm.py` has the current
figures). Memory is still returned after each step, as before.

Keeping the freed memory instead (`mallopt`: one arena, no mmap, no trim) avoids the faults in
the same process, but the heap then fragments: a V2-S run grew by 1.4 GB at its 29th step.

glibc reads tunables only when a process starts, so `restart_with_huge_pages` execs the same
command again with GLIBC_TUNABLES extended. It does so only where it pays and is safe:
  - Linux, glibc 2.35 or newer (the tunable's first release), transparent huge pages in
    "madvise" mode (with "always" the kernel already uses them; with "never" nothing would);
  - JAX's computations run on the CPU: not if JAX_PLATFORMS names another platform first or a
    GPU/TPU plugin is installed (their step buffers live on the device);
  - not if GLIBC_TUNABLES already sets glibc.malloc.hugetlb (the user's value wins; this also
    stops a second restart), and not if EFFNETV2_JAX_HUGE_PAGES=0.
Callers are entry points (`effnetv2_jax.main`, the benchmarks), never library code: an exec
replaces the whole process.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# Installed plugins that give JAX a GPU or TPU backend.
ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")


def transparent_huge_page_mode() -> str | None:
    """The kernel's THP mode ("always", "madvise" or "never"), None where it cannot be read."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def _glibc_with_tunable() -> bool:
    name, version = platform.libc_ver()
    try:
        return name == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 35)
    except ValueError:
        return False


def _accelerator_possible() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    for name in ACCELERATOR_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):  # a parent package that is absent
            continue
    return False


def wanted() -> bool:
    """Whether this process should restart with huge pages (the rules above)."""
    return (sys.platform.startswith("linux") and _glibc_with_tunable()
            and os.environ.get("EFFNETV2_JAX_HUGE_PAGES", "1") != "0"
            and TUNABLE not in os.environ.get("GLIBC_TUNABLES", "")
            and transparent_huge_page_mode() == "madvise"
            and not _accelerator_possible()
            and bool(sys.executable) and bool(getattr(sys, "orig_argv", None)))


def restart_with_huge_pages() -> None:
    """Execs this process's own command line again with `glibc.malloc.hugetlb=1` added to
    GLIBC_TUNABLES, where `wanted()`; returns (doing nothing) otherwise, or if the exec fails
    (after saying so on stderr). Call it first thing in an entry point, before threads start or
    files are written."""
    if not wanted():
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    env = {**os.environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}=1" if tunables
           else f"{TUNABLE}=1"}
    print(f"effnetv2_jax: restarting with GLIBC_TUNABLES={env['GLIBC_TUNABLES']} (huge pages for "
          "XLA's buffers; EFFNETV2_JAX_HUGE_PAGES=0 skips this)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as error:  # the run goes on as it is, only slower
        print(f"effnetv2_jax: could not restart ({error}); going on without huge pages",
              file=sys.stderr)
