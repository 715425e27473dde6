"""Progress bars where people wait (effnetv2_jax/progress.py) and Orbax's INFO lines off by
default (effnetv2_jax/logs.py).

A bar (count and ETA) is drawn on a terminal and nothing on a pipe; EFFNETV2_JAX_PROGRESS forces
either way and processes other than 0 never draw. The slow test runs the tiny config twice, as
a user would: on a pseudo-terminal with the defaults (an evaluation bar, no Orbax INFO line),
and through a pipe with `--logger_levels=orbax:INFO` (no bar, Orbax's lines back).
"""

import fcntl
import logging
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
import types
from pathlib import Path

import pytest
from absl import logging as absl_logging

from effnetv2_jax import logs, progress

REPO = Path(__file__).resolve().parents[1]
BAR_SCRIPT = ("from effnetv2_jax.progress import progress\n"
              "for _ in progress(range(5), desc='work', unit='item'):\n"
              "    pass\n")
# A finished tqdm bar: count, then [elapsed<remaining (the ETA), rate].
FINISHED_BAR = re.compile(r"work: 100%.*5/5 \[\d\d:\d\d<\d\d:\d\d, .*item/s\]")


def _run(argv, *, terminal: bool, env=None, timeout=600) -> str:
    """Runs `argv` in the repository with stdout and stderr on a new pseudo-terminal (100
    columns) or on a pipe; returns everything it wrote."""
    env = {**os.environ, **(env or {})}
    if not terminal:
        done = subprocess.run(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        return done.stdout.decode(errors="replace")
    master, child = os.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                               stdout=child, stderr=child)
    os.close(child)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: every holder of the terminal has closed it
                break
            if not chunk:
                break
            chunks.append(chunk)
        else:
            raise TimeoutError(f"{argv} still running after {timeout} s")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_bar_on_a_terminal_with_count_and_eta():
    out = _run([sys.executable, "-c", BAR_SCRIPT], terminal=True)
    assert FINISHED_BAR.search(out), out


def test_no_bar_on_a_pipe():
    assert _run([sys.executable, "-c", BAR_SCRIPT], terminal=False) == ""


def test_environment_variable_forces_either_way():
    forced = _run([sys.executable, "-c", BAR_SCRIPT], terminal=False,
                  env={progress.ENV: "1"})
    assert FINISHED_BAR.search(forced), forced
    assert _run([sys.executable, "-c", BAR_SCRIPT], terminal=True,
                env={progress.ENV: "0"}) == ""


def test_only_process_zero_draws(monkeypatch):
    monkeypatch.setenv(progress.ENV, "1")
    assert progress.enabled()
    monkeypatch.setitem(sys.modules, "jax", types.SimpleNamespace(process_index=lambda: 1))
    assert not progress.enabled()
    assert progress.progress(range(3)).disable


def test_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv(progress.ENV, "sometimes")
    with pytest.raises(ValueError, match="EFFNETV2_JAX_PROGRESS='sometimes': use 1"):
        progress.enabled()


@pytest.fixture
def restored_logging():
    """Puts the "orbax" logger's level and the absl logger's filters back afterwards."""
    orbax_logger, absl_logger = logging.getLogger("orbax"), absl_logging.get_absl_logger()
    level, filters = orbax_logger.level, list(absl_logger.filters)
    yield orbax_logger, absl_logger
    orbax_logger.setLevel(level)
    absl_logger.filters[:] = filters


def _record(pathname: str, level: int) -> logging.LogRecord:
    return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_quiet_orbax_filters_orbax_files_only_below_its_level(restored_logging):
    orbax_logger, absl_logger = restored_logging
    orbax_logger.setLevel(logging.NOTSET)
    absl_logger.filters[:] = [f for f in absl_logger.filters
                              if not isinstance(f, logs.OrbaxLevelFilter)]
    logs.quiet_orbax()
    logs.quiet_orbax()  # idempotent
    (quiet,) = [f for f in absl_logger.filters if isinstance(f, logs.OrbaxLevelFilter)]
    inside = os.path.join(quiet.roots[0], "checkpoint", "checkpoint_manager.py")
    assert orbax_logger.level == logging.WARNING
    assert not quiet.filter(_record(inside, logging.INFO))
    assert quiet.filter(_record(inside, logging.WARNING))
    assert quiet.filter(_record(str(REPO / "effnetv2_jax" / "train" / "loop.py"), logging.INFO))
    orbax_logger.setLevel(logging.INFO)  # what --logger_levels=orbax:INFO does
    assert quiet.filter(_record(inside, logging.INFO))


def test_quiet_orbax_keeps_a_level_set_on_the_command_line(restored_logging):
    orbax_logger, _ = restored_logging
    orbax_logger.setLevel(logging.DEBUG)
    logs.quiet_orbax()
    assert orbax_logger.level == logging.DEBUG


def _orbax_line_count(log: str) -> int:
    """absl INFO lines whose source file is one of Orbax's (a file name that only Orbax has
    among Orbax, this package and CLU: both of the latter log from files Orbax also has)."""
    def names(roots):
        return {f for root in roots for _, _, files in os.walk(root) for f in files
                if f.endswith(".py")}

    import clu
    import orbax

    orbax_only = (names(orbax.__path__) - names([REPO / "effnetv2_jax"])
                  - names(clu.__path__))
    files = re.findall(r"^I\d{4} \S+ +\d+ (\S+\.py):\d+\]", log, flags=re.M)
    return sum(f in orbax_only for f in files)


@pytest.mark.slow  # two tiny training runs (about a minute each on 2 cores)
def test_tiny_run_terminal_bar_and_orbax_switch(tmp_path):
    base = [sys.executable, "-m", "effnetv2_jax.main", "--config=tests/configs/tiny.py",
            f"--config.checkpoint.compile_cache_dir={tmp_path / 'cache'}"]
    env = {progress.ENV: ""}  # the default: decided by the terminal
    on_terminal = _run([*base, f"--workdir={tmp_path / 'default'}"], terminal=True, env=env)
    assert "final evaluation" in on_terminal, on_terminal[-3000:]
    assert _orbax_line_count(on_terminal) == 0
    # 20 eval examples in batches of 8: the bar counts 3 batches.
    assert re.search(r"eval: +\d+%.*\| \d/3 \[", on_terminal), on_terminal[-3000:]

    on_pipe = _run([*base, f"--workdir={tmp_path / 'orbax'}", logs.SWITCH], terminal=False,
                   env=env)
    assert "final evaluation" in on_pipe, on_pipe[-3000:]
    assert _orbax_line_count(on_pipe) > 50, on_pipe[-3000:]
    assert not re.search(r"eval: +\d+%|batch/s", on_pipe)  # ("eval:" is also a config key)
