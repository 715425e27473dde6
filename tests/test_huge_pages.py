"""The command line's restart with glibc's huge pages: where it happens, that it keeps the command
and the user's settings, and that XLA's per-call buffers then stop faulting in 4 KiB pages."""

import os
import subprocess
import sys

import pytest

from effnetv2_jax import huge_pages

ENV_NAMES = ("EFFNETV2_JAX_HUGE_PAGES", "GLIBC_TUNABLES", "JAX_PLATFORMS")
needs_madvise_thp = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and huge_pages._glibc_with_tunable()
         and huge_pages.transparent_huge_page_mode() == "madvise"),
    reason="needs glibc >= 2.35 and transparent huge pages in madvise mode")


def _env(**extra):
    return {**{k: v for k, v in os.environ.items() if k not in ENV_NAMES}, **extra}


@needs_madvise_thp
def test_wanted_on_a_cpu_host_unless_the_user_says_otherwise(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    assert huge_pages.wanted()  # no accelerator plugin in the test environment
    for name, value in (("EFFNETV2_JAX_HUGE_PAGES", "0"), ("JAX_PLATFORMS", "cuda,cpu"),
                        ("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            assert not huge_pages.wanted(), name
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # another tunable
    assert huge_pages.wanted()
    monkeypatch.setattr(huge_pages, "THP_MODE", huge_pages.THP_MODE.with_name("no_such_file"))
    assert huge_pages.transparent_huge_page_mode() is None and not huge_pages.wanted()


def test_an_installed_accelerator_plugin_rules_it_out(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(huge_pages, "ACCELERATOR_MODULES", ("json",))  # any importable module
    assert huge_pages._accelerator_possible()
    monkeypatch.setattr(huge_pages, "ACCELERATOR_MODULES", ("no_such_plugin", "no_such.sub"))
    assert not huge_pages._accelerator_possible()


# Restarts, then calls a jitted function whose 64 MiB intermediate (sin(x), not fused into the
# dot) lives in XLA's temporary buffer, and prints the most page faults of its last calls.
_SCRIPT = """
import os, resource, sys
print("start", os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], flush=True)
from effnetv2_jax import huge_pages
huge_pages.restart_with_huge_pages()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: (jnp.sin(x) @ w).sum())
x, w = jnp.ones((8192, 2048)), jnp.ones((2048, 8))
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("faults", max(faults[-3:]))
"""


@needs_madvise_thp
def test_restart_keeps_the_command_and_cuts_page_faults():
    def run(**env):
        done = subprocess.run([sys.executable, "-c", _SCRIPT, "--flag=1", "two words"],
                              env=_env(**env), capture_output=True, text=True, check=True)
        return done.stdout.splitlines(), done.stderr

    lines, stderr = run(GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    starts = [line for line in lines if line.startswith("start")]
    assert starts == [
        "start glibc.malloc.arena_max=4 ['--flag=1', 'two words']",
        "start glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1 ['--flag=1', 'two words']"]
    assert stderr.count("restarting with GLIBC_TUNABLES") == 1
    with_huge_pages = int(lines[-1].split()[1])
    lines, stderr = run(EFFNETV2_JAX_HUGE_PAGES="0")
    assert len([line for line in lines if line.startswith("start")]) == 1
    without = int(lines[-1].split()[1])
    # 64 MiB is 16384 pages of 4 KiB, or 32 huge pages.
    assert without > 10000 and with_huge_pages < 1000, (without, with_huge_pages)


@needs_madvise_thp
def test_the_command_line_restarts_once_then_parses_its_flags():
    done = subprocess.run([sys.executable, "-m", "effnetv2_jax.main"], env=_env(),
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert done.stderr.count("restarting with GLIBC_TUNABLES=glibc.malloc.hugetlb=1") == 1
    assert "Flag --config must have a value other than None" in done.stderr


def test_a_failed_restart_goes_on_without_huge_pages(monkeypatch, capsys):
    def refuse(*args):
        raise PermissionError("exec refused")

    monkeypatch.setattr(huge_pages, "wanted", lambda: True)
    monkeypatch.setattr(huge_pages.os, "execve", refuse)
    huge_pages.restart_with_huge_pages()  # returns instead of raising
    err = capsys.readouterr().err
    assert "could not restart (exec refused); going on without huge pages" in err
