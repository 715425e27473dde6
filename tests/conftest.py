"""Test settings: CPU only, deterministic hypothesis runs."""

import os
import re
import uuid

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Four CPU devices, so sharding and BN modes are tested on a real mesh (set before JAX starts).
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from effnetv2_jax.cpu import xla_flags  # noqa: E402

# The suite runs as the entry points do, with their XLA:CPU flags (set before JAX starts; the
# processes tests start inherit them).
xla_flags.apply()

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from effnetv2_jax.train import topology  # noqa: E402

# libtpu (the `tpu` extra) compiles for TPU topologies described here: tell it this is not a
# TPU VM, so it neither asks a metadata server nor prints its TPU-VM errors.
topology.quiet_libtpu()

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A GCS emulator for this session (one per pytest-xdist worker) with a bucket,
    `gcs.bucket` ("gs://effnetv2-tests"). Every gs:// client of this process, and of the
    processes its tests start, points at it while it runs (tests/gcs_emulator.py)."""
    from gcs_emulator import EmulatorUnavailable, GcsEmulator  # noqa: PLC0415

    try:
        emulator = GcsEmulator(tmp_path_factory.mktemp("gcs")).start()
    except EmulatorUnavailable as error:
        pytest.skip(f"no GCS emulator: {error}")
    try:
        with pytest.MonkeyPatch.context() as environment:
            for name, value in emulator.environment().items():
                environment.setenv(name, value)
            _epath_backend_changed()
            emulator.bucket = emulator.create_bucket("effnetv2-tests")
            yield emulator
    finally:
        _epath_backend_changed()
        emulator.stop()


def _epath_backend_changed() -> None:
    """epath caches its first answer to "read gs:// through TensorFlow?" (EPATH_USE_TF); an
    earlier test of the session may have asked before the emulator's variables were set."""
    from etils.epath import gpath  # noqa: PLC0415

    gpath._is_tf_installed.cache_clear()


@pytest.fixture
def gcs_dir(gcs, request):
    """A fresh gs:// folder (an `etils.epath.Path`) on the emulator, for one test."""
    from etils import epath  # noqa: PLC0415

    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")[:60]
    return epath.Path(gcs.bucket) / f"{name}-{uuid.uuid4().hex[:8]}"
