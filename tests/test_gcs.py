"""gs:// through the one path layer, against a local GCS emulator (the `gcs` fixture,
tests/gcs_emulator.py): checkpoints load with `load_checkpoint`, converted weights are written,
TensorBoard events are written and read, from a bucket as from a folder. The training runs
with a gs:// workdir are in tests/reliability/test_gcs_runs.py (slow)."""

import os

import jax
import numpy as np
import pytest
from etils import epath

from effnetv2_jax import paths
from effnetv2_jax.convert import writer
from effnetv2_jax.inference import find_checkpoint, load_checkpoint
from effnetv2_jax.models.factory import abstract_model
from effnetv2_jax.models.variants import get_variant
from effnetv2_jax.train.summaries import EventFileWriter

TINY = {"block_strings": ["r1_k3_s1_e1_i8_o8_c1", "r1_k3_s2_e4_i8_o16_se0.25"],
        "feature_size": 32}


def test_resolve_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    assert os.fspath(paths.resolve("gs://bucket/runs/v2s")) == "gs://bucket/runs/v2s"
    monkeypatch.chdir(tmp_path)
    assert os.fspath(paths.resolve("runs/x")) == str(tmp_path / "runs" / "x")
    assert os.fspath(paths.resolve("~/x")) == os.path.expanduser("~/x")
    with pytest.raises(ValueError, match="empty path"):
        paths.resolve("")


def write_tiny_checkpoint(output) -> dict:
    """A converted-layout checkpoint of a 2-block network with random weights at `output`."""
    params, batch_stats = writer.random_weights(abstract_model(
        "efficientnetv2-b0", num_classes=4, **TINY))
    metadata = writer.checkpoint_metadata(get_variant("efficientnetv2-b0"), num_classes=4,
                                          class_names=["a", "b", "c", "d"])
    metadata.update(model_overrides=TINY, eval_size=32)
    writer.write_checkpoint(os.fspath(output), params, batch_stats, metadata)
    return params


def test_load_checkpoint_from_a_bucket_equals_the_local_copy(gcs_dir, tmp_path):
    saved = write_tiny_checkpoint(gcs_dir)
    assert (gcs_dir / "checkpoints" / "0" / "state").is_dir()
    step_dir = find_checkpoint(os.fspath(gcs_dir))
    assert step_dir == f"{gcs_dir}/checkpoints/0"
    loaded = load_checkpoint(os.fspath(gcs_dir))          # was: "no checkpoint at <cwd>/gs:/..."
    assert loaded.step == 0 and loaded.path == step_dir
    assert loaded.class_names == ("a", "b", "c", "d")
    kernel = np.asarray(loaded.model.stem_conv.kernel.value)
    assert kernel.tobytes() == saved["stem_conv"]["kernel"].tobytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_tiny_checkpoint(gcs_dir)                    # converted weights are never replaced
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(os.fspath(gcs_dir / "missing"))


def test_an_unfinished_step_on_a_bucket_is_not_loaded(gcs_dir):
    """On gs:// Orbax writes a step in place and marks it complete with commit_success.txt;
    a step without the marker (a save killed midway) is not taken as the newest."""
    write_tiny_checkpoint(gcs_dir)
    paths.copy_tree(gcs_dir / "checkpoints" / "0", gcs_dir / "checkpoints" / "7")
    (gcs_dir / "checkpoints" / "7" / "commit_success.txt").unlink()
    assert find_checkpoint(os.fspath(gcs_dir)).endswith("/checkpoints/0")


