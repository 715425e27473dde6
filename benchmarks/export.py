"""File size, CPU latency and parity of each export format for a real variant.

Writes a random-weight checkpoint of `--model` (default efficientnetv2-b0, 1000 classes, its eval
size: 224 px for B0) with the converters' writer, exports it with `effnetv2_jax.export` as a
jax.export file, a SavedModel, TFLite (float32 and dynamic-range quantized) and ONNX (run by
onnxruntime), all with a dynamic batch, plus a float32 TFLite file with a fixed batch of 1, and
measures per format:

* size: the artefact on disk (a SavedModel: all its files);
* latency: median wall time of `--repeats` calls at batch 1 and batch 8 on normalised
  [batch, size, size, 3] float32 input, after one warm-up call (compilation excluded); the
  formats' runs are interleaved so that all see the same background load, and the 1-minute load
  average is recorded;
* parity against the JAX model in `predict`'s path (default CPU conv implementation) on crops of
  scikit-image's sample photos, preprocessed with the checkpoint's eval preprocessing: max
  absolute probability difference and top-1 agreement.

"jax (jit, in process)" is the reference row: the loaded model under `jax.jit`, XLA convolutions.

    python benchmarks/export.py                      # efficientnetv2-b0, results in
                                                     # benchmarks/results/export.{csv,png}
    python benchmarks/export.py --quick              # a 2-block model at 64 px, 3 repeats
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import effnetv2_jax  # noqa: E402
from effnetv2_jax import cpu, inference  # noqa: E402
from effnetv2_jax.convert.writer import (checkpoint_metadata, random_weights,  # noqa: E402
                                         write_checkpoint)
from effnetv2_jax.export import (EXPORT_CONV_IMPL, export_checkpoint,  # noqa: E402
                                 load_jax_export)
from effnetv2_jax.export.onnx_export import load_onnx  # noqa: E402
from effnetv2_jax.export.tflite import TFLiteModel  # noqa: E402

QUICK_OVERRIDES = {"block_strings": ["r1_k3_s1_e1_i16_o16_c1", "r1_k3_s2_e4_i16_o32_se0.25"],
                   "feature_size": 256}
BATCHES = (1, 8)
FIXED_BATCH_1 = "tflite float32, --batch 1"


def write_random_checkpoint(directory: str, model: str, overrides: dict,
                            eval_size: int | None) -> None:
    """A converted-layout checkpoint with random weights (numpy-filled, fan-in scaled) and BN
    statistics, so the probabilities are not flat."""
    variant = effnetv2_jax.get_variant(model)
    abstract = effnetv2_jax.abstract_model(model, **overrides)
    params, batch_stats = random_weights(abstract)
    metadata = checkpoint_metadata(variant, num_classes=abstract.num_classes, class_names=[],
                                   source="benchmarks/export.py (random weights)")
    metadata["model_overrides"] = overrides
    if eval_size:
        metadata.update(eval_size=eval_size, train_size=eval_size)
    write_checkpoint(directory, params, batch_stats, metadata)


def photo_batches(size_hw: tuple[int, int], count: int, seed: int = 0) -> list[np.ndarray]:
    """Crops [8, h, w, 3] uint8 of scikit-image's sample photos (no download)."""
    import skimage.data

    sources = [skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
               skimage.data.astronaut(), skimage.data.immunohistochemistry(),
               skimage.data.hubble_deep_field()]
    h, w = size_hw
    sources = [s for s in sources if s.shape[0] >= h and s.shape[1] >= w]
    if not sources:
        raise ValueError(f"no sample photo is as large as {h}x{w}")
    rng = np.random.RandomState(seed)
    crops = []
    for _ in range(count):
        image = sources[rng.randint(len(sources))]
        y, x = rng.randint(image.shape[0] - h + 1), rng.randint(image.shape[1] - w + 1)
        crops.append(image[y:y + h, x:x + w])
    return [np.stack(crops[i:i + 8]) for i in range(0, count, 8)]


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(path) for n in ns)


