"""timm -> checkpoint parity: random timm models (never downloaded), converted, loaded with
`load_checkpoint`, and compared at every stride and at the logits."""

import numpy as np
import pytest
import torch

from convert_helpers import (TIMM_CASES, assert_parity, inputs, our_outputs, save_safetensors,
                             timm_reference)
from effnetv2_jax.convert import convert
from effnetv2_jax.inference import load_checkpoint


# Full-size V2-S (on the CPU convolutions) and B3 are the slow cases.
@pytest.mark.parametrize("timm_name,model_name", [
    pytest.param(*case, marks=pytest.mark.slow)
    if case[1] in ("efficientnetv2-s", "efficientnet-b3") else case
    for case in TIMM_CASES])
def test_timm_safetensors_parity(tmp_path, timm_name, model_name):
    reference = timm_reference(timm_name, model_name)
    path = save_safetensors(reference.state, str(tmp_path / "weights.safetensors"))
    report = convert("timm", model_name, path, str(tmp_path / "out"))
    # V2-S runs the backend's default convolutions (the CPU path users get); the others the
    # XLA reference convolutions, which compile faster (tests/cpu/test_conv_ops.py ties the two).
    loaded = load_checkpoint(str(tmp_path / "out"),
                             conv_impl=None if model_name == "efficientnetv2-s" else "xla")
    assert loaded.metadata["source"] == "timm" and report.metadata["num_classes"] == 1000
    assert_parity(our_outputs(loaded.model, inputs()), reference.outputs,
                  f"timm {timm_name} -> {model_name}")


def test_v1_b3_keeps_the_ten_percent_rounding_rule():
    # V1-B3 stage 1 has 16 * 1.2 = 19.2 -> 16 channels without the V1 "never round down more
    # than 10%" rule, 24 with it (official `effnetv2_model.py`); the official and timm weights have 24.
    state = timm_reference("tf_efficientnet_b3", "efficientnet-b3").state
    assert state["blocks.0.0.conv_pw.weight"].shape == (24, 40, 1, 1)


def test_timm_pth_with_ema_wrapper(tmp_path):
    """A timm training checkpoint (.pth) holding `state_dict` and `state_dict_ema`: the EMA copy
    is read by default, through torch.load(weights_only=True)."""
    reference = timm_reference("tf_efficientnet_lite0", "efficientnet-lite0")
    ema = {k: torch.from_numpy(v) for k, v in reference.state.items()}
    raw = {k: torch.zeros_like(v) for k, v in ema.items()}
    torch.save({"epoch": 3, "state_dict": raw, "state_dict_ema": ema}, tmp_path / "ckpt.pth")
    report = convert("timm", "efficientnet-lite0", str(tmp_path / "ckpt.pth"),
                     str(tmp_path / "out"))
    assert report.metadata["source_weights"] == "ema"
    loaded = load_checkpoint(str(tmp_path / "out"))
    kernel = np.asarray(loaded.model.classifier.kernel[...])
    np.testing.assert_array_equal(kernel, reference.state["classifier.weight"].T)

    convert("timm", "efficientnet-lite0", str(tmp_path / "ckpt.pth"), str(tmp_path / "raw"),
            use_ema=False)
    raw_model = load_checkpoint(str(tmp_path / "raw")).model
    assert not np.any(np.asarray(raw_model.classifier.kernel[...]))
