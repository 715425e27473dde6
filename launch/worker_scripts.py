"""The bash that `launch/tpu.py` runs on every TPU VM worker (through `gcloud ... ssh --command`).

Each function returns one script. Everything a worker keeps lives in three places in $HOME:

    ~/effnetv2_jax      the code (a copy of your checkout, or a clone)
    ~/effnetv2_venv     the VM's python3 (or python3.11 where it is older) with
                        `pip install -c requirements/lock.txt -e ".[tpu,data]"`
    ~/effnetv2_run      train.log (this worker's log), pid (the run), exit_code (when it ended)

A run's state, as `probe` reports it: not-set-up, not-started, running, stopped (killed before it
could record an exit code), failed:<code>, preempted (exited 0 after SIGTERM, having saved a
checkpoint) or finished. Values from the user are quoted with shlex; $HOME expands on the worker.
"""

from __future__ import annotations

import shlex

CODE_DIR = "$HOME/effnetv2_jax"
VENV_DIR = "$HOME/effnetv2_venv"
RUN_DIR = "$HOME/effnetv2_run"
# setup.py's python_requires is >=3.11: the VM's own python3 where it is that new (Ubuntu 24.04
# images: 3.12), else python3.11 from apt (Ubuntu 22.04 images ship 3.10).
PYTHON = "python3"
FALLBACK_PYTHON = "python3.11"
MIN_PYTHON = (3, 11)
EXTRAS = "tpu,data"              # jax[tpu] and the input pipelines (setup.py)
LOCK = "requirements/lock.txt"   # the versions CI tested; used where the checkout holds it
ARCHIVE = "effnetv2_jax.tar.gz"    # the copied checkout, in $HOME
STATE_PREFIX = "effnetv2-run:"     # the probe's line, parsed by `watch`
# Logged by effnetv2_jax/train/loop.py when a SIGTERM made the run save and exit 0 (a test
# checks the two stay in step).
PREEMPTED_MESSAGE = "preempted: saved step"


# `alive PID`: the process exists and is not a zombie (an exited run whose parent has not reaped
# it yet must not read as running).
_ALIVE = """alive() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) && [ -n "$stat" ] && [ "${stat#Z}" = "$stat" ]
}
"""


def _q(value: str) -> str:
    return shlex.quote(value)


def setup(repo: str = "", ref: str = "") -> str:
    """Puts the code in CODE_DIR (from the copied archive, or `git clone repo` at `ref`) and
    installs it with the TPU and data extras, at the lock's versions where the code holds the
    lock. Uses the VM's python3 where it is at least MIN_PYTHON, else python3.11 (apt-installed
    if missing). Refuses while a run is active: `stop` it first."""
    if repo:
        fetch = f'rm -rf "{CODE_DIR}"\ngit clone --quiet {_q(repo)} "{CODE_DIR}"\n'
        if ref:
            fetch += f'git -C "{CODE_DIR}" checkout --quiet {_q(ref)}\n'
    else:
        fetch = (f'rm -rf "{CODE_DIR}" && mkdir -p "{CODE_DIR}"\n'
                 f'tar -xzf "$HOME/{ARCHIVE}" -C "{CODE_DIR}"\n')
    new_enough = f"import sys; sys.exit(sys.version_info < {MIN_PYTHON})"
    return f"""set -euo pipefail
{_ALIVE}if [ -f "{RUN_DIR}/pid" ] && alive "$(cat "{RUN_DIR}/pid")"; then
  echo "a training run is active on $(hostname); run 'launch/tpu.py stop' first" >&2
  exit 1
fi
py={PYTHON}
if ! {PYTHON} -c {_q(new_enough)} 2>/dev/null; then
  py={FALLBACK_PYTHON}
fi
if ! command -v "$py" >/dev/null || ! "$py" -c "import ensurepip" 2>/dev/null; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$py" "$py-venv"
fi
{fetch}if [ -x "{VENV_DIR}/bin/python" ] && ! "{VENV_DIR}/bin/python" -c {_q(new_enough)}; then
  rm -rf "{VENV_DIR}"
fi
[ -x "{VENV_DIR}/bin/python" ] || "$py" -m venv "{VENV_DIR}"
lock=()
[ -f "{CODE_DIR}/{LOCK}" ] && lock=(-c "{CODE_DIR}/{LOCK}")
"{VENV_DIR}/bin/pip" install --quiet --upgrade pip
"{VENV_DIR}/bin/pip" install --quiet ${{lock[@]+"${{lock[@]}}"}} -e "{CODE_DIR}[{EXTRAS}]"
"{VENV_DIR}/bin/python" -c "import effnetv2_jax" && echo "effnetv2_jax installed on $(hostname)"
"""


