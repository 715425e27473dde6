"""launch/tpu.py against a fake gcloud: the commands of every subcommand, dry runs, the checks
that stop a bad invocation before any gcloud call, and `watch` replaying a preemption."""

import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import accelerators
import pytest
import tpu
import worker_scripts

REPO_ROOT = Path(__file__).resolve().parents[2]

WHERE = ["--project=proj", "--zone=us-central2-b"]
GCLOUD_WHERE = ["--project=proj", "--zone=us-central2-b"]


def run(*argv: str) -> int:
    """The launcher, without its compile check (tested on its own below: it takes minutes for
    the recipes these tests launch)."""
    if argv[0] in tpu.COMPILE_CHECKED:
        argv = (argv[0], "--skip-compile-check", *argv[1:])
    return tpu.main([*argv])


def command_of(call: list[str]) -> str:
    """The --command=... script of a recorded ssh call."""
    return next(a for a in call if a.startswith("--command="))[len("--command="):]


# --- the accelerator table -------------------------------------------------------------------

@pytest.mark.parametrize("name, chips, hosts, devices, runtime", [
    ("v4-8", 4, 1, 4, "tpu-ubuntu2204-base"),
    ("v4-32", 16, 4, 16, "tpu-ubuntu2204-base"),
    ("v3-32", 16, 4, 32, "tpu-ubuntu2204-base"),
    ("v5litepod-8", 8, 1, 8, "v2-alpha-tpuv5-lite"),
    ("v5litepod-16", 16, 4, 16, "v2-alpha-tpuv5-lite"),
    ("v5litepod-32", 32, 8, 32, "v2-alpha-tpuv5-lite"),
    ("v5p-64", 32, 8, 32, "v2-alpha-tpuv5"),
    ("v6e-8", 8, 1, 8, "v2-alpha-tpuv6e"),
    ("v6e-64", 64, 16, 64, "v2-alpha-tpuv6e"),
])
def test_accelerator_table(name, chips, hosts, devices, runtime):
    s = accelerators.parse_accelerator(name)
    assert (s.chips, s.hosts, s.devices, s.generation.runtime_version) == (
        chips, hosts, devices, runtime)
    assert s.multi_host == (hosts > 1)


@pytest.mark.parametrize("name", ["v4-12", "v7-8", "v4", "v4-abc", "tpu-v4-32", ""])
def test_unknown_accelerator_names_the_valid_ones(name):
    with pytest.raises(ValueError, match=r"unknown accelerator type .*valid: v3-\{8,32"):
        accelerators.parse_accelerator(name)


# --- create ----------------------------------------------------------------------------------

