"""The bash that runs on each TPU worker, run here against a sandbox $HOME: a fake trainer in
place of Python, a fake `sudo`. Checks the run's life cycle as `watch` sees it: start, stop with
SIGTERM (the run saves and exits 0), restart with the old log kept, failure, finish."""

import os
import shutil
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


# Stands in for a system Python: reports itself new enough (>= 3.11) or not by $FAKE_VERSION_OK
# for the name it is called by, and makes a venv whose pip and python only log their arguments.
FAKE_SYSTEM_PYTHON = """#!/bin/bash
name=$(basename "$0")
echo "$name $*" >> "$HOME/python.log"
if [ "$1" = -c ] && [[ "$2" == *version_info* ]]; then
  [[ " $FAKE_NEW_ENOUGH " == *" $name "* ]]; exit $?
fi
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  printf '#!/bin/bash\\necho "pip $*" >> "$HOME/pip.log"\\n' > "$3/bin/pip"
  printf '#!/bin/bash\\necho "venv-python $*" >> "$HOME/python.log"\\n' > "$3/bin/python"
  chmod +x "$3/bin/pip" "$3/bin/python"
fi
"""
# Tools the setup script calls; PATH holds only these and the fakes, so that the machine's own
# python3.11 cannot stand in for a missing one.
SETUP_TOOLS = ("bash", "mkdir", "rm", "tar", "gzip", "hostname", "ps", "cat", "chmod", "printf",
               "basename", "cp")


@pytest.fixture
def tpu_vm(tmp_path):
    """Runs `worker_scripts.setup()` in a sandbox $HOME holding a copied checkout, with fake
    system Pythons (`pythons`: name -> new enough?) and a `sudo` whose apt-get installs a fake
    python3.11. Returns the logs of python, pip and sudo calls."""
    home, bin_dir, tools = tmp_path / "home", tmp_path / "bin", tmp_path / "tools"
    for directory in (home, bin_dir, tools):
        directory.mkdir()
    for tool in SETUP_TOOLS:
        (tools / tool).symlink_to(shutil.which(tool))
    (tools / "fake_python").write_text(FAKE_SYSTEM_PYTHON)
    (tools / "fake_python").chmod(0o755)
    sudo = bin_dir / "sudo"
    sudo.write_text(f'#!/bin/bash\necho "$*" >> "$HOME/sudo.log"\n'
                    f'if [[ "$*" == *"apt-get install"* ]]; then\n'
                    f'  cp {tools}/fake_python {bin_dir}/python3.11\nfi\n')
    sudo.chmod(0o755)
    checkout = tmp_path / "checkout"
    (checkout / "requirements").mkdir(parents=True)
    (checkout / "requirements/lock.txt").write_text("jax==0.10.2\n")

    def run(pythons: dict[str, bool], with_lock: bool = True) -> dict[str, str]:
        for name in pythons:
            (bin_dir / name).symlink_to(tools / "fake_python")
        if not with_lock:
            (checkout / "requirements/lock.txt").unlink()
        subprocess.run(["tar", "-czf", str(home / worker_scripts.ARCHIVE), "-C", str(checkout),
                        "."], check=True)
        env = {"HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{tools}",
               "FAKE_NEW_ENOUGH": " ".join(n for n, ok in pythons.items() if ok) or "-"}
        result = subprocess.run([shutil.which("bash"), "-c", worker_scripts.setup()], env=env,
                                text=True, capture_output=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return {log: (home / f"{log}.log").read_text() if (home / f"{log}.log").exists() else ""
                for log in ("python", "pip", "sudo")}

    return run


def test_setup_uses_the_vms_python3_when_it_is_new_enough(tpu_vm):
    logs = tpu_vm({"python3": True})
    assert logs["sudo"] == ""                       # nothing apt-installed
    assert "python3 -m venv" in logs["python"]
    pip = logs["pip"].splitlines()[-1].split()
    assert pip[pip.index("-c") + 1].endswith("/effnetv2_jax/requirements/lock.txt")
    assert pip[-2:] == ["-e", pip[-1]] and pip[-1].endswith("/effnetv2_jax[tpu,data]")


def test_setup_falls_back_to_python311_and_installs_it_with_apt(tpu_vm):
    logs = tpu_vm({"python3": False})               # Ubuntu 22.04: python3 is 3.10
    assert "apt-get install -y -qq python3.11 python3.11-venv" in logs["sudo"]
    assert "python3.11 -m venv" in logs["python"]
    assert "python3 -m venv" not in logs["python"]


def test_setup_uses_an_installed_python311_without_apt(tpu_vm):
    logs = tpu_vm({"python3": False, "python3.11": True})
    assert logs["sudo"] == ""
    assert "python3.11 -m venv" in logs["python"]


def test_setup_without_the_lock_installs_from_the_ranges(tpu_vm):
    logs = tpu_vm({"python3": True}, with_lock=False)
    pip = logs["pip"].splitlines()[-1]
    assert "-c" not in pip.split() and pip.endswith("effnetv2_jax[tpu,data]")
