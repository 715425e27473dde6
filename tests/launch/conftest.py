"""Launcher tests: launch/ on sys.path, and a fake `gcloud` that records its arguments.

The fake never reaches a network. It appends each call's argv (JSON, one line) to a log, and
answers `describe` and the worker probe from queues the test sets, and exits from the
`ssh_exit` queue for other ssh calls, so `watch` can be replayed.
"""

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "launch"))

FAKE_GCLOUD = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    args = sys.argv[1:]
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
        log.write(json.dumps(args) + "\\n")

    def reply(key, default):
        path = os.environ["FAKE_GCLOUD_REPLIES"]
        replies = json.load(open(path)) if os.path.exists(path) else {{}}
        queue = replies.get(key) or [default]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        replies[key] = queue
        json.dump(replies, open(path, "w"))
        return answer

    if "describe" in args:
        state = reply("describe", "ACTIVE")
        if state == "NOT_FOUND":
            sys.exit(1)
        print(state)
    elif "ssh" in args and any("effnetv2-run: $s" in a for a in args):
        print("effnetv2-run: " + reply("probe", "running") + " on t1v-w-0: step 10")
    elif "ssh" in args:
        sys.exit(int(reply("ssh_exit", "0")))
    """)


class FakeGcloud:
    def __init__(self, root: Path):
        self.log = root / "gcloud_calls.jsonl"
        self.replies = root / "gcloud_replies.json"

    def set_replies(self, **queues: list[str]) -> None:
        self.replies.write_text(json.dumps(queues))

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch) -> FakeGcloud:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(FAKE_GCLOUD.format(python=sys.executable))
    script.chmod(0o755)
    fake = FakeGcloud(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_LOG", str(fake.log))
    monkeypatch.setenv("FAKE_GCLOUD_REPLIES", str(fake.replies))
    monkeypatch.delenv("CLOUDSDK_CORE_PROJECT", raising=False)
    return fake