@pytest.mark.parametrize("accel, runtime", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-64", "v2-alpha-tpuv5"), ("v6e-64", "v2-alpha-tpuv6e")])
def test_create_tpu_vm_and_queued_resource(fake_gcloud, accel, runtime):
    assert run("create", *WHERE, "--name=v2s", f"--accelerator-type={accel}", "--spot") == 0
    assert run("create", *WHERE, "--name=v2s", f"--accelerator-type={accel}", "--queued",
               "--spot") == 0
    assert fake_gcloud.calls() == [
        ["compute", "tpus", "tpu-vm", "create", "v2s", *GCLOUD_WHERE,
         f"--accelerator-type={accel}", f"--version={runtime}", "--spot"],
        ["compute", "tpus", "queued-resources", "create", "v2s", "--node-id=v2s", *GCLOUD_WHERE,
         f"--accelerator-type={accel}", f"--runtime-version={runtime}", "--spot"],
    ]


def test_create_options(fake_gcloud):
    run("create", *WHERE, "--accelerator-type=v4-8", "--preemptible",
        "--runtime-version=tpu-vm-base")
    run("create", *WHERE, "--accelerator-type=v4-8")
    assert fake_gcloud.calls() == [
        ["compute", "tpus", "tpu-vm", "create", "effnetv2", *GCLOUD_WHERE,
         "--accelerator-type=v4-8", "--version=tpu-vm-base", "--preemptible"],
        ["compute", "tpus", "tpu-vm", "create", "effnetv2", *GCLOUD_WHERE,
         "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"],
    ]


# --- the other subcommands -------------------------------------------------------------------

def test_train_runs_the_entry_point_on_every_worker(fake_gcloud):
    assert run("train", *WHERE, "--accelerator-type=v4-32", "--workdir=gs://bucket/v2s", "--",
               "--config.data.data_dir=gs://bucket/tfds", "--config.train.num_steps=100") == 0
    [call] = fake_gcloud.calls()
    assert call[:9] == ["compute", "tpus", "tpu-vm", "ssh", "effnetv2", *GCLOUD_WHERE,
                        "--worker=all", call[8]]
    script = command_of(call)
    expected = ('"$HOME/effnetv2_venv/bin/python" -m effnetv2_jax.main '
                '--config=configs/s_imagenet.py --workdir=gs://bucket/v2s '
                '--config.data.data_dir=gs://bucket/tfds --config.train.num_steps=100')
    assert shlex.quote(expected + '; echo $? > "$HOME/effnetv2_run/exit_code"') in script
    assert "export TPU_ACCELERATOR_TYPE=v4-32" in script
    # A stale run is stopped before the new one starts, in the background, logging to a file.
    assert script.index("\nstop_run\n") < script.index("setsid nohup bash -c")
    assert '> "$HOME/effnetv2_run/train.log" 2>&1 < /dev/null &' in script


def test_single_host_slice_may_use_a_local_workdir(fake_gcloud):
    assert run("train", *WHERE, "--accelerator-type=v4-8", "--workdir=/home/me/v2s") == 0
    assert "--workdir=/home/me/v2s" in command_of(fake_gcloud.calls()[0])


def test_logs_status_stop_delete(fake_gcloud):
    fake_gcloud.set_replies(describe=["READY", "ACTIVE"])
    ssh = ["compute", "tpus", "tpu-vm", "ssh", "v2s", *GCLOUD_WHERE]
    run("logs", *WHERE, "--name=v2s")
    run("logs", *WHERE, "--name=v2s", "--all", "--follow", "--lines=5")
    run("status", *WHERE, "--name=v2s")
    run("status", *WHERE, "--name=v2s", "--queued")
    run("stop", *WHERE, "--name=v2s", "--grace=30")
    run("delete", *WHERE, "--name=v2s")
    run("delete", *WHERE, "--name=v2s", "--queued")
    calls = fake_gcloud.calls()
    assert calls[0] == [*ssh, "--worker=0",
                        '--command=tail -n 50 "$HOME/effnetv2_run/train.log"']
    assert calls[1] == [*ssh, "--worker=all", '--command=tail -n 5 -F '
                        '"$HOME/effnetv2_run/train.log" | sed -u "s/^/[$(hostname)] /"']
    assert calls[2] == ["compute", "tpus", "tpu-vm", "describe", "v2s", *GCLOUD_WHERE,
                        "--format=value(state)"]
    assert calls[3] == [*ssh, "--worker=all", f"--command={worker_scripts.probe()}"]
    assert calls[4] == ["compute", "tpus", "queued-resources", "describe", "v2s",
                        *GCLOUD_WHERE, "--format=value(state.state)"]
    assert calls[5][:-1] == [*ssh, "--worker=all"]
    assert calls[6] == [*ssh, "--worker=all", f"--command={worker_scripts.stop(30)}"]
    assert "seq 150" in calls[6][-1]   # 30 s in 0.2 s steps
    assert calls[7] == ["compute", "tpus", "tpu-vm", "delete", "v2s", *GCLOUD_WHERE, "--quiet"]
    assert calls[8] == ["compute", "tpus", "queued-resources", "delete", "v2s", *GCLOUD_WHERE,
                        "--force", "--quiet"]
    assert len(calls) == 9


# The docs set T="--project=... --accelerator-type=v4-32 --queued --spot" once and pass it to
# every subcommand (test_documented_commands.py runs their lines).
SLICE = [*WHERE, "--name=v2s", "--accelerator-type=v4-32", "--queued", "--spot"]


@pytest.mark.parametrize("command", sorted(tpu.COMMANDS))
def test_every_subcommand_takes_the_slice_flags(fake_gcloud, command):
    extra = ["--workdir=gs://b/r"] if command in ("train", "watch") else []
    assert run(command, *SLICE, *extra, "--dry-run") == 0


def test_queued_selects_the_queued_resource_form(fake_gcloud, capsys):
    for command in ("create", "status", "delete"):
        assert run(command, *SLICE, "--dry-run") == 0
    out = capsys.readouterr().out
    for verb in ("create", "describe", "delete"):
        assert f"gcloud compute tpus queued-resources {verb} v2s" in out
    assert "tpu-vm create" not in out and "tpu-vm delete" not in out


def test_spot_and_preemptible_exclude_each_other_on_any_subcommand(fake_gcloud, capsys):
    assert run("status", *WHERE, "--spot", "--preemptible") == 2
    assert "exclude each other" in capsys.readouterr().err and fake_gcloud.calls() == []


def test_status_skips_the_workers_of_a_missing_slice(fake_gcloud, capsys):
    fake_gcloud.set_replies(describe=["NOT_FOUND"])
    assert run("status", *WHERE, "--queued") == 0
    assert "effnetv2: NOT_FOUND" in capsys.readouterr().out
    assert [c[3] for c in fake_gcloud.calls()] == ["describe"]


def test_setup_copies_the_checkout_to_every_worker(fake_gcloud):
    assert run("setup", *WHERE) == 0
    scp, ssh = fake_gcloud.calls()
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
    assert scp[4].endswith("/effnetv2_jax.tar.gz")
    assert scp[5:] == ["effnetv2:effnetv2_jax.tar.gz", *GCLOUD_WHERE, "--worker=all"]
    assert ssh[-2] == "--worker=all"
    assert 'tar -xzf "$HOME/effnetv2_jax.tar.gz"' in command_of(ssh)
    assert '-e "$HOME/effnetv2_jax[tpu,data]"' in command_of(ssh)
    assert '-c "$HOME/effnetv2_jax/requirements/lock.txt"' in command_of(ssh)


def test_setup_can_clone_instead(fake_gcloud):
    assert run("setup", *WHERE, "--repo=https://example.com/effnetv2_jax.git", "--ref=v0.1") == 0
    [ssh] = fake_gcloud.calls()
    script = command_of(ssh)
    assert 'git clone --quiet https://example.com/effnetv2_jax.git "$HOME/effnetv2_jax"' in script
    assert 'checkout --quiet v0.1' in script and "tar -xzf" not in script


def test_pack_source_keeps_what_pip_install_needs(tmp_path):
    for name in ("setup.py", "README.md", "requirements/lock.txt", "effnetv2_jax/a.py",
                 "effnetv2_jax/__pycache__/a.pyc",
                 "configs/c.py", "launch/tpu.py", ".venv/bin/python", "tests/test_a.py",
                 "effnetv2_jax.egg-info/PKG-INFO"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    archive = tpu.pack_source(tmp_path, tmp_path / "out.tar.gz")
    with tarfile.open(archive) as tar:
        files = sorted(m.name for m in tar.getmembers() if m.isfile())
    # The lock travels too: worker_scripts installs at its versions where the checkout holds it.
    assert files == ["README.md", "configs/c.py", "effnetv2_jax/a.py", "launch/tpu.py",
                     "requirements/lock.txt", "setup.py"]


# --- dry runs --------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["create", "--accelerator-type=v5p-64", "--queued", "--spot"],
    ["setup", "--repo=https://example.com/r.git"],
    ["train", "--accelerator-type=v6e-64", "--workdir=gs://b/r", "--", "--config.seed=1"],
    ["logs", "--all"], ["status"], ["stop"], ["delete", "--queued"],
])
def test_dry_run_prints_exactly_what_a_real_run_calls(fake_gcloud, capsys, argv):
    assert run(argv[0], *WHERE, "--dry-run", *argv[1:]) == 0
    printed = shlex.split(capsys.readouterr().out, comments=True)
    assert fake_gcloud.calls() == []
    assert run(argv[0], *WHERE, *argv[1:]) == 0
    assert printed == [word for call in fake_gcloud.calls() for word in ["gcloud", *call]]