def runners(paths: dict, loaded_xla, num_threads: int) -> dict:
    """format name -> function(normalised float32 batch) -> probabilities (numpy)."""
    model = loaded_xla.model

    @nnx.jit
    def reference(m, x):
        return jax.nn.softmax(m(x), axis=-1)

    exported = load_jax_export(paths["jax_export"])
    call_exported = jax.jit(exported.call)
    served = tf.saved_model.load(paths["savedmodel"]).signatures["serving_default"]
    tflite = TFLiteModel.from_file(paths["tflite"], num_threads=num_threads)
    tflite_b1 = TFLiteModel.from_file(paths["tflite_b1"], num_threads=num_threads)
    quantized = TFLiteModel.from_file(paths["tflite_int8"], num_threads=num_threads)
    onnx_session = load_onnx(paths["onnx"], threads=num_threads)
    return {
        "jax (jit, in process)": lambda x: np.asarray(reference(model, x)),
        "jax_export": lambda x: np.asarray(call_exported(x)),
        "savedmodel": lambda x: served(images=tf.constant(x))["probabilities"].numpy(),
        "tflite float32": lambda x: tflite(x)["probabilities"],
        # A fixed batch lets the converter fuse more (LOGISTIC for the sigmoid, no shape ops).
        FIXED_BATCH_1: lambda x: np.concatenate([tflite_b1(x[i:i + 1])["probabilities"]
                                                 for i in range(len(x))]),
        "tflite dynamic-range int8": lambda x: quantized(x)["probabilities"],
        "onnx (onnxruntime)": lambda x: onnx_session.run(None, {"images": x})[0],
    }


def measure_latency(fns: dict, size: int, repeats: int) -> dict:
    """(name, batch) -> median seconds of `repeats` calls, interleaved across formats."""
    times = {}
    for batch in BATCHES:
        x = np.random.RandomState(batch).normal(size=(batch, size, size, 3)).astype(np.float32)
        timed = {name: fn for name, fn in fns.items() if batch == 1 or name != FIXED_BATCH_1}
        for fn in timed.values():
            fn(x)  # warm-up: compilation, allocation, input resize
        samples = {name: [] for name in timed}
        for _ in range(repeats):
            for name, fn in timed.items():
                start = time.perf_counter()
                fn(x)
                samples[name].append(time.perf_counter() - start)
        for name, values in samples.items():
            times[name, batch] = statistics.median(values)
    return times


