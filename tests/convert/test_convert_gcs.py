"""Conversion with the weight file and the output on gs:// (the local GCS emulator): the same
checkpoint as from local files, its source recorded as the gs:// path."""

import numpy as np
import pytest

from convert_helpers import save_safetensors, timm_reference
from effnetv2_jax import paths
from effnetv2_jax.convert import convert
from effnetv2_jax.inference import load_checkpoint

MODEL = "efficientnetv2-b0"

pytestmark = pytest.mark.slow  # builds timm's B0 and converts it twice: a minute when loaded


def test_a_weight_file_on_gs_converts_to_a_checkpoint_on_gs(tmp_path, gcs_dir):
    state = timm_reference("tf_efficientnetv2_b0", MODEL).state
    local = save_safetensors(state, str(tmp_path / "weights.safetensors"))
    paths.copy_tree(local, gcs_dir / "weights.safetensors")
    report = convert("timm", MODEL, str(gcs_dir / "weights.safetensors"), str(gcs_dir / "out"))
    assert report.metadata["source_file"] == f"{gcs_dir}/weights.safetensors"
    convert("timm", MODEL, local, str(tmp_path / "out"))
    remote, here = load_checkpoint(str(gcs_dir / "out")), load_checkpoint(str(tmp_path / "out"))
    assert remote.metadata["source_sha256"] == here.metadata["source_sha256"]
    np.testing.assert_array_equal(np.asarray(remote.model.stem_conv.kernel.value),
                                  np.asarray(here.model.stem_conv.kernel.value))
