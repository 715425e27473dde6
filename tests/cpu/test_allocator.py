"""The command line's restart with another allocator: which one and when, that it keeps the
command and the user's settings, and that XLA's per-call buffers then stop faulting pages in."""

import os
import subprocess
import sys

import pytest

from effnetv2_jax.cpu import allocator

ENV_NAMES = (allocator.ENV, "GLIBC_TUNABLES", "JAX_PLATFORMS", "LD_PRELOAD",
             *allocator.MIMALLOC_OPTIONS)
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
needs_mimalloc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or allocator.mimalloc_library() is None,
    reason="needs the cmeel-mimalloc wheel (the cpu extra installs it on Linux)")
needs_huge_pages = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and allocator._huge_pages_apply()),
    reason="needs glibc >= 2.35 and transparent huge pages in madvise mode")


def _env(**extra):
    # JAX_PLATFORMS=cpu: a CPU host even where libtpu is installed (the test extra has it).
    return {**{k: v for k, v in os.environ.items() if k not in ENV_NAMES},
            "JAX_PLATFORMS": "cpu", **extra}


@pytest.fixture
def clean_env(monkeypatch):
    """No allocator settings, and a CPU host: the test extra installs libtpu (for the TPU
    compile checks), which would otherwise read as an accelerator plugin."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator, "ACCELERATOR_MODULES", ("no_such_plugin",))
    return monkeypatch


@needs_mimalloc
def test_mimalloc_by_default_on_a_cpu_host_unless_the_user_says_otherwise(clean_env):
    assert allocator.choice() == "mimalloc"  # no accelerator plugin (clean_env)
    for name, value in ((allocator.ENV, "system"), ("JAX_PLATFORMS", "cuda,cpu"),
                        ("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0"),
                        ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2"),
                        ("LD_PRELOAD", str(allocator.mimalloc_library()))):
        with clean_env.context() as m:
            m.setenv(name, value)
            assert allocator.choice() is None, (name, value)
    clean_env.setenv("JAX_PLATFORMS", "cpu")
    clean_env.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # another tunable
    clean_env.setenv("LD_PRELOAD", "/some/libother.so")               # another preload
    assert allocator.choice() == "mimalloc"
    env = allocator.restart_environment("mimalloc")
    assert env["LD_PRELOAD"] == f"{allocator.mimalloc_library()}:/some/libother.so"
    assert env["MIMALLOC_PURGE_DELAY"] == "-1" and env["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=2"


@needs_huge_pages
def test_huge_pages_where_mimalloc_is_missing_or_asked_for(clean_env):
    clean_env.setattr(allocator, "mimalloc_library", lambda: None)
    assert allocator.choice() == "huge-pages"
    clean_env.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert allocator.restart_environment("huge-pages")["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    clean_env.undo()
    clean_env.setenv(allocator.ENV, "huge-pages")
    assert allocator.choice() == "huge-pages"
    clean_env.setattr(allocator, "THP_MODE", allocator.THP_MODE.with_name("no_such_file"))
    assert allocator.transparent_huge_page_mode() is None
    with pytest.raises(ValueError, match="huge-pages needs glibc >= 2.35 and transparent"):
        allocator.choice()


@linux
def test_a_wrong_or_unavailable_choice_fails_with_the_fix(clean_env):
    clean_env.setenv(allocator.ENV, "jemalloc")
    with pytest.raises(ValueError, match="expected one of auto, mimalloc, huge-pages, system"):
        allocator.choice()
    clean_env.setenv(allocator.ENV, "mimalloc")
    clean_env.setattr(allocator, "mimalloc_library", lambda: None)
    with pytest.raises(ValueError,
                       match=r"cmeel-mimalloc package is not installed: pip install .effnetv2_jax\[cpu\]"):
        allocator.choice()
    clean_env.setattr(allocator, "_huge_pages_apply", lambda: False)
    clean_env.setenv(allocator.ENV, "auto")
    assert allocator.choice() is None  # auto: nothing that helps here, so no restart


def test_an_installed_accelerator_plugin_rules_it_out(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(allocator, "ACCELERATOR_MODULES", ("json",))  # any importable module
    assert allocator._accelerator_possible()
    monkeypatch.setattr(allocator, "ACCELERATOR_MODULES", ("no_such_plugin", "no_such.sub"))
    assert not allocator._accelerator_possible()


@needs_mimalloc
def test_without_ours_removes_exactly_what_the_restart_added(clean_env):
    clean_env.setenv("LD_PRELOAD", "/some/libother.so")
    clean_env.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    clean_env.setenv("MIMALLOC_VERBOSE", "1")
    for kind in ("mimalloc", "huge-pages"):
        shipped = allocator.without_ours(allocator.restart_environment(kind))
        assert shipped == {**os.environ, allocator.ENV: "system"}, kind
    clean_env.setenv("MIMALLOC_PURGE_DELAY", "250")  # the user's own value stays
    assert allocator.without_ours(allocator.restart_environment("mimalloc"))[
        "MIMALLOC_PURGE_DELAY"] == "250"


# Restarts, then calls a jitted function whose 64 MiB intermediate (sin(x), not fused into the
# dot) lives in XLA's temporary buffer, and prints the most page faults of its last calls.
_SCRIPT = """
import os, resource, sys
print("start", os.environ.get("LD_PRELOAD", ""), os.environ.get("GLIBC_TUNABLES", ""),
      sys.argv[1:], flush=True)
