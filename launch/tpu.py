#!/usr/bin/env python3
"""Train effnetv2_jax on a Cloud TPU VM slice: create, setup, train, logs, status, stop, watch.

    T="--project=P --zone=us-central2-b --name=v2s --accelerator-type=v4-32 --queued --spot"
    python launch/tpu.py create $T        # a TPU VM (with --queued: a queued resource)
    python launch/tpu.py setup $T         # copy this checkout to each worker, pip install .[tpu,data] at the lock's versions
    python launch/tpu.py train $T --workdir=gs://BUCKET/v2s -- --config.KEY=VALUE ...
    python launch/tpu.py logs $T [--all] [--follow]
    python launch/tpu.py status $T
    python launch/tpu.py stop $T          # SIGTERM: the run saves a checkpoint, then exits
    python launch/tpu.py watch $T --workdir=gs://BUCKET/v2s   # recreate a preempted spot
                                          # slice and re-run train, until the run finishes
    python launch/tpu.py delete $T

Every subcommand takes the slice's flags ($T; --spot and --preemptible matter to create and
watch only) and --dry-run, which prints the exact gcloud commands instead of running them.
All options are checked before the first gcloud call, and `create`, `train` and `watch` first
compile every step of the config for the accelerator on this machine (`python -m
effnetv2_jax.main --mode=compile`, libtpu, no TPU) and stop if one does not fit
(`--skip-compile-check` skips it). `train` is idempotent: it stops a stale run
on each worker, and effnetv2_jax resumes from the latest checkpoint in the workdir. Standard
library only, so it runs wherever gcloud does. See launch/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accelerators  # noqa: E402
import worker_scripts  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
# What a worker needs to `pip install -e .` and train (setup.py reads README.md).
SOURCE_PATHS = ("setup.py", "README.md", "LICENSE", "requirements", "effnetv2_jax", "configs", "launch")
ZONE_PATTERN = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")     # e.g. us-central2-b
PROJECT_ENV = "CLOUDSDK_CORE_PROJECT"                          # gcloud's own default project
# Queued-resource states (`state.state`): a preempted spot slice is SUSPENDED.
QUEUED_GONE = ("SUSPENDED", "FAILED", "NOT_FOUND")
QUEUED_READY = "ACTIVE"
# Worker 0's run states (launch/worker_scripts.py) after which `watch` runs `train` again.
RESTART_STATES = ("not-set-up", "not-started", "stopped", "preempted")
# Subcommands that take --config and first compile it for the slice (--skip-compile-check).
COMPILE_CHECKED = ("create", "train", "watch")


class UsageError(Exception):
    """A missing or wrong option; reported before any gcloud call."""


# ---------------------------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--project", default=os.environ.get(PROJECT_ENV, ""),
                        help=f"Google Cloud project id (default: ${PROJECT_ENV})")
    common.add_argument("--zone", default="", help="zone of the slice, e.g. us-central2-b")
    common.add_argument("--name", default="effnetv2",
                        help="TPU VM name (also the queued resource's name)")
    common.add_argument("--accelerator-type", default="",
                        help="e.g. v4-32, v5litepod-16, v5p-64, v6e-64 (create, train, watch)")
    common.add_argument("--runtime-version", default="",
                        help="TPU VM software version (default: per generation, see "
                             "launch/accelerators.py)")
    common.add_argument("--queued", action="store_true",
                        help="the slice is a queued resource (create, status, delete, watch)")
    # Every subcommand takes the slice's flags, so one `T="... --queued --spot"` serves the
    # whole workflow; --spot and --preemptible only change what create and watch create.
    common.add_argument("--spot", action="store_true",
                        help="spot capacity (cheaper, preemptible; create and watch)")
    common.add_argument("--preemptible", action="store_true",
                        help="legacy preemptible TPU VM (tpu-vm create only; prefer --spot)")
    common.add_argument("--dry-run", action="store_true",
                        help="print the gcloud commands instead of running them")

    parser = argparse.ArgumentParser(
        prog="launch/tpu.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = sub.add_parser("create", parents=[common], help="create the slice")
    _add_config_args(create)
    setup = sub.add_parser("setup", parents=[common],
                           help="copy (or clone) the code and pip install .[tpu,data] on every worker, "
                                "at requirements/lock.txt's versions")
    _add_setup_args(setup)
    train = sub.add_parser("train", parents=[common],
                           help="(re)start training on every worker, in the background")
    _add_train_args(train)
    _add_config_args(train)
    logs = sub.add_parser("logs", parents=[common], help="tail worker 0's log (or every worker's)")
    logs.add_argument("--all", action="store_true", help="every worker, lines labelled by host")
    logs.add_argument("--follow", action="store_true", help="keep following (tail -F)")
    logs.add_argument("--lines", type=int, default=50)
    sub.add_parser("status", parents=[common], help="the slice's state and each worker's run")
    stop = sub.add_parser("stop", parents=[common],
                          help="stop the run on every worker (it saves a checkpoint first)")
    stop.add_argument("--grace", type=int, default=180,
                      help="seconds to wait for the checkpoint before SIGKILL")
    sub.add_parser("delete", parents=[common], help="delete the slice")
    watch = sub.add_parser("watch", parents=[common],
                           help="keep a spot queued resource training until the run finishes")
    _add_setup_args(watch)
    _add_train_args(watch)
    _add_config_args(watch)
    watch.add_argument("--interval", type=float, default=300.0, help="seconds between checks")
    watch.add_argument("--max-failures", type=int, default=3,
                       help="give up after the run fails (non-zero exit) this many times")
    return parser


def _add_setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default="",
                   help="git URL to clone on each worker instead of copying this checkout")
    p.add_argument("--ref", default="", help="branch, tag or commit to check out with --repo")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="",
                   help="checkpoints and logs; gs://BUCKET/PATH (required on multi-host slices)")
    p.add_argument("--grace", type=int, default=180,
                   help="seconds a stale run gets to save before SIGKILL")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/s_imagenet.py",
                   help="config file, relative to the repository root")
    p.add_argument("--skip-compile-check", action="store_true",
                   help="do not first compile every step of the config for the accelerator "
                        "on this machine (python -m effnetv2_jax.main --mode=compile; needs "
                        "`pip install -e '.[tpu]'` here, and takes minutes)")
    p.add_argument("overrides", nargs="*", metavar="--config.KEY=VALUE",
                   help="config overrides, after a `--`")


# ---------------------------------------------------------------------------------------------
# Checks: all of them run before the first gcloud call

def validate(args: argparse.Namespace) -> accelerators.Slice | None:
    """Raises UsageError naming the bad option; returns the parsed slice (if one was given)."""
    if not args.project:
        raise UsageError(f"no project: pass --project=PROJECT_ID (or set ${PROJECT_ENV})")
    if not args.zone:
        raise UsageError("no zone: pass --zone=ZONE, e.g. --zone=us-central2-b")
    if not ZONE_PATTERN.match(args.zone):
        raise UsageError(f"--zone={args.zone!r} is not a zone name like us-central2-b")
    if not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", args.name):
        raise UsageError(f"--name={args.name!r}: use lower-case letters, digits and dashes")
    needs_type = args.command in COMPILE_CHECKED
    if needs_type and not args.accelerator_type:
        raise UsageError(f"{args.command} needs --accelerator-type, e.g. v4-32 "
                         f"(valid: {', '.join(accelerators.valid_names()[:6])}, ...)")
    slice_ = None
    if args.accelerator_type:
        try:
            slice_ = accelerators.parse_accelerator(args.accelerator_type)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.spot or args.preemptible:  # on any subcommand: the same T serves them all
        if args.spot and args.preemptible:
            raise UsageError("--spot and --preemptible exclude each other; use --spot")
        if args.queued and args.preemptible:
            raise UsageError("queued resources take --spot, not --preemptible")
    if args.command == "watch" and not args.queued:
        raise UsageError("watch recreates a queued resource: add --queued (and --spot)")
    if args.command in COMPILE_CHECKED:
        _validate_config(args)
    if args.command in ("train", "watch"):
        _validate_train(args, slice_)
    if args.command in ("setup", "watch") and args.ref and not args.repo:
        raise UsageError("--ref needs --repo (without --repo, setup copies this checkout)")
    return slice_


def _validate_train(args: argparse.Namespace, slice_: accelerators.Slice) -> None:
    if not args.workdir:
        raise UsageError("no workdir: pass --workdir=gs://BUCKET/PATH")
    if slice_.multi_host and not args.workdir.startswith("gs://"):
        raise UsageError(
            f"--workdir={args.workdir!r} is not on gs://: {slice_.name} has {slice_.hosts} "
            f"hosts, and all of them must write and read the same checkpoints; use "
            f"--workdir=gs://BUCKET/PATH")


def _validate_config(args: argparse.Namespace) -> None:
    path = args.config.split(":", 1)[0]  # configs/s_imagenet.py:code,hw=tpu_v4_32
    if not (REPO_ROOT / path).is_file():
        raise UsageError(f"--config={args.config!r}: {path} is not a file under {REPO_ROOT}")
    for override in args.overrides:
        if not override.startswith("--config.") or "=" not in override:
            raise UsageError(f"override {override!r} is not of the form --config.KEY=VALUE")
        if override.startswith("--config.distributed."):
            raise UsageError(f"{override!r}: on Cloud TPU the slice configures "
                             f"jax.distributed itself; drop it")


# ---------------------------------------------------------------------------------------------
# gcloud command lines (pure functions: tests compare them)

def _where(args) -> list[str]:
    return [f"--project={args.project}", f"--zone={args.zone}"]


def create_command(args, slice_: accelerators.Slice) -> list[str]:
    runtime = args.runtime_version or slice_.generation.runtime_version
    if args.queued:
        cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name,
               f"--node-id={args.name}", *_where(args),
               f"--accelerator-type={slice_.name}", f"--runtime-version={runtime}"]
    else:
        cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *_where(args),
               f"--accelerator-type={slice_.name}", f"--version={runtime}"]
    if args.spot:
        cmd.append("--spot")
    if args.preemptible:
        cmd.append("--preemptible")
    return cmd


def describe_command(args) -> list[str]:
    if args.queued:
        return ["gcloud", "compute", "tpus", "queued-resources", "describe", args.name,
                *_where(args), "--format=value(state.state)"]
    return ["gcloud", "compute", "tpus", "tpu-vm", "describe", args.name, *_where(args),
            "--format=value(state)"]


def delete_command(args) -> list[str]:
    if args.queued:   # --force also deletes the TPU VM the queued resource holds
        return ["gcloud", "compute", "tpus", "queued-resources", "delete", args.name,
                *_where(args), "--force", "--quiet"]
    return ["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_where(args), "--quiet"]


def ssh_command(args, script: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args),
            f"--worker={worker}", f"--command={script}"]


def scp_command(args, local: str, remote: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{args.name}:{remote}",
            *_where(args), "--worker=all"]


# ---------------------------------------------------------------------------------------------
# Running gcloud (or printing it)

class Gcloud:
    """Runs gcloud command lines; with dry_run, prints them (one per line, shell-quoted)."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        if not dry_run and shutil.which("gcloud") is None:
            raise UsageError("gcloud is not on PATH: install the Google Cloud CLI "
                             "(cloud.google.com/sdk) or use --dry-run")

    def run(self, cmd: list[str], capture: bool = False, check: bool = True) -> str:
        """Runs `cmd`; returns its stdout when `capture` (else "" and output goes to the tty)."""
        if self.dry_run:
            print(shlex.join(cmd))
            return ""
        result = subprocess.run(cmd, text=True, stdout=subprocess.PIPE if capture else None)
        if check and result.returncode:
            raise subprocess.CalledProcessError(result.returncode, cmd[:5])
        return (result.stdout or "") if capture and result.returncode == 0 else ""


