"""Export for serving: jax.export file, SavedModel (jax2tf), TFLite and ONNX, each against the JAX
model.

One tiny checkpoint per module (2 blocks, 10 classes, eval at 32 px, the bicubic centre-crop
preprocessing of efficientnetv2-b0, random weights), written with the converters' writer; each
artefact is exported once and checked on the same real photos (crops of scikit-image's samples):
probabilities within 1e-4 of the JAX model's, top-1 identical (ONNX: logits within 1e-4 too);
dynamic-range quantized TFLite top-1 identical on at least 95% of the images.
"""

import json
import os

import jax
import numpy as np
import onnx
import pytest
import skimage.data
import tensorflow as tf

import effnetv2_jax
from effnetv2_jax import inference
from effnetv2_jax.convert.writer import checkpoint_metadata, random_weights, write_checkpoint
from effnetv2_jax.preprocessing import Preprocessing
from effnetv2_jax.data.preprocess import eval_image
from effnetv2_jax.export import (export_checkpoint, export_function, inference_function,
                                 load_jax_export, parse_batch)
from effnetv2_jax.export.__main__ import main as export_main
from effnetv2_jax.export.inference_fn import export_model
from effnetv2_jax.export.onnx_export import (ONNXConversionError, convert_function, load_onnx,
                                             op_counts)
from effnetv2_jax.export.savedmodel import ServingModule
from effnetv2_jax.export.tf_preprocess import eval_batch
from effnetv2_jax.export.tflite import TFLiteConversionError, TFLiteModel, convert_savedmodel

# feature_size 128: the head conv (16x128) and classifier (128x10) have >= 1024 weights, so
# dynamic-range quantization has tensors to quantize.
TINY = {"block_strings": ["r1_k3_s1_e1_i8_o8_c1", "r1_k3_s2_e4_i8_o16_se0.25"],
        "feature_size": 128}