def test_tensorboard_events_on_a_bucket_read_back(gcs_dir, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415

    events = EventFileWriter(gcs_dir / "run", upload_every_seconds=3600)
    events.write_scalars(5, {"train/loss": 1.25})
    events.write_images(5, {"train/batch": np.random.default_rng(0).random((2, 8, 8, 3))})
    assert events.path.read_bytes(), "the file exists from the start, with its version record"
    events.close()
    local = tmp_path / events.path.name
    local.write_bytes(events.path.read_bytes())
    accumulator = event_accumulator.EventAccumulator(
        str(local), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    assert {"train/loss", "train/batch"} <= set(accumulator.Tags()["tensors"])
    (loss,) = accumulator.Tensors("train/loss")
    assert loss.step == 5 and loss.tensor_proto.float_val == [1.25]


def test_local_events_are_appended_at_each_write(tmp_path):
    events = EventFileWriter(tmp_path)
    size = os.path.getsize(events.path)
    events.write_scalars(1, {"x": 1.0})
    assert os.path.getsize(events.path) > size       # on disk before any flush
    events.close()
    with pytest.raises(NotImplementedError, match="histograms"):
        events.write_histograms(1, {"h": np.zeros(3)})


def test_copy_tree_and_local_copy_round_trip(gcs_dir, tmp_path):
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "a.bin").write_bytes(b"\x00\x01")
    (source / "sub" / "b.txt").write_text("b")
    paths.copy_tree(source, gcs_dir / "tree")
    with paths.local_copy(gcs_dir / "tree") as local:
        assert open(os.path.join(local, "sub", "b.txt")).read() == "b"
        assert open(os.path.join(local, "a.bin"), "rb").read() == b"\x00\x01"
    assert not os.path.exists(local), "the temporary copy is removed"
    with paths.staged_output(gcs_dir / "out.txt") as local:
        open(local, "w").write("written locally, published to the bucket")
    assert (gcs_dir / "out.txt").read_text().startswith("written locally")
    with pytest.raises(FileNotFoundError, match="nothing at gs://"):
        with paths.local_copy(gcs_dir / "absent"):
            pass
    assert jax.devices()  # the emulator's variables leave JAX alone


def test_a_checkpoint_written_by_another_process_is_seen(gcs_dir):
    """gcsfs caches folder listings without expiry; a path passed in is listed afresh, so a
    notebook sees the step a training run (another process) has written since."""
    write_tiny_checkpoint(gcs_dir)
    assert find_checkpoint(os.fspath(gcs_dir)).endswith("/checkpoints/0")   # listed, cached
    newer = gcs_dir / "checkpoints" / "5"
    with paths.local_copy(gcs_dir / "checkpoints" / "0") as local:
        import subprocess  # noqa: PLC0415 (a real second process, as a training run is)
        import sys  # noqa: PLC0415

        copy = ("import os, sys\nfrom etils import epath\n"
                "for root, _, names in os.walk(sys.argv[1]):\n"
                "    for name in names:\n"
                "        relative = os.path.relpath(os.path.join(root, name), sys.argv[1])\n"
                "        target = epath.Path(sys.argv[2]) / relative\n"
                "        target.parent.mkdir(parents=True, exist_ok=True)\n"
                "        target.write_bytes(open(os.path.join(root, name), 'rb').read())\n")
        subprocess.run([sys.executable, "-c", copy, local, os.fspath(newer)], check=True,
                       timeout=120)
    assert find_checkpoint(os.fspath(gcs_dir)).endswith("/checkpoints/5")


def test_local_file_copies_a_tf1_prefix_with_its_siblings(gcs_dir):
    for name in ("model.ckpt-9.index", "model.ckpt-9.data-00000-of-00001", "model.ckpt-10.index",
                 "checkpoint"):
        (gcs_dir / "tf1" / name).write_text(name)
    for asked, expected in (("model.ckpt-9", "model.ckpt-9"),
                            ("model.ckpt-9.index", "model.ckpt-9.index")):
        local, scratch = paths.local_file(gcs_dir / "tf1" / asked, siblings=True)
        assert os.path.basename(local) == expected
        assert sorted(os.listdir(scratch.name)) == ["model.ckpt-9.data-00000-of-00001",
                                                    "model.ckpt-9.index"]
        del scratch                                   # dropped: the copy goes with it
        assert not os.path.exists(local) and not os.path.exists(os.path.dirname(local))
    with pytest.raises(FileNotFoundError, match="nothing at gs://"):
        paths.local_file(gcs_dir / "tf1" / "model.ckpt-3", siblings=True)


def test_predict_reads_images_from_a_bucket(gcs_dir, tmp_path):
    from PIL import Image  # noqa: PLC0415

    from effnetv2_jax import predict  # noqa: PLC0415
    from effnetv2_jax.images import ImageError, read_image  # noqa: PLC0415

    write_tiny_checkpoint(gcs_dir / "model")
    pixels = np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    (gcs_dir / "images" / "x.png").write_bytes((tmp_path / "x.png").read_bytes())
    (gcs_dir / "images" / "notes.png").write_text("not an image")
    np.testing.assert_array_equal(read_image(str(gcs_dir / "images" / "x.png")), pixels)
    loaded = load_checkpoint(str(gcs_dir / "model"))
    remote = predict(loaded, [str(gcs_dir / "images" / "x.png")], top_k=2)
    local = predict(loaded, [str(tmp_path / "x.png")], top_k=2)
    np.testing.assert_array_equal(remote.probabilities, local.probabilities)
    with pytest.raises(ImageError, match="notes.png: not a readable image"):
        read_image(str(gcs_dir / "images" / "notes.png"))
    with pytest.raises(ImageError, match="missing.png: no such file"):
        read_image(str(gcs_dir / "images" / "missing.png"))