def pack_source(root: Path, destination: Path) -> Path:
    """Writes SOURCE_PATHS of `root` into a .tar.gz (no caches, virtualenvs or git data)."""
    skip = {"__pycache__", ".git", ".venv", ".pytest_cache"}

    def keep(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        if any(p in skip or p.endswith(".egg-info") for p in parts):
            return None
        return None if info.name.endswith(".pyc") else info

    with tarfile.open(destination, "w:gz") as tar:
        for name in SOURCE_PATHS:
            if (root / name).exists():
                tar.add(root / name, arcname=name, filter=keep)
    return destination


# ---------------------------------------------------------------------------------------------
# Subcommands

def compile_check_command(args, slice_, workdir: str) -> list[str]:
    """The compile-mode run that checks the config on the slice before anything is spent."""
    return [sys.executable, "-m", "effnetv2_jax.main", f"--config={args.config}",
            "--mode=compile", f"--topology={slice_.name}", f"--workdir={workdir}",
            *args.overrides]


def compile_check(args, slice_, dry_run: bool) -> None:
    """Compiles every step of the config for the slice here (libtpu, no TPU) and raises
    UsageError, before any gcloud call, if one does not fit; `--skip-compile-check` skips."""
    if args.skip_compile_check:
        return
    with tempfile.TemporaryDirectory() as workdir:
        cmd = compile_check_command(args, slice_, workdir)
        if dry_run:  # stderr: stdout lists exactly the gcloud calls
            print(f"# first, the compile check: {shlex.join(cmd)}", file=sys.stderr)
            return
        _say(f"compiling {args.config} for {slice_.name} on this machine first (minutes; "
             f"--skip-compile-check skips)")
        result = subprocess.run(cmd, cwd=REPO_ROOT, text=True, stderr=subprocess.PIPE,
                                check=False)
    if result.returncode:
        failed = [line for line in result.stderr.splitlines()
                  if line.startswith(("FAILED", "compile check failed"))]
        detail = "\n".join(failed) or "\n".join(result.stderr.splitlines()[-8:])
        hint = ("; install the package here with `pip install -e '.[tpu]'`"
                if "No module named" in result.stderr else "")
        raise UsageError(f"{args.config} does not pass the compile check for {slice_.name}:\n"
                         f"{detail}\n(fix the config, or pass --skip-compile-check to launch "
                         f"anyway{hint})")


def cmd_create(args, gcloud: Gcloud, slice_) -> int:
    print(f"# {slice_.describe()}", file=sys.stderr)
    compile_check(args, slice_, gcloud.dry_run)
    gcloud.run(create_command(args, slice_))
    return 0


def cmd_setup(args, gcloud: Gcloud, slice_) -> int:
    if args.repo:
        gcloud.run(ssh_command(args, worker_scripts.setup(args.repo, args.ref)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / worker_scripts.ARCHIVE
        if gcloud.dry_run:
            print(f"# pack {', '.join(SOURCE_PATHS)} of {REPO_ROOT} into {archive}")
        else:
            pack_source(REPO_ROOT, archive)
        gcloud.run(scp_command(args, str(archive), worker_scripts.ARCHIVE))
        gcloud.run(ssh_command(args, worker_scripts.setup()))
    return 0


def cmd_train(args, gcloud: Gcloud, slice_, check: bool = True) -> int:
    if check:
        compile_check(args, slice_, gcloud.dry_run)
    script = worker_scripts.train(args.config, args.workdir, args.overrides, slice_.name,
                                  args.grace)
    gcloud.run(ssh_command(args, script))
    return 0


def cmd_logs(args, gcloud: Gcloud, slice_) -> int:
    script = worker_scripts.logs(args.lines, args.follow, label=args.all)
    gcloud.run(ssh_command(args, script, worker="all" if args.all else "0"))
    return 0


def cmd_status(args, gcloud: Gcloud, slice_) -> int:
    state = gcloud.run(describe_command(args), capture=True, check=False).strip()
    if not gcloud.dry_run:
        print(f"{args.name}: {state or 'NOT_FOUND'}")
        if state not in ("ACTIVE", "READY"):
            return 0
    gcloud.run(ssh_command(args, worker_scripts.probe()), check=False)
    return 0


def cmd_stop(args, gcloud: Gcloud, slice_) -> int:
    gcloud.run(ssh_command(args, worker_scripts.stop(args.grace)))
    return 0


def cmd_delete(args, gcloud: Gcloud, slice_) -> int:
    gcloud.run(delete_command(args))
    return 0


def cmd_watch(args, gcloud: Gcloud, slice_) -> int:
    """Until the run finishes: recreate the queued resource when preempted (SUSPENDED) or
    failed, set it up when new, and re-run `train` whenever no run is going on."""
    compile_check(args, slice_, gcloud.dry_run)  # once, not at each restart
    if gcloud.dry_run:
        return _print_watch_plan(args, gcloud, slice_)
    failures = 0
    while True:
        try:
            run = _look(args, gcloud, slice_)
            if run == "finished":
                _say("the run has finished")
                return 0
            if run.startswith("failed"):
                failures += 1
                if failures >= args.max_failures:
                    _say(f"the run failed {failures} times; see `logs --all`. Giving up")
                    return 1
            if run == "not-set-up":
                cmd_setup(args, gcloud, slice_)
            if run in RESTART_STATES or run.startswith("failed"):
                cmd_train(args, gcloud, slice_, check=False)
        except subprocess.CalledProcessError as e:   # e.g. ssh while the VMs still boot
            _say(f"`{shlex.join(e.cmd)} ...` exited with {e.returncode}; trying again later")
        time.sleep(args.interval)


def _look(args, gcloud: Gcloud, slice_) -> str:
    """Reads the queued resource's state, recreates it if it is gone, and returns worker 0's
    run state ("" while there is no ACTIVE slice to ask, or ssh failed)."""
    state = gcloud.run(describe_command(args), capture=True, check=False).strip() or "NOT_FOUND"
    if state in QUEUED_GONE:
        _say(f"queued resource {args.name} is {state}: (re)creating it")
        if state != "NOT_FOUND":
            gcloud.run(delete_command(args))
        gcloud.run(create_command(args, slice_))
        return ""
    if state != QUEUED_READY:
        _say(f"queued resource {args.name} is {state}: waiting")
        return ""
    probe = gcloud.run(ssh_command(args, worker_scripts.probe(), worker="0"), capture=True,
                       check=False)
    run = worker_scripts.parse_state(probe)
    _say(f"queued resource ACTIVE, run on worker 0: {run or 'unknown (ssh failed)'}")
    return run


def _print_watch_plan(args, gcloud: Gcloud, slice_) -> int:
    print(f"# every {args.interval:g} s, read the queued resource's state:")
    gcloud.run(describe_command(args))
    print(f"# if {' or '.join(QUEUED_GONE)}: delete it (unless NOT_FOUND) and create it again:")
    gcloud.run(delete_command(args))
    gcloud.run(create_command(args, slice_))
    print("# if ACTIVE: ask worker 0 about the run:")
    gcloud.run(ssh_command(args, worker_scripts.probe(), worker="0"))
    print("# not-set-up: setup, then train; not-started, stopped, preempted or failed: train; "
          "finished: stop watching")
    cmd_setup(args, gcloud, slice_)
    cmd_train(args, gcloud, slice_, check=False)
    return 0


def _say(message: str) -> None:
    print(f"[launch {time.strftime('%H:%M:%S')}] {message}", flush=True)


COMMANDS = {"create": cmd_create, "setup": cmd_setup, "train": cmd_train, "logs": cmd_logs,
            "status": cmd_status, "stop": cmd_stop, "delete": cmd_delete, "watch": cmd_watch}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        slice_ = validate(args)
        gcloud = Gcloud(args.dry_run)
        return COMMANDS[args.command](args, gcloud, slice_)
    except UsageError as e:
        print(f"launch/tpu.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"launch/tpu.py {args.command}: `{shlex.join(e.cmd)} ...` exited with "
              f"{e.returncode}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
