"""Fault-injection helpers shared by tests/reliability and benchmarks/faults.py.

Every run is the real command line (`python -m effnetv2_jax.main --config=tests/configs/tiny.py`)
in a subprocess, so a SIGKILL, SIGTERM, read-only disk or file-size limit hits the real process.
Faults that need an exact moment (inside a compile, an asynchronous checkpoint write, an
evaluation) go through `killpoint.py`, which runs the same main with a hook that SIGKILLs the
process from inside that moment.
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TINY = "tests/configs/tiny.py"
TINY_STEPS = 6  # tiny.py: 2 stages of 3 steps; checkpoints every 2 steps and at evaluations


class Run:
    """One training process; its stdout+stderr go to `log_path`."""

    def __init__(self, args: list[str], log_path: Path, env=None, preexec_fn=None,
                 pipe: bool = False):
        """pipe: the output goes through a pipe, copied to the log by this process (for runs
        whose own file writes are limited)."""
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(args, cwd=REPO, env={**os.environ, **(env or {})},
                                        stdout=subprocess.PIPE if pipe else self._log,
                                        stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
        self._copier = None
        if pipe:
            self._copier = threading.Thread(target=self._copy, daemon=True)
            self._copier.start()
        self.started = time.time()

    def _copy(self):
        for line in iter(self.process.stdout.readline, b""):
            self._log.write(line.decode(errors="replace"))
            self._log.flush()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, condition, timeout: float = 300.0, poll: float = 0.02) -> bool:
        """Polls `condition()` until true (True), or the process ends first (False)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return True
            if self.process.poll() is not None:
                return bool(condition())
            time.sleep(poll)
        raise TimeoutError(f"waited {timeout} s; log tail:\n{self.log()[-3000:]}")

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float = 300.0) -> int:
        try:
            code = self.process.wait(timeout)
            if self._copier is not None:
                self._copier.join(timeout)
            return code
        finally:
            self._log.close()


def main_args(workdir, cache_dir, *overrides: str, killpoint: str | None = None) -> list[str]:
    """The training command; with `killpoint` ("compile:2", "checkpoint:4", "eval:1") it runs
    through killpoint.py, which SIGKILLs the process at that moment."""
    entry = ([sys.executable, str(Path(__file__).with_name("killpoint.py")), killpoint]
             if killpoint else [sys.executable, "-m", "effnetv2_jax.main"])
    return [*entry, f"--config={TINY}", f"--workdir={workdir}",
            f"--config.checkpoint.compile_cache_dir={cache_dir}", *overrides]


def launch(workdir, cache_dir, *overrides: str, killpoint=None, env=None, preexec_fn=None,
           log_name: str | None = None, pipe: bool = False) -> Run:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log_name = log_name or f"run{len(list(workdir.glob('run*.log')))}.log"
    return Run(main_args(workdir, cache_dir, *overrides, killpoint=killpoint),
               workdir / log_name, env=env, preexec_fn=preexec_fn, pipe=pipe)


def launch_two_processes(workdir, cache_dir, port_salt: int, *overrides: str,
                         log_dir=None) -> list[Run]:
    """Processes 0 and 1 of one run over jax.distributed on localhost, 2 CPU devices each,
    logging to `log_dir`/process{0,1}.log (default: the workdir; a gs:// workdir needs a local
    one). `port_salt` keeps tests that may run at once off each other's coordinator port."""
    port = 20000 + (os.getpid() + port_salt) % 20000
    log_dir = Path(log_dir or workdir)
    log_dir.mkdir(parents=True, exist_ok=True)
    return [Run(main_args(workdir, cache_dir,
                          f"--config.distributed.coordinator_address=localhost:{port}",
                          "--config.distributed.num_processes=2",
                          f"--config.distributed.process_id={i}", *overrides),
                log_dir / f"process{i}.log", env={"JAX_NUM_CPU_DEVICES": "2"})
            for i in range(2)]