def _stop_function(grace_s: int) -> str:
    """A bash function `stop_run`: SIGTERM the run (it saves a checkpoint and exits), SIGKILL it
    after `grace_s` seconds, then end any other process that still holds the TPU devices."""
    return f"""{_ALIVE}stop_run() {{
  if [ -f "{RUN_DIR}/pid" ] && alive "$(cat "{RUN_DIR}/pid")"; then
    local pid
    pid=$(cat "{RUN_DIR}/pid")
    echo "{STATE_PREFIX} stopping pid $pid on $(hostname) (SIGTERM: it saves a checkpoint)"
    pkill -TERM -P "$pid" || true
    for _ in $(seq {5 * grace_s}); do alive "$pid" || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  local holders
  holders=$(sudo lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | sort -u | tr '\\n' ' ')
  if [ -n "${{holders// /}}" ]; then
    echo "{STATE_PREFIX} ending stale processes holding the TPU on $(hostname): $holders"
    sudo kill -TERM $holders 2>/dev/null || true
    sleep 5
    sudo kill -KILL $holders 2>/dev/null || true
  fi
  sudo rm -f /tmp/libtpu_lockfile
}}
"""


def stop(grace_s: int) -> str:
    return f"set -u\n{_stop_function(grace_s)}stop_run\n"


def train_command(config: str, workdir: str, overrides: list[str]) -> str:
    """The training command line, as every worker runs it (from CODE_DIR)."""
    args = [f"--config={config}", f"--workdir={workdir}", *overrides]
    return f'"{VENV_DIR}/bin/python" -m effnetv2_jax.main ' + " ".join(_q(a) for a in args)


def train(config: str, workdir: str, overrides: list[str], accelerator_type: str,
          grace_s: int) -> str:
    """Stops a stale run, then starts training in the background, logging to RUN_DIR/train.log.

    Idempotent: the training code resumes from the workdir's latest checkpoint. The previous
    log is kept as train-<time>.log. TPU_ACCELERATOR_TYPE names the slice for libtpu; the TPU
    device files tell effnetv2_jax it is on Cloud TPU (train/sharding.py), so it calls the
    argument-free `jax.distributed.initialize()`.
    """
    wrapped = f'{train_command(config, workdir, overrides)}; echo $? > "{RUN_DIR}/exit_code"'
    return f"""set -u
{_stop_function(grace_s)}stop_run
mkdir -p "{RUN_DIR}"
cd "{CODE_DIR}"
if [ -f "{RUN_DIR}/train.log" ]; then
  mv "{RUN_DIR}/train.log" "{RUN_DIR}/train-$(date +%Y%m%d-%H%M%S)-$$.log"
fi
rm -f "{RUN_DIR}/exit_code"
export TPU_ACCELERATOR_TYPE={_q(accelerator_type)}
setsid nohup bash -c {_q(wrapped)} > "{RUN_DIR}/train.log" 2>&1 < /dev/null &
echo $! > "{RUN_DIR}/pid"
echo "{STATE_PREFIX} started on $(hostname), pid $!, log {RUN_DIR}/train.log"
"""


def probe() -> str:
    """Prints one line: `effnetv2-run: <state> on <host>: <last log line>`."""
    return f"""{_ALIVE}s=finished
if [ ! -x "{VENV_DIR}/bin/python" ]; then s=not-set-up
elif [ ! -f "{RUN_DIR}/pid" ]; then s=not-started
elif alive "$(cat "{RUN_DIR}/pid")"; then s=running
elif [ ! -f "{RUN_DIR}/exit_code" ]; then s=stopped
elif [ "$(cat "{RUN_DIR}/exit_code")" != 0 ]; then s="failed:$(cat "{RUN_DIR}/exit_code")"
elif grep -q {_q(PREEMPTED_MESSAGE)} "{RUN_DIR}/train.log"; then s=preempted
fi
echo "{STATE_PREFIX} $s on $(hostname): $(tail -n 1 "{RUN_DIR}/train.log" 2>/dev/null)"
"""


def logs(lines: int, follow: bool, label: bool) -> str:
    """Tails this worker's log; `label` prefixes each line with the host name."""
    tail = f'tail -n {int(lines)}{" -F" if follow else ""} "{RUN_DIR}/train.log"'
    return f'{tail} | sed -u "s/^/[$(hostname)] /"' if label else tail


def parse_state(output: str) -> str:
    """The state word of the first probe line in `output` ("" if there is none)."""
    for line in output.splitlines():
        if line.startswith(STATE_PREFIX):
            words = line[len(STATE_PREFIX):].split()
            return words[0] if words else ""
    return ""
