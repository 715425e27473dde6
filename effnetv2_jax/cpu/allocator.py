"""The command line's memory allocator: XLA:CPU's per-step buffers are reused, not faulted in
again each step. Entry points restart themselves once with mimalloc preloaded or, where it is
not installed, with glibc's huge pages.

Why. Each XLA:CPU execution allocates its temporary buffer (1.5 GB for the V2-S train step at
128 px, batch 32) and frees it when it ends. glibc serves blocks that large with a fresh `mmap`
and returns them with `munmap`, so every step the kernel faults that memory in and zeroes it
again (`perf` put a fifth of a V2-S step's CPU time there). glibc's `glibc.malloc.hugetlb=1`
tunable faults 2 MiB pages instead, far fewer, but zeroing them still costs.

What. mimalloc (the `cmeel-mimalloc` wheel of the `cpu` extra) in `LD_PRELOAD`, with
  - MIMALLOC_PURGE_DELAY=-1: memory a step frees stays with the process and the next step
    reuses it: no page faults at all in a step;
  - MIMALLOC_ALLOW_LARGE_OS_PAGES=1: 2 MiB pages (transparent huge pages) for its arenas, which
    keep its RSS near glibc's.
The process keeps the memory of its largest step, as PyTorch's caching allocator does. glibc's
own heap cannot do the same: keeping freed memory there (`mallopt`: no mmap, no trim), a V2-S
run's heap fragmented and grew. docs/performance.md gives the step times with each allocator.

Rules (`choice()`), from EFFNETV2_JAX_ALLOCATOR:
  - "auto" (the default): mimalloc where its library is installed, else glibc's huge pages where
    they apply (glibc 2.35 or newer, the tunable's first release; transparent huge pages in
    "madvise" mode: with "always" the kernel already uses them, with "never" nothing would);
  - "mimalloc" or "huge-pages": that one, or an error saying why it cannot be had;
  - "system": no restart.
No restart either where it would not help or was already done: not on Linux, JAX's computations
on an accelerator (JAX_PLATFORMS names another platform first, or a GPU/TPU plugin is
installed: step buffers live on the device), LD_PRELOAD already naming an allocator (mimalloc,
jemalloc, tcmalloc), or
GLIBC_TUNABLES already setting glibc.malloc.hugetlb (the user's values win; this also stops a
second restart).

Callers are entry points (`effnetv2_jax.main`, the benchmarks, through
`effnetv2_jax.cpu.configure_process`), never library code: an exec replaces the whole process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path

ENV = "EFFNETV2_JAX_ALLOCATOR"
CHOICES = ("auto", "mimalloc", "huge-pages", "system")
MIMALLOC_PACKAGE = "cmeel-mimalloc"
MIMALLOC_OPTIONS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ALLOW_LARGE_OS_PAGES": "1"}
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"
HUGE_PAGES_SETTING = f"{HUGE_PAGES_TUNABLE}=1"  # what the restart adds to GLIBC_TUNABLES
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# Installed plugins that give JAX a GPU or TPU backend.
ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")


def mimalloc_library() -> Path | None:
    """The installed `cmeel-mimalloc` wheel's libmimalloc.so, None where it is not installed."""
    try:
        files = importlib.metadata.distribution(MIMALLOC_PACKAGE).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "libmimalloc.so":
            path = Path(file.locate()).resolve()
            return path if path.is_file() else None
    return None


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


def _huge_pages_apply() -> bool:
    return _glibc_with_tunable() and transparent_huge_page_mode() == "madvise"


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


def _preloads_an_allocator() -> bool:
    preload = os.environ.get("LD_PRELOAD", "")
    return any(name in preload for name in ("mimalloc", "jemalloc", "tcmalloc"))