def preempted_steps(runs: list[Run], timeout: float = 300.0) -> list[int]:
    """Waits for each run to exit 0 and returns the step each logged as saved on SIGTERM."""
    saved = []
    for run in runs:
        assert run.wait(timeout) == 0, run.log()[-3000:]
        found = re.findall(r"preempted: saved step (\d+)", run.log())
        assert found, run.log()[-3000:]
        saved.append(int(found[-1]))
    return saved


def run_until_done(workdir, cache_dir, *overrides: str, timeout: float = 300.0) -> tuple[int, str]:
    run = launch(workdir, cache_dir, *overrides)
    return run.wait(timeout), run.log()


# --- what a run left behind ------------------------------------------------------------------

def saved_steps(workdir) -> list[int]:
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def resumed_step(log: str) -> int | None:
    found = re.findall(r"resumed from step (\d+)", log)
    return int(found[-1]) if found else None


def logged_steps(log: str) -> list[int]:
    """Steps the run finished, as its per-step metric lines say (`[N] ... train/loss=`)."""
    return [int(s) for s in re.findall(r"\[(\d+)\][^\n]*train/loss", log)]


def final_state(workdir, step: int = TINY_STEPS):
    import jax  # noqa: PLC0415 (the harness itself is cheap to import)

    from effnetv2_jax.train.checkpoint import read_state  # noqa: PLC0415
    return jax.tree.map(np.array, read_state(str(Path(workdir) / "checkpoints" / str(step))))


def mismatching_arrays(a, b) -> list[str]:
    """Names of arrays that differ bitwise (or in structure) between two trees."""
    import jax  # noqa: PLC0415

    from effnetv2_jax.train.checkpoint import array_name  # noqa: PLC0415
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = jax.tree.leaves(b)
    if len(leaves_a) != len(leaves_b):
        return [f"<structure: {len(leaves_a)} vs {len(leaves_b)} arrays>"]
    return [array_name(p) for (p, x), y in zip(leaves_a, leaves_b)
            if x.shape != y.shape or x.tobytes() != y.tobytes()]


# --- damaged checkpoints -----------------------------------------------------------------------

def _files(step_dir: Path, pattern: str) -> list[Path]:
    found = sorted(p for p in step_dir.glob(pattern) if p.is_file())
    assert found, f"no file {pattern} in {step_dir}"
    return found


