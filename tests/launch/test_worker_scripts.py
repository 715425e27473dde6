"""The bash that runs on each TPU worker, run here against a sandbox $HOME: a fake trainer in
place of Python, a fake `sudo`. Checks the run's life cycle as `watch` sees it: start, stop with
SIGTERM (the run saves and exits 0), restart with the old log kept, failure, finish."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import worker_scripts

REPO_ROOT = Path(__file__).resolve().parents[2]

# Stands in for `python -m effnetv2_jax.main`: echoes its arguments, then either exits at once
# with $FAKE_EXIT, or trains until SIGTERM and exits 0 with the training loop's message.
FAKE_TRAINER = f"""#!/bin/bash
trap 'echo "{worker_scripts.PREEMPTED_MESSAGE} 7, exiting"; exit 0' TERM
echo "args: $*"
if [ -n "${{FAKE_EXIT:-}}" ]; then exit "$FAKE_EXIT"; fi
for _ in $(seq 200); do sleep 0.05; done
"""


@pytest.fixture
def worker(tmp_path):
    """Runs worker scripts with HOME=tmp_path; ends the fake trainer (by its pid) afterwards."""
    home = tmp_path / "home"
    (home / "effnetv2_jax").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sudo = bin_dir / "sudo"     # records what would run as root, runs nothing
    sudo.write_text('#!/bin/bash\necho "$*" >> "$HOME/sudo.log"\n')
    sudo.chmod(0o755)
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def run(script: str, **extra_env: str) -> str:
        result = subprocess.run(["bash", "-c", script], env={**env, **extra_env}, text=True,
                                capture_output=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def install_trainer():
        python = home / "effnetv2_venv/bin/python"
        python.parent.mkdir(parents=True)
        python.write_text(FAKE_TRAINER)
        python.chmod(0o755)

    def state() -> str:
        return worker_scripts.parse_state(run(worker_scripts.probe()))

    def wait_for_log() -> str:
        """The run's log, once the fake trainer has written to it."""
        log = home / "effnetv2_run/train.log"
        for _ in range(200):
            if log.exists() and (text := log.read_text()):
                return text
            time.sleep(0.05)
        raise AssertionError("the trainer never started")

    def wait_until_not(running_state: str) -> str:
        for _ in range(200):
            if (s := state()) != running_state:
                return s
            time.sleep(0.05)
        raise AssertionError(f"still {running_state}")

    run.home, run.install_trainer, run.state = home, install_trainer, state
    run.wait_for_log, run.wait_until_not = wait_for_log, wait_until_not
    yield run
    pid_file = home / "effnetv2_run/pid"
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_run_starts_stops_resumes_fails_and_finishes(worker):
    train = worker_scripts.train("configs/s_imagenet.py", "gs://b/run",
                                 ["--config.seed=3"], "v4-32", grace_s=10)
    assert worker.state() == "not-set-up"
    worker.install_trainer()
    assert worker.state() == "not-started"

    out = worker(train)
    assert "effnetv2-run: started on" in out
    assert worker.state() == "running"
    assert worker.wait_for_log().startswith(
        "args: -m effnetv2_jax.main --config=configs/s_imagenet.py --workdir=gs://b/run "
        "--config.seed=3\n")

    # `train` again while it runs: SIGTERM the old run (it saves, exits 0), keep its log, restart.
    worker(train)
    assert worker.state() == "running"
    [old_log] = (worker.home / "effnetv2_run").glob("train-*.log")
    assert worker_scripts.PREEMPTED_MESSAGE in old_log.read_text()
    assert "lsof -t /dev/accel*" in (worker.home / "sudo.log").read_text()
    assert "rm -f /tmp/libtpu_lockfile" in (worker.home / "sudo.log").read_text()

    worker(worker_scripts.stop(grace_s=10))
    assert worker.wait_until_not("running") == "preempted"

    worker(train, FAKE_EXIT="3")
    assert worker.wait_until_not("running") == "failed:3"
    worker(train, FAKE_EXIT="0")
    assert worker.wait_until_not("running") == "finished"


def test_a_run_killed_before_it_could_save_reads_as_stopped(worker):
    worker.install_trainer()
    worker(worker_scripts.train("c.py", "gs://b/r", [], "v4-8", grace_s=1))
    worker.wait_for_log()
    pid = int((worker.home / "effnetv2_run/pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    assert worker.wait_until_not("running") == "stopped"


@pytest.mark.parametrize("script", [
    worker_scripts.setup(), worker_scripts.setup("https://example.com/r.git", "v1"),
    worker_scripts.stop(5), worker_scripts.probe(), worker_scripts.logs(10, True, True),
    worker_scripts.train("configs/s_imagenet.py", "gs://b/r", ["--config.x='a b'"], "v6e-64", 5),
])
def test_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", "-c", script], check=True)


def test_preempted_message_is_the_training_loops():
    loop = (REPO_ROOT / "effnetv2_jax/train/loop.py").read_text()
    assert f'"{worker_scripts.PREEMPTED_MESSAGE} %d' in loop


def test_parse_state():
    output = "Warning: x\neffnetv2-run: failed:2 on h: boom\n"
    assert worker_scripts.parse_state(output) == "failed:2"
    assert worker_scripts.parse_state("ssh: connect refused") == ""