def measure_parity(fns: dict, loaded_default, batches: list[np.ndarray]) -> dict:
    """name -> (max |p - p_jax|, top-1 agreement) against `predict`'s model."""
    results = {name: [0.0, []] for name in fns}
    for batch in batches:
        x = inference.preprocess_images(list(batch), loaded_default.preprocess,
                                        loaded_default.eval_size)
        want = np.asarray(jax.nn.softmax(loaded_default.model(x), axis=-1))
        for name, fn in fns.items():
            got = fn(x)
            results[name][0] = max(results[name][0], float(np.abs(got - want).max()))
            results[name][1].append(got.argmax(-1) == want.argmax(-1))
    return {name: (diff, float(np.concatenate(agree).mean()))
            for name, (diff, agree) in results.items()}


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["format"] for r in rows]
    fig, (ax_lat, ax_size) = plt.subplots(1, 2, figsize=(12, 4.2))
    ys = np.arange(len(rows))
    for offset, batch in ((-0.2, 1), (0.2, 8)):
        ax_lat.barh(ys + offset, [r[f"latency_ms_batch{batch}"] or 0 for r in rows], height=0.4,
                    label=f"batch {batch}")
    ax_lat.set_yticks(ys, names)
    ax_lat.invert_yaxis()
    ax_lat.set_xlabel("median latency per call (ms)")
    ax_lat.legend()
    ax_size.barh(ys, [r["size_mib"] or 0 for r in rows], color="tab:gray")
    ax_size.set_yticks(ys, [""] * len(rows))
    ax_size.invert_yaxis()
    ax_size.set_xlabel("file size (MiB)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnetv2-b0", help="registered variant")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 20)")
    parser.add_argument("--images", type=int, default=64, help="photos for the parity columns")
    parser.add_argument("--quick", action="store_true",
                        help="a 2-block model at 64 px and 3 repeats (a smoke run)")
    parser.add_argument("--out", default="benchmarks/results", help="output directory")
    args = parser.parse_args(argv)
    overrides = QUICK_OVERRIDES if args.quick else {}
    repeats = args.repeats or (3 if args.quick else 20)
    threads = os.cpu_count() or 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = os.path.join(scratch, "checkpoint")
        write_random_checkpoint(checkpoint, args.model, overrides, 64 if args.quick else None)
        paths, export_seconds = {}, {}
        for name, fmt, kwargs in (("jax_export", "jax_export", {}),
                                  ("savedmodel", "savedmodel", {}),
                                  ("tflite", "tflite", {}),
                                  ("tflite_b1", "tflite", {"batch": 1}),
                                  ("tflite_int8", "tflite", {"quantize": True}),
                                  ("onnx", "onnx", {})):
            report = export_checkpoint(checkpoint, fmt, os.path.join(scratch, name), **kwargs)
            paths[name], export_seconds[name] = report.path, report.seconds
            print(f"exported {name}: {report.size_bytes / 2**20:.2f} MiB in "
                  f"{report.seconds:.1f} s", flush=True)
        loaded_default = inference.load_checkpoint(checkpoint)
        loaded_xla = inference.load_checkpoint(checkpoint, conv_impl=EXPORT_CONV_IMPL)
        size = loaded_default.eval_size
        fns = runners(paths, loaded_xla, threads)
        latency = measure_latency(fns, size, repeats)
        load1 = os.getloadavg()[0]
        for name in fns:
            print(f"{name}: {latency[name, 1] * 1e3:.1f} ms at batch 1, "
                  f"{latency.get((name, 8), float('nan')) * 1e3:.1f} ms at batch 8", flush=True)
        # Landscape crops (the eval preprocessing cuts a centre square and resizes it).
        crop = (min(300, int(size * 1.3)), min(450, int(size * 1.75)))
        parity = measure_parity(fns, loaded_default, photo_batches(crop, args.images))
        artefact = {"jax (jit, in process)": None, "jax_export": "jax_export",
                    "savedmodel": "savedmodel", "tflite float32": "tflite",
                    FIXED_BATCH_1: "tflite_b1",
                    "tflite dynamic-range int8": "tflite_int8",
                    "onnx (onnxruntime)": "onnx"}
        rows = []
        for name in fns:
            key = artefact[name]
            rows.append({
                "model": args.model + (" (quick)" if args.quick else ""), "image_size": size,
                "format": name,
                "size_mib": round(_size(paths[key]) / 2**20, 2) if key else None,
                "export_s": round(export_seconds[key], 1) if key else None,
                "latency_ms_batch1": round(latency[name, 1] * 1e3, 1),
                "latency_ms_batch8": (round(latency[name, 8] * 1e3, 1)
                                      if (name, 8) in latency else None),
                "max_abs_prob_diff": f"{parity[name][0]:.2e}",
                "top1_agreement": round(parity[name][1], 4),
                "repeats": repeats, "threads": threads, "load1": round(load1, 2)})

    header = (f"{'format':<28} {'size MiB':>9} {'batch 1 ms':>11} {'batch 8 ms':>11} "
              f"{'max |dp|':>9} {'top-1':>7}")
    print(f"\n{rows[0]['model']} at {size} px, {threads} threads, median of {repeats}, "
          f"load average {load1:.1f}")
    print(header)
    for r in rows:
        mib = "-" if r["size_mib"] is None else f"{r['size_mib']:.2f}"
        batch8 = "-" if r["latency_ms_batch8"] is None else f"{r['latency_ms_batch8']:.1f}"
        print(f"{r['format']:<28} {mib:>9} {r['latency_ms_batch1']:>11.1f} "
              f"{batch8:>11} {r['max_abs_prob_diff']:>9} "
              f"{r['top1_agreement']:>7.2%}")
    with open(out / "export.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, f"{rows[0]['model']} at {size} px: export formats on {threads} CPU threads",
         out / "export.png")
    print(f"wrote {out / 'export.csv'} and {out / 'export.png'}")
    return 0


if __name__ == "__main__":
    cpu.configure_process(restart_allocator=False)  # XLA:CPU flags, as the CLIs
    sys.exit(main())