def _truncate(paths):
    for p in paths:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _scramble(paths):
    rng = np.random.default_rng(0)
    for p in paths:
        data = bytearray(p.read_bytes())
        for i in rng.integers(0, len(data), size=max(1, len(data) // 1000)):
            data[i] ^= 0x5A
        p.write_bytes(bytes(data))


def _flip_one_byte(paths):
    for p in paths:
        data = bytearray(p.read_bytes())
        data[len(data) // 3] ^= 0x01
        p.write_bytes(bytes(data))


def _delete(paths):
    for p in paths:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


# name -> (how, which files of a step directory)
DAMAGES = {
    "truncate array data": (_truncate, "state/**/d/*"),
    "scramble array data": (_scramble, "state/**/d/*"),
    "flip one byte of array data": (_flip_one_byte, "state/**/d/*"),
    "delete array data": (_delete, "state/**/d/*"),
    "truncate OCDBT manifest": (_truncate, "state/manifest.ocdbt"),
    "delete OCDBT manifest": (_delete, "state/manifest.ocdbt"),
    "truncate tree metadata": (_truncate, "state/_METADATA"),
    "delete tree metadata": (_delete, "state/_METADATA"),
    "truncate run metadata (JSON)": (_truncate, "metadata/metadata"),
    "scramble run metadata (JSON)": (_scramble, "metadata/metadata"),
    "delete run metadata": (_delete, "metadata/metadata"),
    "truncate array metadatas": (_truncate, "state/array_metadatas/*"),
    "delete step metadata": (_delete, "_CHECKPOINT_METADATA"),
    "delete commit marker": (_delete, "commit_success.txt"),
}


def damage(step_dir, name: str) -> None:
    how, pattern = DAMAGES[name]
    step_dir = Path(step_dir)
    how([p for p in step_dir.glob(pattern) if p.exists()] if pattern.endswith("*")
        else _files(step_dir, pattern))


# --- disk trouble ------------------------------------------------------------------------------

def without_root_override() -> None:
    """preexec_fn: if running as root, drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    bounding set before exec, so permission bits (chmod a-w) bind the child as they bind a
    normal user (root ignores them otherwise)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def make_read_only(path) -> None:
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode & ~0o222)
    os.chmod(path, os.stat(path).st_mode & ~0o222)


def make_writable(path) -> None:
    for root, dirs, _ in os.walk(path):
        os.chmod(root, os.stat(root).st_mode | 0o200)
        for name in dirs:
            p = os.path.join(root, name)
            os.chmod(p, os.stat(p).st_mode | 0o200)


def limit_file_size(pid: int, max_bytes: int) -> None:
    """A full disk for one process: files it writes cannot grow past `max_bytes` (EFBIG,
    'File too large'; Python ignores SIGXFSZ, so the write fails instead of killing it)."""
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


# --- bad images --------------------------------------------------------------------------------

def make_bad_image_folder(root) -> dict[str, tuple[str, str]]:
    """root/<4 classes>/ with good images and every bad input of the issue.

    Returns {case: (path, expected)}; expected is "decoded" (read as an RGB image) or "skipped"
    (found unreadable before training, named in a warning, counted).
    """
    from PIL import Image  # noqa: PLC0415

    root = Path(root)
    good, odd = root / "good", root / "odd"
    good.mkdir(parents=True, exist_ok=True)
    odd.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def image(h, w, c=3):
        return rng.integers(0, 255, (h, w, c), np.uint8).squeeze()

    for i in range(8):
        Image.fromarray(image(48, 40)).save(good / f"good_{i}.jpg", quality=90)
    for name in ("more_a", "more_b"):  # 4 classes, as the tiny run's synthetic data
        (root / name).mkdir(exist_ok=True)
        for i in range(2):
            Image.fromarray(image(40, 48)).save(root / name / f"{name}_{i}.png")
    cases = {}

    def add(name, file_name, writer, expected):
        path = odd / file_name
        writer(path)
        cases[name] = (str(path), expected)

    encoded = io.BytesIO()
    Image.fromarray(image(64, 64)).save(encoded, format="JPEG")
    jpeg = encoded.getvalue()
    add("zero bytes", "zero.jpg", lambda p: p.write_bytes(b""), "skipped")
    add("truncated JPEG (half)", "truncated.jpg", lambda p: p.write_bytes(jpeg[: len(jpeg) // 2]),
        "skipped")
    # TF's decoder refuses a JPEG without its end marker (PIL would read it): skipped, named.
    add("JPEG without its end marker", "no_eoi.jpg", lambda p: p.write_bytes(jpeg[:-2]),
        "skipped")
    add("PNG with alpha", "alpha.png",
        lambda p: Image.fromarray(image(30, 20, 4), "RGBA").save(p), "decoded")
    add("CMYK JPEG", "cmyk.jpg",
        lambda p: Image.fromarray(image(30, 20)).convert("CMYK").save(p, "JPEG"), "decoded")
    add("grey PNG", "grey.png", lambda p: Image.fromarray(image(25, 25, 1), "L").save(p),
        "decoded")
    add("text file named .jpg", "notes.jpg", lambda p: p.write_text("not an image\n"), "skipped")
    add("1x1 image", "one_pixel.png", lambda p: Image.fromarray(image(1, 1, 3)).save(p),
        "decoded")
    add("10000x10 image", "wide.png", lambda p: Image.fromarray(image(10, 10000)).save(p),
        "decoded")
    add("10x10000 image", "tall.jpg", lambda p: Image.fromarray(image(10000, 10)).save(p),
        "decoded")
    add("upper-case extension .JPG", "upper.JPG",
        lambda p: Image.fromarray(image(20, 30)).save(p, "JPEG"), "decoded")
    add("mixed-case extension .Png", "mixed.Png",
        lambda p: Image.fromarray(image(20, 30)).save(p, "PNG"), "decoded")
    add("PNG named .jpg", "png_inside.jpg",
        lambda p: Image.fromarray(image(20, 30)).save(p, "PNG"), "decoded")
    add("GIF (animated)", "anim.gif", lambda p: Image.fromarray(image(16, 16)).save(
        p, "GIF", save_all=True, append_images=[Image.fromarray(image(16, 16))]), "decoded")
    # Unreadable by permissions; root reads it anyway, so only a non-root run skips it.
    add("unreadable permissions (chmod 000)", "locked.jpg",
        lambda p: (p.write_bytes(jpeg), os.chmod(p, 0)),
        "decoded" if os.geteuid() == 0 else "skipped")
    return cases


# --- bad configs -------------------------------------------------------------------------------

# (command-line override, text the error must contain): each must fail before compilation.
BAD_OVERRIDES = [
    ("--config.train.lerning_rate=0.1", "lerning_rate"),
    ("--config.trian.num_steps=3", "trian"),
    ("--config.train.global_batch_size=many", "many"),
    ("--config.train.num_steps=1.5", "1.5"),
    ("--config.model.block_strings=5", "5"),
    ("--config.train.global_batch_size=-8", "-8"),
    ("--config.train.global_batch_size=6", "6"),          # not divisible over 4 devices
    ("--config.eval.global_batch_size=-1", "-1"),
    ("--config.train.num_steps=-6", "-6"),
    ("--config.model.num_classes=-3", "-3"),
    ("--config.model.num_classes=7", "num_classes=7"),     # the synthetic data has 4
    ("--config.model.feature_size=-32", "-32"),
    ("--config.model.width=-1.0", "-1.0"),
    ("--config.model.depth=-2.0", "-2.0"),
    ("--config.eval.image_size=-40", "-40"),
    ("--config.data.synthetic_image_size=-4", "-4"),
    ("--config.data.synthetic_num_examples=0", "synthetic_num_examples"),
    ("--config.data.synthetic_num_classes=0", "synthetic_num_classes"),
    ("--config.data.shuffle_buffer=-1", "-1"),
    ("--config.progressive.image_size=(-32,40)", "-32"),
    ("--config.progressive.image_size=(32,)", "(32,)"),
    ("--config.progressive.num_stages=0", "num_stages=0"),
    ("--config.progressive.num_stages=10", "cannot fill 10 stages"),  # 6 steps only
    ("--config.progressive.dropout_rate=(0.0,1.5)", "1.5"),
    ("--config.progressive.global_batch_sizes=(8,)", "1 batches for 2 stages"),
    ("--config.progressive.global_batch_sizes=(8,6)", "stage 1's batch"),  # 4 devices
    ("--config.train.optimizer=lamb", "lamb"),
    ("--config.train.on_nonfinite=ignore", "ignore"),
    ("--config.checkpoint.keep_latest=0", "keep_latest=0"),
    ("--config.model.block_strings=('r1_k3_s1_e1_i8_o8_q1',)", "q"),
    ("--config.model.block_strings=('r1_k3_s1_e1_i8_o8_c1','garbage')", "garbage"),
    ("--config.model.block_strings=('r0_k3_s1_e1_i8_o8',)", "r0"),
    ("--config.model.block_strings=('r1_k4_s1_e1_i8_o8',)", "k4"),
    ("--config.model.block_strings=('r1_k3_s9_e1_i8_o8',)", "s9"),
    ("--config.model.block_strings=('r1_k3_s1_e0_i8_o8',)", "e0"),
    ("--config.model.block_strings=('r1_k3_s1_e1_i8_o8_se1.5',)", "se1.5"),
]