from effnetv2_jax.cpu import allocator
allocator.restart()
print("running", allocator.running(), flush=True)
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


def _run_script(**env):
    done = subprocess.run([sys.executable, "-c", _SCRIPT, "--flag=1", "two words"],
                          env=_env(**env), capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    starts = [line for line in lines if line.startswith("start")]
    running = [line.split()[1] for line in lines if line.startswith("running")]
    return starts, running, int(lines[-1].split()[1]), done.stderr


@pytest.mark.slow  # two fresh processes that run XLA steps
@needs_mimalloc
def test_restart_with_mimalloc_keeps_the_command_and_stops_page_faults():
    starts, running, faults, stderr = _run_script(GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    library = allocator.mimalloc_library()
    assert starts == [
        "start  glibc.malloc.arena_max=4 ['--flag=1', 'two words']",
        f"start {library} glibc.malloc.arena_max=4 ['--flag=1', 'two words']"]
    assert running == ["mimalloc"]
    assert stderr.count("restarting with LD_PRELOAD=") == 1
    starts, running, without, _ = _run_script(**{allocator.ENV: "system"})
    assert len(starts) == 1 and running == ["system"]
    # 64 MiB is 16384 pages of 4 KiB: glibc maps it afresh each call, mimalloc reuses it.
    assert without > 10000 and faults < 100, (without, faults)


@pytest.mark.slow  # a fresh process that runs XLA steps
@needs_huge_pages
def test_restart_with_huge_pages_cuts_page_faults():
    starts, running, faults, stderr = _run_script(**{allocator.ENV: "huge-pages"})
    assert starts == ["start   ['--flag=1', 'two words']",
                      "start  glibc.malloc.hugetlb=1 ['--flag=1', 'two words']"]
    assert stderr.count("restarting with GLIBC_TUNABLES=glibc.malloc.hugetlb=1") == 1
    assert running == ["huge-pages"]
    assert faults < 1000, faults  # 64 MiB is 32 huge pages


@needs_mimalloc
def test_the_command_line_restarts_once_then_parses_its_flags():
    done = subprocess.run([sys.executable, "-m", "effnetv2_jax.main"], env=_env(),
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert done.stderr.count("restarting with LD_PRELOAD=") == 1
    assert "Flag --config must have a value other than None" in done.stderr


@linux
def test_a_preload_that_did_not_load_is_reported():
    code = "from effnetv2_jax.cpu import allocator; allocator.restart(); print(allocator.running())"
    done = subprocess.run([sys.executable, "-c", code],
                          env=_env(LD_PRELOAD="/no/such/libmimalloc.so"),
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["system"]
    assert "LD_PRELOAD=/no/such/libmimalloc.so did not load" in done.stderr


def test_a_failed_restart_goes_on(monkeypatch, capsys):
    def refuse(*args):
        raise PermissionError("exec refused")

    monkeypatch.setattr(allocator, "choice", lambda: "huge-pages")
    monkeypatch.setattr(allocator.os, "execve", refuse)
    allocator.restart()  # returns instead of raising
    err = capsys.readouterr().err
    assert "could not restart (exec refused); going on with this allocator" in err
