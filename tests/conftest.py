"""Test settings: CPU only, deterministic hypothesis runs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Four CPU devices, so sharding and BN modes are tested on a real mesh (set before JAX starts).
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from effnetv2_jax.cpu import xla_flags  # noqa: E402

# The suite runs as the entry points do, with their XLA:CPU flags (set before JAX starts; the
# processes tests start inherit them).
xla_flags.apply()

from hypothesis import settings  # noqa: E402

from effnetv2_jax.train import topology  # noqa: E402

# libtpu (the `tpu` extra) compiles for TPU topologies described here: tell it this is not a
# TPU VM, so it neither asks a metadata server nor prints its TPU-VM errors.
topology.quiet_libtpu()

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci")
