"""Fault injection on the tiny network, on CPU: prints the reliability figures as markdown.

    python benchmarks/faults.py --runs=20 [--seed=0] [--workdir=/tmp/faults]

The longer sibling of tests/reliability (same harness, tests/reliability/harness.py):
- kill anywhere: `--runs` runs, each SIGKILLed 1-3 times (the first three at the exact moments
  of the CI tests: inside a compilation, an asynchronous checkpoint write and an evaluation;
  the others at uniformly random times over a run's length) and restarted with the same command
  until it finishes; final parameters compared bitwise with an uninterrupted run;
- preemption: SIGTERM at random times; steps lost = last finished step - step resumed from;
- damaged checkpoints: every damage of harness.DAMAGES, plus a census of single-byte flips
  across the array data files (caught by TensorStore, by our checksums, or harmless);
- disk trouble (read-only workdir, full disk), bad images, bad config overrides, NaN loss.
Takes about 15-30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "reliability"), str(REPO)]
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")  # as the tests: the same 4-device numerics
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import harness  # noqa: E402

LOG_EVERY = "--config.train.log_every_steps=1"  # every finished step is logged (no numerics)
KILLPOINTS = ("compile:2", "checkpoint:4", "eval:1")


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    sys.stdout.flush()


def phase_at_kill(log: str) -> str:
    if "killpoint: SIGKILL inside" in log:
        return {"compilation": "compilation (killpoint)", "the": "asynchronous checkpoint write "
                "(killpoint)", "evaluation": "evaluation (killpoint)"}[
            re.search(r"killpoint: SIGKILL inside (\w+)", log).group(1)]
    if not re.search(r"stage 0 from step|stage 1 from step", log):
        return "start-up / compilation"
    started = re.findall(r"Started save checkpoint @ \S+/(\d+)\.", log)
    finished = re.findall(r"Finished save \(blocking \+ background\) in [\d.]+ seconds @ \S+/(\d+)",
                          log)
    if started and started[-1] not in finished:
        return "asynchronous checkpoint write"
    return "training / evaluation"


def kill_anywhere(root: Path, cache: str, reference, runs: int, run_seconds: float, rng):
    """`runs` runs, each SIGKILLed 1-3 times and restarted until done. A random kill is drawn
    uniformly over a whole run's duration (start-up included, as it would be in real life); if
    the run finishes first, the duration estimate shrinks and the run starts again afresh."""
    rows, totals = [], {"runs": 0, "kills": 0, "resumes": 0, "mismatches": 0, "lost": [],
                        "missed": 0}
    phases: dict[str, int] = {}
    index = attempt = 0
    while index < runs:
        attempt += 1
        workdir = root / f"kill{attempt}"
        kills, resumes, lost = 0, 0, []
        wanted = 1 if index < len(KILLPOINTS) else rng.randint(1, 3)
        last_logged = 0
        while True:
            killpoint = KILLPOINTS[index] if index < len(KILLPOINTS) and kills == 0 else None
            run = harness.launch(workdir, cache, LOG_EVERY, killpoint=killpoint)
            if killpoint is None and kills < wanted:
                try:
                    run.process.wait(rng.uniform(0.0, run_seconds))
                except Exception:  # noqa: BLE001 - still running: kill it now
                    run.signal(signal.SIGKILL)
            code = run.wait(600)
            log = run.log()
            resumed = harness.resumed_step(log)
            if resumed is not None:
                resumes += 1
                lost.append(last_logged - resumed)
            # Steps lost = the furthest step finished so far - the step the restart resumed.
            last_logged = max([last_logged, resumed or 0, *harness.logged_steps(log)])
            if code == -signal.SIGKILL:
                kills += 1
                phase = phase_at_kill(log)
                phases[phase] = phases.get(phase, 0) + 1
                continue
            if code != 0:
                raise RuntimeError(f"run {index} failed with {code}:\n{log[-3000:]}")
            break
        if kills == 0:  # finished before the kill: a shorter estimate, and again
            totals["missed"] += 1
            run_seconds = 0.8 * (time.time() - run.started)
            shutil.rmtree(workdir, ignore_errors=True)
            continue
        bad = harness.mismatching_arrays(reference, harness.final_state(workdir))
        totals["runs"] += 1
        totals["kills"] += kills
        totals["resumes"] += resumes
        totals["mismatches"] += bool(bad)
        totals["lost"] += lost
        rows.append([index, kills, resumes, lost or "-", "identical" if not bad else
                     f"{len(bad)} arrays differ"])
        shutil.rmtree(workdir, ignore_errors=True)
        index += 1
    table("Kill anywhere: per run", ["run", "kills", "resumes", "steps lost per kill",
                                     "final parameters"], rows)
    table("Kill anywhere: where the kills landed", ["moment", "kills"],
          sorted(phases.items()))
    print(f"\n({totals['missed']} attempts finished before their random kill and were redone)")
    return totals


def preemption(root: Path, cache: str, reference, runs: int, run_seconds: float, rng):
    rows, attempt, training_seconds = [], 0, 5.0
    while len(rows) < runs:
        attempt += 1
        workdir = root / f"term{attempt}"
        run = harness.launch(workdir, cache, LOG_EVERY)
        delay = rng.uniform(0.0, run_seconds)
        if attempt % 2:  # every other run: a random moment once training has begun
            run.wait_for(lambda: " from step " in run.log())
            delay = rng.uniform(0.0, training_seconds)
        try:
            run.process.wait(delay)
        except Exception:  # noqa: BLE001
            run.signal(signal.SIGTERM)
        code, log = run.wait(600), run.log()
        if code == 0 and attempt % 2 and "preempted" not in log:
            training_seconds *= 0.8
        saved = re.findall(r"preempted: saved step (\d+)|preempted during start-up", log)
        if code == 0 and not saved:  # finished first: a shorter estimate, and again
            run_seconds = max(0.8 * (time.time() - run.started), 1.0)
            shutil.rmtree(workdir, ignore_errors=True)
            continue
        steps = harness.logged_steps(log)
        finished = max(steps) if steps else 0
        code2, log2 = harness.run_until_done(workdir, cache, LOG_EVERY)
        resumed = harness.resumed_step(log2) or 0
        bad = harness.mismatching_arrays(reference, harness.final_state(workdir))
        # Only before the entry point's first lines (the interpreter's start, ~50 ms) does
        # SIGTERM end Python at once (train/preemption.py); later in start-up it exits 0.
        moment = ("start-up, before the handler" if code == -signal.SIGTERM else
                  "start-up" if "preempted during start-up" in log else "training")
        rows.append([len(rows), moment, code, finished, resumed, finished - resumed,
                     "identical" if not bad and code2 == 0 else "DIFFERENT"])
        shutil.rmtree(workdir, ignore_errors=True)
    table("Preemption (SIGTERM at a random time)", [
        "run", "arrived during", "exit code", "last finished step", "resumed from",
        "steps lost", "final parameters"], rows)
    return rows


def damaged_checkpoints(root: Path, cache: str, reference_dir: Path):
    import numpy as np  # noqa: PLC0415

    from effnetv2_jax.train import run as run_setup  # noqa: PLC0415
    from effnetv2_jax.train import sharding  # noqa: PLC0415
    from effnetv2_jax.train.checkpoint import Checkpointer, abstract_like  # noqa: PLC0415
    sys.path.insert(0, str(REPO / "tests" / "configs"))
    import tiny  # noqa: PLC0415

    config = tiny.get_config()
    config.checkpoint.compile_cache_dir = cache
    run = run_setup.setup(config, str(root / "fresh"))
    run.checkpointer.close()
    target = abstract_like(run.state, sharding.replicated(run.mesh))
    newest = harness.saved_steps(reference_dir)[-1]
    rows = []

    def restore(directory=None):
        directory = directory or root / "damaged" / "checkpoints"
        checkpointer = Checkpointer(str(directory))
        try:
            _, _, step = checkpointer.restore(target)
        finally:
            checkpointer.close()
        return step

    for name in sorted(harness.DAMAGES):
        shutil.rmtree(root / "damaged", ignore_errors=True)
        shutil.copytree(reference_dir / "checkpoints", root / "damaged" / "checkpoints")
        harness.damage(root / "damaged" / "checkpoints" / str(newest), name)
        step = restore()
        exact = step != newest or not harness.mismatching_arrays(
            harness.final_state(reference_dir, newest), harness.final_state(root / "damaged",
                                                                             newest))
        rows.append([name, f"fell back to step {step} (skipped {newest}, reason logged)"
                     if step != newest else
                     f"restored step {step}, {'bitwise exact' if exact else 'WRONG VALUES'}"])
    table("Damaged checkpoints (newest step damaged)", ["damage", "restore"], rows)

    # Census: one byte flipped at 12 positions of each array data file, one at a time.
    reference_tree = harness.final_state(reference_dir, newest)
    census = {"caught by TensorStore": 0, "caught by the checksums": 0,
              "harmless (restored exactly)": 0, "WRONG VALUES restored": 0,
              "would be wrong without the checksums": 0}
    files = sorted(p.relative_to(reference_dir / "checkpoints" / str(newest)) for p in
                   (reference_dir / "checkpoints" / str(newest)).glob("state/**/d/*"))
    flip = 0
    for relative in files:
        size = (reference_dir / "checkpoints" / str(newest) / relative).stat().st_size
        for position in np.linspace(0, size - 1, 12).astype(int):
            # A new directory each time: TensorStore caches what it read, per path.
            flip += 1
            copy = root / "flips" / str(flip)
            shutil.copytree(reference_dir / "checkpoints", copy / "checkpoints")
            path = copy / "checkpoints" / str(newest) / relative
            data = bytearray(path.read_bytes())
            data[position] ^= 0x5A
            path.write_bytes(bytes(data))
            try:
                plain = harness.final_state(copy, newest)  # Orbax alone, no checksum check
                silent = bool(harness.mismatching_arrays(reference_tree, plain))
            except Exception:  # noqa: BLE001
                census["caught by TensorStore"] += 1
                shutil.rmtree(copy, ignore_errors=True)
                continue
            step = restore(copy / "checkpoints")
            shutil.rmtree(copy, ignore_errors=True)
            if step != newest:
                census["caught by the checksums"] += 1
            elif silent:
                census["WRONG VALUES restored"] += 1
            else:
                census["harmless (restored exactly)"] += 1
            census["would be wrong without the checksums"] += silent
    table(f"Single-byte flips in array data ({sum(list(census.values())[:4])} flips)",
          ["outcome", "flips"], list(census.items()))
    return rows, census


def disk_trouble(root: Path, cache: str):
    rows = []
    for name in ("read-only workdir", "disk full (RLIMIT_FSIZE 16 KiB)"):
        work = root / name.split()[0]
        if name.startswith("read-only"):
            run = harness.launch(work, cache, "--config.train.num_steps=400",
                                 preexec_fn=harness.without_root_override)
            run.wait_for(lambda: len(harness.saved_steps(work)) >= 2)
            harness.make_read_only(work)
        else:
            work.mkdir(parents=True)
            run = harness.launch(work, cache, "--config.train.num_steps=400",
                                 "--config.train.log_every_steps=400", pipe=True,
                                 log_name="../disk_full.log")
            run.wait_for(lambda: len(harness.saved_steps(work)) >= 2)
            harness.limit_file_size(run.process.pid, 16 * 1024)
        start = time.time()
        code = run.wait(600)
        harness.make_writable(work)
        error = [line for line in run.log().splitlines() if "CheckpointSaveError: " in line]
        intact = []
        for step in harness.saved_steps(work):
            intact.append(int(harness.final_state(work, step)["step"]) == step)
        rows.append([name, code, f"{time.time() - start:.0f} s",
                     error[-1].split("CheckpointSaveError: ")[1][:90] + "..." if error else "-",
                     f"{sum(intact)}/{len(intact)} restore"])
    table("Disk trouble during a save", ["fault", "exit code", "stopped after",
                                         "error (first 90 characters)", "earlier steps"], rows)
    return rows


def bad_data(root: Path):
    import numpy as np  # noqa: PLC0415

    from effnetv2_jax.data import clear_caches  # noqa: PLC0415
    from effnetv2_jax.data.folder_source import list_folder, readable  # noqa: PLC0415
    cases = harness.make_bad_image_folder(root / "images")
    clear_caches()
    listing = list_folder(str(root / "images"))
    kept = {listing.paths[i] for i in readable(listing, np.arange(len(listing.paths)), False)}
    rows = [[case, "decoded to RGB" if path in kept else "skipped, named in a warning, counted",
             "as expected" if (path in kept) == (expected == "decoded") else "UNEXPECTED"]
            for case, (path, expected) in cases.items()]
    table("Bad images in a folder", ["input", "handled", "check"], rows)
    return rows


def bad_configs(root: Path):
    import test_bad_config  # noqa: PLC0415

    from effnetv2_jax.train import run as run_setup  # noqa: PLC0415
    early = 0
    for override, named in harness.BAD_OVERRIDES:
        try:
            run_setup.setup(
                test_bad_config.parse(override, "--config.checkpoint.compile_cache_dir=none"),
                str(root / "bad_config"))
        except Exception as error:  # noqa: BLE001
            early += named in str(error)
    table("Bad config overrides and block strings", ["tried", "failed early naming the value"],
          [[len(harness.BAD_OVERRIDES), early]])
    return early


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="kill-anywhere runs (>= 3)")
    parser.add_argument("--preemptions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/effnetv2_faults")
    parser.add_argument("--only", default="", help="comma-separated sections: kill, term, "
                        "checkpoints, disk, images, configs (default: all)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cache = str(root / "compile_cache")

    start = time.time()
    code, log = harness.run_until_done(root / "reference", cache, LOG_EVERY, timeout=900)
    assert code == 0, log[-3000:]
    cold = time.time() - start
    start = time.time()
    code, _ = harness.run_until_done(root / "warm", cache, LOG_EVERY)
    warm = time.time() - start
    reference = harness.final_state(root / "reference")
    assert not harness.mismatching_arrays(reference, harness.final_state(root / "warm"))
    print(f"uninterrupted run: {cold:.0f} s cold, {warm:.0f} s with the compilation cache")

    only = set(filter(None, args.only.split(",")))
    if only:  # a partial run prints its sections' tables, no summary
        sections = {"kill": lambda: kill_anywhere(root, cache, reference, args.runs, warm, rng),
                    "term": lambda: preemption(root, cache, reference, args.preemptions, warm,
                                               rng),
                    "checkpoints": lambda: damaged_checkpoints(root, cache, root / "reference"),
                    "disk": lambda: disk_trouble(root, cache), "images": lambda: bad_data(root),
                    "configs": lambda: bad_configs(root)}
        for name in sorted(only):
            result = sections[name]()
            if name == "kill":
                print(f"\nruns {result['runs']}, kills {result['kills']}, resumes "
                      f"{result['resumes']}, mismatches {result['mismatches']}, steps lost "
                      f"per kill: max {max(result['lost'] or [0])}, mean "
                      f"{sum(result['lost']) / max(len(result['lost']), 1):.2f}")
        return
    kills = kill_anywhere(root, cache, reference, args.runs, warm, rng)
    terms = preemption(root, cache, reference, args.preemptions, warm, rng)
    _, census = damaged_checkpoints(root, cache, root / "reference")
    disks = disk_trouble(root, cache)
    images = bad_data(root)
    early = bad_configs(root)

    lost = kills["lost"]
    table("Summary", ["figure", "value"], [
        ["kill-anywhere runs / SIGKILLs / resumes", f"{kills['runs']} / {kills['kills']} / "
         f"{kills['resumes']}"],
        ["final parameters differing from an uninterrupted run", kills["mismatches"]],
        ["steps lost per SIGKILL (max; checkpoint every 2 steps)", max(lost) if lost else 0],
        ["SIGTERMs / in training, exit code 0 / steps lost (max)", f"{len(terms)} / "
         f"{sum(r[1] == 'training' and r[2] == 0 for r in terms)} / "
         f"{max(r[5] for r in terms)}"],
        ["single-byte flips restored as wrong values (without checksums)",
         f"{census['WRONG VALUES restored']} "
         f"({census['would be wrong without the checksums']})"],
        ["disk faults stopping with a clear error, earlier steps intact",
         f"{sum('could not write' in r[3] for r in disks)}/{len(disks)}"],
        ["bad images handled as expected", f"{sum(r[2] == 'as expected' for r in images)}/"
         f"{len(images)}"],
        ["bad overrides failing early, naming the value",
         f"{early}/{len(harness.BAD_OVERRIDES)}"],
    ])


if __name__ == "__main__":
    main()
