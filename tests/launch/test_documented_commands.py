"""The launcher commands README.md and launch/README.md document, run as written.

The command lines are read from the Markdown when the test runs (doc_commands.py), so a
rewritten README is tested as it stands: every `python launch/tpu.py ...` line of its shell
blocks, with the variables the blocks assign (`T`, `C`) expanded, must parse and run against
the fake gcloud (conftest.py). The compile check before create/train/watch is skipped by
inserting `--skip-compile-check` right after the subcommand (appending it would put it after
a `--` among the config overrides); test_tpu_launcher.py tests the check itself.
"""

import os
import shlex
import textwrap
from pathlib import Path

import pytest
import tpu
from doc_commands import Command, DocCommandError, launcher_commands

REPO_ROOT = Path(__file__).resolve().parents[2]


def _docs() -> tuple[str, ...]:
    """README.md, launch/README.md, and any other Markdown file of the repository that
    mentions the launcher (so a new guide is covered too)."""
    found = {"README.md", "launch/README.md"}
    for root, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("build", "dist")
                   and not d.endswith(".egg-info")]
        for name in files:
            path = Path(root) / name
            if name.endswith(".md") and "launch/tpu.py" in path.read_text(errors="replace"):
                found.add(str(path.relative_to(REPO_ROOT)))
    return tuple(sorted(found))


DOCS = _docs()
# The workflow the docs walk through, from creating the slice to deleting it.
WORKFLOW = {"create", "setup", "train", "logs", "status", "watch", "delete"}


def documented() -> dict[str, list[Command]]:
    return {doc: launcher_commands(REPO_ROOT / doc, doc) for doc in DOCS}


def as_run(command: Command) -> list[str]:
    argv = list(command.argv)
    if command.subcommand in tpu.COMPILE_CHECKED:
        argv.insert(1, "--skip-compile-check")
    return argv


def test_the_docs_walk_through_the_whole_workflow():
    commands = [c for cs in documented().values() for c in cs]
    missing = WORKFLOW - {c.subcommand for c in commands}
    assert not missing, f"no documented launcher command for: {', '.join(sorted(missing))}"


def parse_failures(commands: list[Command], capsys) -> list[str]:
    """A message (file, block, line, argparse's error) for each command that does not parse
    for the subcommand it names."""
    failures = []
    for command in commands:
        try:
            args = tpu.build_parser().parse_args(list(command.argv))
        except SystemExit:
            failures.append(f"{command.where()}\n  {capsys.readouterr().err.strip()}")
            continue
        if args.command != command.subcommand:
            failures.append(f"{command.where()}\n  parsed as {args.command!r}")
    return failures


def run_failures(commands: list[Command], fake_gcloud, capsys) -> list[str]:
    """A message for each command that exits non-zero, calls no gcloud, or takes --queued
    without calling queued-resources; run in order against the fake gcloud."""
    # `watch` stops at its first look when worker 0 says the run has finished.
    fake_gcloud.set_replies(describe=["ACTIVE"], probe=["finished"])
    failures = []
    for command in commands:
        before = len(fake_gcloud.calls())
        try:
            code = tpu.main(as_run(command))
        except SystemExit as exit_:   # argparse
            code = exit_.code
        err = capsys.readouterr().err.strip()
        calls = fake_gcloud.calls()[before:]
        if code != 0:
            failures.append(f"{command.where()}\n  exit code {code}: {err}")
        elif not calls:
            failures.append(f"{command.where()}\n  called no gcloud")
        elif "--queued" in command.argv and command.subcommand in ("create", "status", "delete"):
            if not any(c[2] == "queued-resources" for c in calls):
                failures.append(f"{command.where()}\n  --queued but no queued-resources call")
    return failures


@pytest.mark.parametrize("doc", DOCS)
def test_each_documented_command_parses_for_its_subcommand(doc, capsys):
    failures = parse_failures(launcher_commands(REPO_ROOT / doc, doc), capsys)
    assert not failures, "documented launcher commands that do not parse:\n" + \
        "\n".join(failures)


