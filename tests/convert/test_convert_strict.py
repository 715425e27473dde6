"""Strictness: a missing, unexpected or wrongly shaped tensor stops a conversion with the list
of offending names; a head of another class count needs `new_head`; the CLI reports both."""

import argparse

import numpy as np
import pytest
import torch

from convert_helpers import save_safetensors, timm_reference
from effnetv2_jax.convert import ConversionError, convert
from effnetv2_jax.convert.__main__ import main as convert_main
from effnetv2_jax.inference import load_checkpoint

MODEL = "efficientnetv2-b0"


@pytest.fixture(scope="module")
def state():
    return timm_reference("tf_efficientnetv2_b0", MODEL).state


def _convert(tmp_path, state, **kwargs):
    path = save_safetensors(state, str(tmp_path / "weights.safetensors"))
    return convert("timm", MODEL, path, str(tmp_path / "out"), **kwargs)


def test_missing_unexpected_and_wrong_shape_are_all_listed(tmp_path, state):
    broken = dict(state)
    del broken["blocks.5.7.se.conv_reduce.bias"]
    broken["blocks.6.0.conv_pw.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    broken["blocks.1.0.conv_exp.weight"] = np.zeros((64, 16, 5, 5), np.float32)
    with pytest.raises(ConversionError) as info:
        _convert(tmp_path, broken)
    error = info.value
    assert error.missing == ["blocks.5.7.se.conv_reduce.bias"]
    assert error.unexpected == ["blocks.6.0.conv_pw.weight"]
    assert [name for name, *_ in error.wrong_shape] == ["blocks.1.0.conv_exp.weight"]
    message = str(error)
    assert "1 missing, 1 unexpected and 1 wrongly shaped" in message
    assert "blocks.5.7.se.conv_reduce.bias -> blocks.20.se.reduce.bias" in message
    assert "blocks.1.0.conv_exp.weight: [5, 5, 16, 64] -> [3, 3, 16, 64] " \
           "(blocks.1.fused_conv.kernel)" in message
    assert not (tmp_path / "out").exists()  # nothing written


def test_weights_of_another_variant_are_refused(tmp_path, state):
    path = save_safetensors(state, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ConversionError) as info:  # B1 has more blocks than B0
        convert("timm", "efficientnetv2-b1", path, str(tmp_path / "out"))
    assert "blocks.0.1.conv.weight" in info.value.missing


def test_other_class_count_needs_new_head(tmp_path, state):
    with pytest.raises(ConversionError, match=r"1000 classes but 10 were asked for.*--new-head"):
        _convert(tmp_path, state, num_classes=10)
    report = _convert(tmp_path, state, num_classes=10, new_head=True, seed=3)
    assert report.head_reinitialized and "re-initialised: 1000 -> 10" in report.summary()
    meta = report.metadata
    assert (meta["num_classes"], meta["source_num_classes"], meta["head_seed"]) == (10, 1000, 3)
    assert meta["class_names"] == []
    model = load_checkpoint(str(tmp_path / "out")).model
    assert model.classifier.kernel[...].shape == (1280, 10)
    assert not np.any(np.asarray(model.classifier.bias[...]))
    np.testing.assert_array_equal(np.asarray(model.head_conv.kernel[...]),
                                  state["conv_head.weight"].transpose(2, 3, 1, 0))


def test_metadata_records_source_checksum_and_preprocessing(tmp_path, state):
    import hashlib

    report = _convert(tmp_path, state)
    meta = load_checkpoint(str(tmp_path / "out")).metadata
    assert meta == report.metadata
    digest = hashlib.sha256((tmp_path / "weights.safetensors").read_bytes()).hexdigest()
    assert meta["source_sha256"] == digest
    assert (meta["model"], meta["num_classes"], meta["train_size"], meta["eval_size"]) == \
        (MODEL, 1000, 192, 224)
    assert meta["eval_crop"] == "center" and meta["preprocessing"]["interpolation"] == "bicubic"
    assert meta["preprocessing"]["mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert meta["class_names"][0] == "tench, Tinca tinca"


def test_pth_is_loaded_without_arbitrary_pickles(tmp_path, state):
    # A timm training checkpoint also pickles its argparse Namespace: not tensors, so refused.
    weights = {k: torch.from_numpy(v) for k, v in state.items()}
    torch.save({"state_dict": weights, "args": argparse.Namespace(lr=0.1)},
               tmp_path / "train.pth")
    with pytest.raises(ValueError, match=r"weights_only=True\), never as an unrestricted pickle"):
        convert("timm", MODEL, str(tmp_path / "train.pth"), str(tmp_path / "out"))
    torch.save(weights, tmp_path / "weights.pth")  # the plain state dict converts
    convert("timm", MODEL, str(tmp_path / "weights.pth"), str(tmp_path / "out"))


def test_existing_output_needs_overwrite(tmp_path, state):
    (tmp_path / "out" / "checkpoints" / "5").mkdir(parents=True)
    with pytest.raises(FileExistsError,
                       match=r"already holds checkpoints \(\['5'\]\); pass --overwrite"):
        _convert(tmp_path, state)
    report = _convert(tmp_path, state, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["0"]
    assert report.checkpoint == str(tmp_path / "out" / "checkpoints" / "0")


def test_cli(tmp_path, state, capsys):
    path = save_safetensors(state, str(tmp_path / "weights.safetensors"))
    args = ["--source", "timm", "--model", MODEL, "--input", path]
    assert convert_main(args + ["--output", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "efficientnetv2-b0, 1000 classes, eval 224 px (center crop, bicubic)" in out

    assert convert_main(args + ["--output", str(tmp_path / "bad"), "--num-classes", "5"]) == 1
    assert "--new-head" in capsys.readouterr().err
    assert convert_main(["--source", "timm", "--model", "efficientnetv2-b1", "--input", path,
                         "--output", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot convert timm file") and "blocks.0.1.conv.weight" in err
