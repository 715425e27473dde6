"""launch/slurm.sbatch and launch/gpu_single_node.sh with fake `scontrol`, `srun` and `python`.

The fake srun starts its command once per task with SLURM_PROCID set, as Slurm does (one task
per node); the fake python records the command line it was given.
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

FAKES = {
    # A long node list (more than a pipe buffer): `scontrol | head -n 1` would die of SIGPIPE.
    "scontrol": '[ "$1 $2" = "show hostnames" ] && seq -f "gpu-a%05g" 1 20000\n',
    "srun": ('while [ "${1#--}" != "$1" ]; do shift; done   # drop srun options\n'
             'for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" || exit $?; done\n'),
    "python": 'echo "$* [procid=${SLURM_PROCID:-none}]" >> "$FAKE_PYTHON_LOG"\n',
}


@pytest.fixture
def cluster(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "python.log"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "FAKE_PYTHON_LOG": str(log), "SLURM_JOB_ID": "1234",
           "SLURM_JOB_NODELIST": "gpu-a[00001-20000]", "SLURM_NTASKS": "2",
           "SLURM_SUBMIT_DIR": str(REPO_ROOT), "WORKDIR": "/shared/runs/v2s"}

    def run(script: str, *args: str, **overrides: str | None) -> subprocess.CompletedProcess:
        run_env = {k: v for k, v in {**env, **overrides}.items() if v is not None}
        return subprocess.run(["bash", str(REPO_ROOT / script), *args], env=run_env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=30)

    run.calls = lambda: log.read_text().splitlines() if log.exists() else []
    return run


def test_slurm_starts_one_process_per_node_with_explicit_coordinates(cluster):
    result = cluster("launch/slurm.sbatch", "--config.train.num_steps=5")
    assert result.returncode == 0, result.stderr
    port = 61440 + 1234 % 4096
    assert cluster.calls() == [
        f"-m effnetv2_jax.main --config=configs/s_imagenet.py --workdir=/shared/runs/v2s "
        f"--config.distributed.coordinator_address=gpu-a00001:{port} "
        f"--config.distributed.num_processes=2 --config.distributed.process_id={i} "
        f"--config.train.num_steps=5 [procid={i}]" for i in (0, 1)]
    assert f"2 processes, coordinator gpu-a00001:{port}" in result.stdout


def test_slurm_settings_from_the_environment(cluster):
    result = cluster("launch/slurm.sbatch", CONFIG="configs/quickstart.py",
                     COORDINATOR_PORT="5000", SLURM_NTASKS="3")
    assert result.returncode == 0, result.stderr
    calls = cluster.calls()
    assert len(calls) == 3 and all("--config=configs/quickstart.py" in c for c in calls)
    assert all("coordinator_address=gpu-a00001:5000 --config.distributed.num_processes=3" in c
               for c in calls)


@pytest.mark.parametrize("overrides, message", [
    ({"WORKDIR": None}, "set WORKDIR to a directory on shared storage"),
    ({"WORKDIR": "/tmp/v2s"}, "WORKDIR=/tmp/v2s is node-local"),
    ({"SLURM_JOB_ID": None}, "not inside a Slurm job"),
    ({"CONFIG": "configs/nope.py"}, "CONFIG=configs/nope.py is not a file"),
    ({"SLURM_SUBMIT_DIR": "/"}, "submit from the effnetv2_jax repository root"),
])
def test_slurm_refuses_bad_settings_before_starting(cluster, overrides, message):
    result = cluster("launch/slurm.sbatch", **overrides)
    assert result.returncode != 0 and message in result.stderr
    assert cluster.calls() == []


def test_single_node_runs_one_process_for_all_gpus(cluster):
    result = cluster("launch/gpu_single_node.sh", "--config.train.global_batch_size=1024",
                     SLURM_NTASKS=None)
    assert result.returncode == 0, result.stderr
    assert cluster.calls() == [
        "-m effnetv2_jax.main --config=configs/s_imagenet.py --workdir=/shared/runs/v2s "
        "--config.train.global_batch_size=1024 [procid=none]"]
    assert cluster("launch/gpu_single_node.sh", WORKDIR=None).returncode != 0