@pytest.mark.parametrize("argv", [["setup"], ["watch", "--accelerator-type=v4-32", "--queued",
                                              "--spot", "--workdir=gs://b/r"]])
def test_dry_run_of_setup_and_watch_calls_nothing(fake_gcloud, capsys, argv):
    assert run(*argv, *WHERE, "--dry-run") == 0
    out = capsys.readouterr().out
    assert fake_gcloud.calls() == []
    assert "gcloud compute tpus tpu-vm scp" in out and "tar -xzf" in out
    if argv[0] == "watch":
        assert "effnetv2_jax.main" in out
        for verb in ("queued-resources describe", "queued-resources delete",
                     "queued-resources create"):
            assert f"gcloud compute tpus {verb}" in out


# --- checks that stop before any gcloud call -------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["create", "--zone=us-central2-b", "--accelerator-type=v4-32"], "no project"),
    (["status", "--project=p"], "no zone"),
    (["status", "--project=p", "--zone=us-central2"], "not a zone name"),
    (["status", *WHERE, "--name=My_TPU"], "--name='My_TPU'"),
    (["create", *WHERE], "create needs --accelerator-type"),
    (["create", *WHERE, "--accelerator-type=v4-33"], "unknown accelerator type 'v4-33'"),
    (["create", *WHERE, "--accelerator-type=v9-8"], "valid: v3-"),
    (["create", *WHERE, "--accelerator-type=v4-8", "--spot", "--preemptible"], "exclude"),
    (["create", *WHERE, "--accelerator-type=v4-8", "--queued", "--preemptible"],
     "queued resources take --spot"),
    (["train", *WHERE, "--accelerator-type=v4-32", "--workdir=/home/me/run"],
     "is not on gs://: v4-32 has 4 hosts"),
    (["train", *WHERE, "--accelerator-type=v5litepod-16", "--workdir=runs/x"],
     "v5litepod-16 has 4 hosts"),
    (["train", *WHERE, "--accelerator-type=v4-32"], "no workdir"),
    (["train", *WHERE, "--accelerator-type=v4-32", "--workdir=gs://b/r", "--config=nope.py"],
     "nope.py is not a file"),
    (["create", *WHERE, "--accelerator-type=v4-32", "--config=nope.py:code,hw=tpu_v4_32"],
     "'nope.py:code,hw=tpu_v4_32': nope.py is not a file"),
    (["train", *WHERE, "--accelerator-type=v4-32", "--workdir=gs://b/r", "--", "seed=1"],
     "not of the form --config.KEY=VALUE"),
    (["train", *WHERE, "--accelerator-type=v4-32", "--workdir=gs://b/r", "--",
      "--config.distributed.num_processes=4"], "configures jax.distributed itself"),
    (["watch", *WHERE, "--accelerator-type=v4-32", "--workdir=gs://b/r"], "add --queued"),
    (["setup", *WHERE, "--ref=main"], "--ref needs --repo"),
])
def test_bad_options_stop_before_gcloud(fake_gcloud, capsys, argv, message):
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and "error:" in err
    assert fake_gcloud.calls() == []


