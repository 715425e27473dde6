"""The README's main command, end to end: the quickstart reaches >= 97% held-out top-1."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the README's quickstart, end to end: minutes

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_trains_to_97_percent_on_real_digits(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "effnetv2_jax.main", "--config=configs/quickstart.py",
         f"--workdir={tmp_path}", f"--config.data.data_dir={tmp_path / 'tfds'}"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final = [line for line in result.stdout.splitlines() if line.startswith("eval/")][-1]
    metrics = {k: float(v) for k, v in (item.split("=") for item in final.split())}
    assert metrics["eval/examples"] == 360           # every held-out digit, once
    assert metrics["eval/ema_top1"] >= 0.97, final
    assert "ETA" in result.stderr                    # progress with an ETA was reported
    assert list(tmp_path.glob("events.out.tfevents*"))
    assert (tmp_path / "checkpoints").is_dir()