CLASSES = [f"digit {i}" for i in range(10)]
SIZE = 32
TOLERANCE = 1e-4
# Batches of same-sized images (height, width): landscape, portrait, square, odd sizes.
IMAGE_SHAPES = ((48, 64), (64, 48), (40, 40), (75, 100), (33, 57))
PER_SHAPE = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A converted-layout checkpoint of a 2-block efficientnetv2-b0 (random weights)."""
    abstract = effnetv2_jax.abstract_model("efficientnetv2-b0", num_classes=10, **TINY)
    params, batch_stats = random_weights(abstract)
    metadata = checkpoint_metadata(effnetv2_jax.get_variant("efficientnetv2-b0"),
                                   num_classes=10, class_names=CLASSES, source="test")
    metadata.update(model_overrides=TINY, train_size=SIZE, eval_size=SIZE)
    directory = tmp_path_factory.mktemp("checkpoint")
    write_checkpoint(str(directory), params, batch_stats, metadata)
    return str(directory)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """The checkpoint as `predict` sees it (the backend's default conv implementation)."""
    return inference.load_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def photos():
    """Batches of uint8 crops [8, h, w, 3] of real photos, one batch per IMAGE_SHAPES entry."""
    sources = [skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
               skimage.data.immunohistochemistry(), skimage.data.hubble_deep_field()]
    rng = np.random.RandomState(1)
    batches = []
    for h, w in IMAGE_SHAPES:
        crops = []
        for _ in range(PER_SHAPE):
            image = sources[rng.randint(len(sources))]
            y, x = rng.randint(image.shape[0] - h), rng.randint(image.shape[1] - w)
            crops.append(image[y:y + h, x:x + w])
        batches.append(np.stack(crops))
    return batches


@pytest.fixture(scope="module")
def reference(loaded, photos):
    """Per batch: (normalised inputs [8, 32, 32, 3], JAX probabilities [8, 10])."""
    out = []
    for batch in photos:
        x = inference.preprocess_images(list(batch), loaded.preprocess, loaded.eval_size)
        out.append((x, np.asarray(jax.nn.softmax(loaded.model(x), axis=-1))))
    return out


@pytest.fixture(scope="module")
def artefacts(checkpoint, tmp_path_factory):
    """Every export, once: a jax.export file, a bare SavedModel (through the CLI), a SavedModel
    with preprocessing, a float32 TFLite file with preprocessing and an ONNX file (CLI)."""
    root = tmp_path_factory.mktemp("exports")
    paths = {name: str(root / name) for name in ("model.jax", "bare", "served", "served.tflite",
                                                 "model.onnx")}
    export_checkpoint(checkpoint, "jax_export", paths["model.jax"])
    assert export_main(["--checkpoint", checkpoint, "--format", "savedmodel",
                        "--output", paths["bare"]]) == 0
    export_checkpoint(checkpoint, "savedmodel", paths["served"], with_preprocessing=True,
                      top_k=3)
    export_checkpoint(checkpoint, "tflite", paths["served.tflite"], with_preprocessing=True,
                      top_k=3)
    assert export_main(["--checkpoint", checkpoint, "--format", "onnx",
                        "--output", paths["model.onnx"]]) == 0
    return paths


def _check_parity(got, want):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("squash_min_size", [None, 32])
def test_tf_batch_preprocessing_matches_eval_image(interpolation, squash_min_size, photos):
    """The serving preprocessing (TFLite-native ops) = the pipeline's `eval_image` per image:
    bilinear exactly, the rebuilt bicubic within float32 rounding (1e-5 normalised, 6e-4 pixel)."""
    preprocess = Preprocessing(mean=(120.0, 121.0, 122.0), std=(60.0, 61.0, 62.0),
                               interpolation=interpolation, crop_padding=32,
                               squash_min_size=squash_min_size)
    for size, batch in ((SIZE, photos[0]), (40, photos[3]), (224, photos[4][:2])):
        got = eval_batch(tf.constant(batch), size, preprocess).numpy()
        want = np.stack([eval_image(tf.constant(x), size, preprocess).numpy() for x in batch])
        assert got.shape == (len(batch), size, size, 3)
        if interpolation == "bilinear":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.slow  # a fresh process
def test_jax_export_runs_with_jax_alone(artefacts, reference):
    """The file deserializes with `jax.export` only and takes any batch size."""
    with open(artefacts["model.jax"], "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    assert str(exported.in_avals[0].shape[0]) == "batch"
    for x, want in reference[:2]:
        _check_parity(np.asarray(exported.call(x)), want)
    _check_parity(np.asarray(load_jax_export(artefacts["model.jax"]).call(reference[2][0][:3])),
                  reference[2][1][:3])
    with open(artefacts["model.jax"] + ".meta.json") as f:
        meta = json.load(f)
    assert meta["class_names"] == CLASSES and meta["input"]["shape"] == [None, SIZE, SIZE, 3]
    assert meta["weights"] == "ema" and meta["batch"] == "dynamic"


def test_fixed_batch_exports(loaded, reference):
    """--batch 2: the jax.export and the serving function take exactly 2 images. `loaded` has
    the CPU conv implementation; the export rebuilds the model with XLA convolutions."""
    fn = inference_function(loaded)
    x, want = reference[0][0][:2], reference[0][1][:2]
    exported = export_function(fn, batch=2)
    assert exported.in_avals[0].shape == (2, SIZE, SIZE, 3)
    _check_parity(np.asarray(exported.call(x)), want)
    with pytest.raises(ValueError, match="shape"):
        exported.call(np.zeros((3, SIZE, SIZE, 3), np.float32))
    serve = ServingModule(fn, batch=2).serve
    (spec,) = serve.get_concrete_function().structured_input_signature[0]
    assert spec.shape.as_list() == [2, SIZE, SIZE, 3]
    _check_parity(serve(tf.constant(x))["probabilities"].numpy(), want)


def test_savedmodel_bare_signature_and_parity(artefacts, reference):
    served = tf.saved_model.load(artefacts["bare"], tags=["serve"])
    signature = served.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert (spec.name, spec.dtype, spec.shape.as_list()) == ("images", tf.float32,
                                                             [None, SIZE, SIZE, 3])
    assert set(signature.structured_outputs) == {"probabilities"}
    for x, want in reference:
        _check_parity(signature(images=tf.constant(x))["probabilities"].numpy(), want)


def test_savedmodel_with_preprocessing_matches_predict(artefacts, loaded, photos, reference):
    """uint8 images of any size in; probabilities and the top-k of `predict` out."""
    served = tf.saved_model.load(artefacts["served"])
    signature = served.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert (spec.dtype, spec.shape.as_list()) == (tf.uint8, [None, None, None, 3])
    for batch, (_, want) in zip(photos, reference):
        out = signature(images=tf.constant(batch))
        _check_parity(out["probabilities"].numpy(), want)
        predicted = inference.predict(loaded, batch, top_k=3)
        np.testing.assert_array_equal(out["top_k_indices"].numpy(), predicted.indices)
        np.testing.assert_allclose(out["top_k_values"].numpy(), predicted.probabilities,
                                   rtol=0, atol=TOLERANCE)
    with open(os.path.join(artefacts["served"], "assets", "labels.txt")) as f:
        assert f.read().splitlines() == CLASSES


def test_tflite_float32_parity(artefacts, photos, reference):
    with_pre = TFLiteModel.from_file(artefacts["served.tflite"])
    assert "CONV_2D" in with_pre.op_counts() and "DEPTHWISE_CONV_2D" in with_pre.op_counts()
    for batch, (x, want) in zip(photos, reference):
        out = with_pre(batch)
        _check_parity(out["probabilities"], want)
        np.testing.assert_array_equal(out["top_k_indices"][:, 0], want.argmax(-1))
    bare = TFLiteModel(convert_savedmodel(artefacts["bare"]))
    for x, want in reference:
        _check_parity(bare(x)["probabilities"], want)


def test_tflite_dynamic_range_quantized_top1(artefacts, photos, reference):
    flatbuffer = convert_savedmodel(artefacts["served"], quantize=True)
    quantized = TFLiteModel(flatbuffer)
    assert "int8" in quantized.tensor_dtypes()
    assert len(flatbuffer) < os.path.getsize(artefacts["served.tflite"])
    agree = [quantized(batch)["probabilities"].argmax(-1) == want.argmax(-1)
             for batch, (_, want) in zip(photos, reference)]
    agreement = np.concatenate(agree).mean()
    assert agreement >= 0.95, agreement


def test_tflite_error_names_the_op(tmp_path):
    """An op TFLite has no kernel for is named, with the reason; inside jax2tf's XlaCallModule,
    the StableHLO custom call that blocked the lowering is named."""
    from jax.experimental import jax2tf

    module = tf.Module()
    module.f = tf.function(lambda x: tf.raw_ops.ResizeBicubic(images=x, size=[4, 4]),
                           input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "tf"),
                        signatures={"serving_default": module.f.get_concrete_function()})
    with pytest.raises(TFLiteConversionError, match=r"tf\.ResizeBicubic: no builtin TFLite"):
        convert_savedmodel(str(tmp_path / "tf"))

    def eigenvalues(x):
        return jax.numpy.linalg.eigvalsh(x @ x.T)

    module = tf.Module()
    module.f = tf.function(jax2tf.convert(eigenvalues, with_gradient=False), autograph=False,
                           input_signature=[tf.TensorSpec([4, 4], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "jax"),
                        signatures={"serving_default": module.f.get_concrete_function()})
    spec = jax.ShapeDtypeStruct((4, 4), np.float32)
    with pytest.raises(TFLiteConversionError,
                       match=r"tf\.XlaCallModule .*custom_call to lapack_ssyevd"):
        convert_savedmodel(str(tmp_path / "jax"), describe_module=lambda: jax.export.export(
            jax.jit(eigenvalues))(spec).mlir_module())


def test_onnx_parity_any_batch_and_metadata(artefacts, reference):
    """onnxruntime on the exported file: probabilities within 1e-4 of JAX's, top-1 identical,
    at batch 8, 3 and 1 (the batch dimension is symbolic); every BatchNorm folded into its
    convolution; the same metadata beside it as the other formats."""
    model = onnx.load(artefacts["model.onnx"])
    ops = op_counts(model)
    assert not {"BatchNormalization", "Sqrt", "Div", "Sub"} & set(ops), ops
    assert ops["Conv"] == 6  # stem, fused, expand, depthwise, project, head: one per BN
    groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute
              if a.name == "group"]
    assert 32 in groups  # the depthwise convolution of 32 expanded channels
    (graph_input,) = model.graph.input
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    session = load_onnx(artefacts["model.onnx"])
    for x, want in reference:
        for n in (len(x), 3, 1):
            (got,) = session.run(["probabilities"], {"images": x[:n]})
            _check_parity(got, want[:n])
    with open(artefacts["model.onnx"] + ".meta.json") as f:
        meta = json.load(f)
    assert meta["format"] == "onnx" and meta["class_names"] == CLASSES
    assert meta["input"]["shape"] == [None, SIZE, SIZE, 3] and meta["batch"] == "dynamic"
    assert meta["outputs"] == [{"name": "probabilities", "dtype": "float32",
                                "shape": [None, 10]}]
    assert {"jax2onnx", "onnx", "onnxruntime"} <= set(meta["versions"])
    assert "tensorflow" not in meta["versions"]


def test_onnx_logits_and_fixed_batch(loaded, reference, tmp_path):
    """The network's logits through jax2onnx and onnxruntime's folding: within 1e-4 of JAX's
    (the CPU conv implementation's); --batch 2 fixes the input shape."""
    model = export_model(loaded)
    onnx_model = convert_function(lambda images: model(images), SIZE, output_name="logits")
    path = str(tmp_path / "logits.onnx")
    onnx.save(onnx_model, path)
    session = load_onnx(path)
    for x, _ in reference:
        (got,) = session.run(["logits"], {"images": x})
        want = np.asarray(loaded.model(x))
        assert np.abs(got - want).max() <= TOLERANCE
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
    fixed = str(tmp_path / "fixed.onnx")
    export_checkpoint(loaded.path, "onnx", fixed, batch=2)
    session = load_onnx(fixed)
    assert session.get_inputs()[0].shape == [2, SIZE, SIZE, 3]
    x, want = reference[0][0][:2], reference[0][1][:2]
    _check_parity(session.run(None, {"images": x})[0], want)
    with pytest.raises(Exception, match="images"):
        session.run(None, {"images": reference[0][0][:3]})


def test_onnx_error_names_the_primitive():
    with pytest.raises(ONNXConversionError, match=r"jax2onnx \S+ cannot convert this "
                                                  r"function: eigh .*--format jax_export"):
        convert_function(lambda x: jax.numpy.linalg.eigvalsh(x[0, :, :, 0]), 4, batch=1)


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "{missing}", "--format", "jax_export"], "no checkpoint at"),
    (["--format", "onnyx"], "unknown format 'onnyx' (valid: savedmodel, jax_export, tflite, "
                            "onnx)"),
    (["--format", "onnx", "--with-preprocessing"], "--with-preprocessing needs --format "
                                                   "savedmodel or tflite"),
    (["--format", "onnx", "--platforms", "cpu,tpu"], "an ONNX model has no lowering"),
    (["--format", "jax_export", "--batch", "0"], "--batch must be a positive integer or "
                                                 "'dynamic', got '0'"),
    (["--format", "jax_export", "--output", "{existing}"], "already exists; pass --overwrite"),
    (["--format", "jax_export", "--with-preprocessing"], "--with-preprocessing needs --format "
                                                         "savedmodel or tflite"),
    (["--format", "savedmodel", "--quantize"], "needs --format tflite"),
    (["--format", "tflite", "--platforms", "cpu,cuda"], "TFLite converts the CPU lowering"),
])
def test_cli_rejects_bad_input(argv, message, checkpoint, tmp_path, capsys):
    existing = tmp_path / "exists.jax"
    existing.write_bytes(b"keep me")
    fill = {"{missing}": str(tmp_path / "nowhere"), "{existing}": str(existing)}
    argv = [fill.get(a, a) for a in argv]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", checkpoint]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    assert export_main(argv) == 1
    assert message in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"
    assert not os.path.exists(tmp_path / "out")


def test_overwrite_replaces_and_parse_batch(checkpoint, tmp_path, capsys):
    output = tmp_path / "model.jax"
    output.write_bytes(b"old")
    assert export_main(["--checkpoint", checkpoint, "--format", "jax_export", "--output",
                        str(output), "--batch", "4", "--overwrite"]) == 0
    assert "wrote jax_export" in capsys.readouterr().out
    assert load_jax_export(str(output)).in_avals[0].shape == (4, SIZE, SIZE, 3)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no scratch left
    assert parse_batch("dynamic") is None and parse_batch("8") == 8
    for bad in ("0", "-2", "1.5", "many"):
        with pytest.raises(ValueError, match="positive integer or 'dynamic'"):
            parse_batch(bad)
