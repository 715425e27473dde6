"""Shared by the fault tests: one compilation cache and one uninterrupted tiny run per worker."""

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "configs"))

import harness  # noqa: E402
import tiny  # noqa: E402

from effnetv2_jax.train import loop  # noqa: E402


def _shared_dir(tmp_path_factory) -> Path:
    """A directory shared by the pytest-xdist workers of this session (or this process's)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """One persistent compilation cache for every run and worker (restarts skip compiling, as
    they do for users: the cache lives in the workdir by default)."""
    path = _shared_dir(tmp_path_factory) / "reliability_compile_cache"
    path.mkdir(exist_ok=True)
    return str(path)


tiny_config = tiny.with_compile_cache


@pytest.fixture(scope="session")
def reference(tmp_path_factory, compile_cache):
    """(workdir, final state) of an uninterrupted run: what every interrupted run must equal.

    Run once per session: the first worker to ask trains it, the others wait for it.
    """
    shared = _shared_dir(tmp_path_factory)
    workdir, done = shared / "uninterrupted", shared / "uninterrupted.done"
    failed = shared / "uninterrupted.failed"
    try:
        os.close(os.open(shared / "uninterrupted.lock", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        deadline = time.time() + 1200
        while not done.exists():
            assert not failed.exists(), "the worker training the reference run failed"
            assert time.time() < deadline, "the reference run took over 20 minutes"
            time.sleep(0.5)
    else:
        try:
            loop.train_and_evaluate(tiny_config(compile_cache), str(workdir))
        except BaseException:
            failed.touch()
            raise
        done.touch()
    return workdir, harness.final_state(workdir)