def choice() -> str | None:
    """"mimalloc", "huge-pages", or None (no restart), by the rules above.

    Raises:
      ValueError: EFFNETV2_JAX_ALLOCATOR is not one of CHOICES, or asks for an allocator this
        machine cannot give (the message says why and what to do).
    """
    wanted = os.environ.get(ENV, "auto")
    if wanted not in CHOICES:
        raise ValueError(f"{ENV}={wanted!r}: expected one of {', '.join(CHOICES)}")
    if (wanted == "system" or not sys.platform.startswith("linux") or _accelerator_possible()
            or _preloads_an_allocator()
            or HUGE_PAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "")
            or not sys.executable or not getattr(sys, "orig_argv", None)):
        return None
    if wanted in ("auto", "mimalloc") and mimalloc_library() is not None:
        return "mimalloc"
    if wanted == "mimalloc":
        raise ValueError(f"{ENV}=mimalloc, but the {MIMALLOC_PACKAGE} package is not installed: "
                         f"pip install 'effnetv2_jax[cpu]', or set {ENV}=auto")
    if _huge_pages_apply():
        return "huge-pages"
    if wanted == "huge-pages":
        raise ValueError(f"{ENV}=huge-pages needs glibc >= 2.35 and transparent huge pages in "
                         f"madvise mode (here: glibc {platform.libc_ver()[1] or '?'}, THP "
                         f"{transparent_huge_page_mode()}); set {ENV}=auto or system")
    return None


def restart_environment(kind: str) -> dict[str, str]:
    """This process's environment with `kind`'s settings added (the user's own values kept)."""
    env = dict(os.environ)
    if kind == "mimalloc":
        preload = os.environ.get("LD_PRELOAD", "")
        library = str(mimalloc_library())
        env["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
        for name, value in MIMALLOC_OPTIONS.items():
            env.setdefault(name, value)
    elif kind == "huge-pages":
        tunables = os.environ.get("GLIBC_TUNABLES", "")
        env["GLIBC_TUNABLES"] = (f"{tunables}:{HUGE_PAGES_SETTING}" if tunables
                                 else HUGE_PAGES_SETTING)
    else:
        raise ValueError(f"unknown allocator {kind!r}: expected mimalloc or huge-pages")
    return env


def without_ours(env: dict[str, str]) -> dict[str, str]:
    """`env` less what `restart_environment` adds (for a process that should run with glibc's
    defaults, as a third-party library's users run it), with EFFNETV2_JAX_ALLOCATOR=system."""
    out = dict(env)
    library = mimalloc_library()
    preload = [p for p in out.pop("LD_PRELOAD", "").split(":")
               if p and (library is None or Path(p).resolve() != library)]
    if preload:
        out["LD_PRELOAD"] = ":".join(preload)
    for name, value in MIMALLOC_OPTIONS.items():
        if out.get(name) == value:
            del out[name]
    tunables = [t for t in out.pop("GLIBC_TUNABLES", "").split(":")
                if t and t != HUGE_PAGES_SETTING]
    if tunables:
        out["GLIBC_TUNABLES"] = ":".join(tunables)
    out[ENV] = "system"
    return out


def running() -> str:
    """The allocator this process runs with: "mimalloc" (mapped into it), "huge-pages" (glibc
    with the tunable) or "system"."""
    try:
        if "libmimalloc" in Path("/proc/self/maps").read_text():
            return "mimalloc"
    except OSError:
        pass
    if HUGE_PAGES_SETTING in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        return "huge-pages"
    return "system"


def restart() -> None:
    """Execs this process's own command line again with `choice()`'s allocator, or returns
    (doing nothing) where there is none; also if the exec fails, after saying so on stderr. In
    the restarted process, says so on stderr if LD_PRELOAD names a mimalloc the loader did not
    load. Call it first thing in an entry point, before threads start or files are written."""
    kind = choice()
    if kind is None:
        if "mimalloc" in os.environ.get("LD_PRELOAD", "") and running() != "mimalloc":
            print(f"effnetv2_jax: LD_PRELOAD={os.environ['LD_PRELOAD']} did not load (see the "
                  "loader's message above); running with glibc's malloc", file=sys.stderr)
        return
    env = restart_environment(kind)
    settings = (f"LD_PRELOAD={env['LD_PRELOAD']}" if kind == "mimalloc"
                else f"GLIBC_TUNABLES={env['GLIBC_TUNABLES']}")
    print(f"effnetv2_jax: restarting with {settings} (XLA's step buffers reused; {ENV}=system "
          "skips this)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as error:  # the run goes on as it is, only slower
        print(f"effnetv2_jax: could not restart ({error}); going on with this allocator",
              file=sys.stderr)