def test_missing_gcloud_is_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert run("status", *WHERE) == 2
    assert "gcloud is not on PATH" in capsys.readouterr().err
    assert run("status", *WHERE, "--dry-run") == 0


def test_project_defaults_to_gcloud_environment(fake_gcloud, monkeypatch):
    monkeypatch.setenv("CLOUDSDK_CORE_PROJECT", "from-env")
    assert run("delete", "--zone=us-central2-b") == 0
    assert "--project=from-env" in fake_gcloud.calls()[0]


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, str(REPO_ROOT / "launch/tpu.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    for command in tpu.COMMANDS:
        assert f"    {command}" in out


# --- watch -----------------------------------------------------------------------------------

def _kinds(calls: list[list[str]]) -> list[str]:
    """Names each recorded gcloud call: describe, delete, create, probe, setup, train, ..."""
    kinds = []
    for call in calls:
        if call[3] != "ssh":
            kinds.append(call[3])
            continue
        script = command_of(call)
        kinds.append("probe" if "effnetv2-run: $s" in script else
                     "setup" if "pip" in script else "train" if "effnetv2_jax.main" in script
                     else "ssh")
    return kinds


WATCH = ["watch", *WHERE, "--accelerator-type=v4-32", "--queued", "--spot", "--interval=0",
         "--repo=https://example.com/r.git", "--workdir=gs://b/r"]


def test_watch_recreates_a_preempted_slice_and_trains_until_finished(fake_gcloud):
    fake_gcloud.set_replies(
        describe=["SUSPENDED", "WAITING_FOR_RESOURCES", "ACTIVE", "ACTIVE", "ACTIVE", "ACTIVE"],
        probe=["not-set-up", "running", "preempted", "finished"])
    assert run(*WATCH) == 0
    calls = fake_gcloud.calls()
    assert _kinds(calls) == [
        "describe", "delete", "create",     # preempted: recreate the queued resource
        "describe",                         # waiting for capacity
        "describe", "probe", "setup", "train",  # a fresh slice: install, start
        "describe", "probe",                # running
        "describe", "probe", "train",       # stopped by a SIGTERM: resume
        "describe", "probe"]                # finished
    assert calls[2] == ["compute", "tpus", "queued-resources", "create", "effnetv2",
                        "--node-id=effnetv2", *GCLOUD_WHERE, "--accelerator-type=v4-32",
                        "--runtime-version=tpu-ubuntu2204-base", "--spot"]
    assert calls[5][-2] == "--worker=0"


def test_watch_creates_a_missing_slice_and_gives_up_on_repeated_failures(fake_gcloud):
    fake_gcloud.set_replies(describe=["NOT_FOUND", "ACTIVE"], probe=["failed:1"])
    assert run(*WATCH, "--max-failures=2") == 1
    assert _kinds(fake_gcloud.calls()) == [
        "describe", "create", "describe", "probe", "train", "describe", "probe"]


def test_watch_survives_a_failing_ssh(fake_gcloud, capsys):
    fake_gcloud.set_replies(describe=["ACTIVE"], probe=["not-set-up", "not-set-up", "finished"],
                            ssh_exit=["255", "0"])
    assert run(*WATCH) == 0
    assert _kinds(fake_gcloud.calls()) == [
        "describe", "probe", "setup",              # ssh fails: try again at the next look
        "describe", "probe", "setup", "train",
        "describe", "probe"]
    assert "exited with 255; trying again later" in capsys.readouterr().out


# --- the compile check before anything is spent ----------------------------------------------

TINY = ["--config=tests/configs/tiny.py"]
TOO_BIG = ["--", "--config.model.feature_size=1024", "--config.data.synthetic_num_classes=1000000"]


def test_config_arguments_reach_the_workers(fake_gcloud):
    assert run("train", *WHERE, "--accelerator-type=v4-32", "--workdir=gs://b/r",
               "--config=configs/s_imagenet.py:code,hw=tpu_v4_32") == 0
    assert "--config=configs/s_imagenet.py:code,hw=tpu_v4_32" in command_of(
        fake_gcloud.calls()[0])


def test_dry_run_shows_the_compile_check_first(fake_gcloud, capsys):
    assert tpu.main(["create", *WHERE, "--accelerator-type=v5litepod-4", *TINY, "--dry-run",
                     "--", "--config.train.num_steps=2"]) == 0
    out, err = capsys.readouterr()
    check = next(line for line in err.splitlines() if "compile check" in line)
    assert ("-m effnetv2_jax.main --config=tests/configs/tiny.py --mode=compile "
            "--topology=v5litepod-4 --workdir=") in check
    assert check.endswith("--config.train.num_steps=2")
    assert out.startswith("gcloud compute tpus tpu-vm create") and fake_gcloud.calls() == []


needs_libtpu = pytest.mark.skipif(not __import__("importlib").util.find_spec("libtpu"),
                                  reason="libtpu is not installed (the `tpu` extra)")


@needs_libtpu
@pytest.mark.slow
def test_create_refuses_a_config_that_does_not_fit_before_any_gcloud_call(fake_gcloud, capsys):
    assert tpu.main(["create", *WHERE, "--accelerator-type=v5litepod-4", *TINY, *TOO_BIG]) == 2
    err = capsys.readouterr().err
    assert "does not pass the compile check for v5litepod-4" in err
    assert "FAILED stage 0 (32 px, 2 per chip) does not fit" in err
    assert "--skip-compile-check" in err
    assert fake_gcloud.calls() == []


@needs_libtpu
@pytest.mark.slow
def test_train_compiles_a_fitting_config_then_starts_it(fake_gcloud):
    assert tpu.main(["train", *WHERE, "--accelerator-type=v5litepod-4", *TINY,
                     "--workdir=gs://b/tiny"]) == 0
    [call] = fake_gcloud.calls()
    assert "--config=tests/configs/tiny.py" in command_of(call)