@pytest.mark.parametrize("doc", DOCS)
def test_each_documented_command_runs_against_the_fake_gcloud(doc, fake_gcloud, capsys):
    failures = run_failures(launcher_commands(REPO_ROOT / doc, doc), fake_gcloud, capsys)
    assert not failures, "documented launcher commands that fail:\n" + "\n".join(failures)


def test_a_broken_documented_command_is_reported_with_its_place(tmp_path, fake_gcloud, capsys):
    doc = tmp_path / "DOC.md"
    doc.write_text("# Guide\n\n```bash\nT=\"--project=p --zone=us-central2-b\"\n"
                   "python launch/tpu.py status $T\n"
                   "python launch/tpu.py logs $T --lines=ten\n"
                   "python launch/tpu.py train $T --workdir=gs://b/r\n```\n")
    commands = launcher_commands(doc, "DOC.md")
    [failure] = parse_failures(commands, capsys)
    assert failure.startswith("DOC.md, shell block 1 (opens at line 3), line 6: "
                              "python launch/tpu.py logs $T --lines=ten\n")
    assert "argument --lines: invalid int value: 'ten'" in failure
    failures = run_failures(commands, fake_gcloud, capsys)
    assert [f.split("\n")[0] for f in failures] == [
        "DOC.md, shell block 1 (opens at line 3), line 6: python launch/tpu.py logs $T "
        "--lines=ten",
        "DOC.md, shell block 1 (opens at line 3), line 7: python launch/tpu.py train $T "
        "--workdir=gs://b/r"]
    assert "invalid int value: 'ten'" in failures[0]
    assert "train needs --accelerator-type" in failures[1]


# --- the extraction itself --------------------------------------------------------------------

MARKDOWN = textwrap.dedent("""\
    Intro: `python launch/tpu.py create` in running text is not a command.

    ```bash
    # a comment; python launch/tpu.py delete
    T="--project=P --zone=us-central2-b --queued --spot"
    C="--config=configs/s_imagenet.py:code,hw=tpu_v4_32"   # bf16; batch 4096
    python launch/tpu.py create $T $C && python3 launch/tpu.py setup ${T}
    ```

    ```python
    T = "not shell"
    ```

    ```bash
    python launch/tpu.py train $T $C --workdir=gs://b/r -- \\
        --config.data.data_dir=gs://b/tfds
    ./launch/tpu.py logs $T --follow   # worker 0; --all for every worker
    WORKDIR=/tmp/x bash launch/gpu_single_node.sh --config.seed=1
    ```
    """)


def test_extraction_follows_the_shell(tmp_path):
    doc = tmp_path / "DOC.md"
    doc.write_text(MARKDOWN)
    commands = launcher_commands(doc, "DOC.md")
    t = ["--project=P", "--zone=us-central2-b", "--queued", "--spot"]
    c = ["--config=configs/s_imagenet.py:code,hw=tpu_v4_32"]
    assert [(x.block, x.block_line, x.line, x.argv) for x in commands] == [
        (1, 3, 7, ("create", *t, *c)),
        (1, 3, 7, ("setup", *t)),
        (2, 14, 15, ("train", *t, *c, "--workdir=gs://b/r", "--",
                     "--config.data.data_dir=gs://b/tfds")),
        (2, 14, 17, ("logs", *t, "--follow")),
    ]
    assert commands[0].where().startswith("DOC.md, shell block 1 (opens at line 3), line 7: "
                                          "python launch/tpu.py create $T $C")
    assert as_run(commands[2])[:2] == ["train", "--skip-compile-check"]
    assert shlex.join(as_run(commands[3])) == shlex.join(commands[3].argv)  # logs: no check


def test_an_unset_variable_is_named_with_its_place(tmp_path):
    doc = tmp_path / "DOC.md"
    doc.write_text("text\n\n```bash\nT=--zone=us-central2-b\npython launch/tpu.py status $T $X\n```\n")
    with pytest.raises(DocCommandError, match=r"(?s)DOC.md, shell block 1 \(opens at line 3\), "
                                              r"line 5: .*uses \$X"):
        launcher_commands(doc, "DOC.md")
