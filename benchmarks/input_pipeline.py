"""Input-pipeline throughput: train images/s per CPU core at 128, 224 and 300 px with
RandAugment(2, 15) and mixup, and eval images/s at 384 px.

    python benchmarks/input_pipeline.py                 # about a minute on 2 cores
    python benchmarks/input_pipeline.py --seconds 30 --batch 256

The images are a folder of JPEGs the size of typical ImageNet photos (500 x 375 and 375 x 500,
quality 90), cut from the real photographs that ship with scikit-image, so each example pays
for file reading and JPEG decoding as in training. The pipeline uses every core (tf.data
AUTOTUNE); "per core" divides by the cores this process may run on. Prints a table and writes
CSV + PNG to --out (default benchmarks/results/, not tracked by git). Not a timed test: the
target (>= 60 train images/s per core at 300 px) is for reading, not for CI.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from effnetv2_jax.data import (DataConfig, Preprocessing, make_eval_iterator,  # noqa: E402
                               make_train_iterator)

TRAIN_SIZES = (128, 224, 300)
EVAL_SIZE = 384
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel", "cat")


def write_jpeg_folder(root: str, num_images: int, num_classes: int = 10) -> None:
    """`num_images` ImageNet-sized JPEGs cut from scikit-image's sample photos."""
    import skimage.data
    from PIL import Image

    rng = np.random.RandomState(0)
    photos = [Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS]
    for i in range(num_images):
        photo = photos[i % len(photos)]
        width, height = (500, 375) if rng.rand() < 0.75 else (375, 500)
        scale = max(width / photo.width, height / photo.height) * rng.uniform(1.0, 1.5)
        resized = photo.resize((int(photo.width * scale) + 1, int(photo.height * scale) + 1))
        left = rng.randint(0, resized.width - width + 1)
        top = rng.randint(0, resized.height - height + 1)
        class_dir = os.path.join(root, f"class_{i % num_classes}")
        os.makedirs(class_dir, exist_ok=True)
        resized.crop((left, top, left + width, top + height)).save(
            os.path.join(class_dir, f"{i:05d}.jpg"), quality=90)


def images_per_second(iterator, batch: int, seconds: float, warmup: int = 3) -> float:
    for _ in range(warmup):
        next(iterator)
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        next(iterator)
        images += batch
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per row")
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--num-images", type=int, default=512, help="JPEGs in the folder")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))

    rows = []
    with tempfile.TemporaryDirectory() as root:
        write_jpeg_folder(root, args.num_images)
        config = DataConfig(source="folder", folder_root=root, folder_eval_root=root,
                            augment="randaug", randaug_layers=2)
        for size in TRAIN_SIZES:
            with make_train_iterator(config, Preprocessing(), image_size=size, randaug_magnitude=15,
                                     mixup_alpha=0.2, cutmix_alpha=0.0,
                                     global_batch_size=args.batch, start_step=0,
                                     seed=0) as iterator:
                rate = images_per_second(iterator, args.batch, args.seconds)
            rows.append(("train RandAugment(2, 15) + mixup 0.2", size, rate))
        elapsed, images = 0.0, 0
        while elapsed < args.seconds:  # whole passes; iterator construction not timed
            iterator = make_eval_iterator(config, Preprocessing(), image_size=EVAL_SIZE,
                                          global_batch_size=args.batch)
            start = time.perf_counter()
            images += sum(int(batch["mask"].sum()) for batch in iterator)
            elapsed += time.perf_counter() - start
        rows.append(("eval (squash, V2)", EVAL_SIZE, images / elapsed))

    print(f"\n{cores} CPU cores; {args.num_images} JPEGs of 500x375 / 375x500; "
          f"global batch {args.batch}\n")
    print(f"| {'pipeline':<38} | {'px':>4} | {'images/s':>9} | {'per core':>9} |")
    print(f"|{'-' * 40}|{'-' * 6}|{'-' * 11}|{'-' * 11}|")
    for name, size, rate in rows:
        print(f"| {name:<38} | {size:>4} | {rate:>9.1f} | {rate / cores:>9.1f} |")

    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "input_pipeline.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pipeline", "image_size", "images_per_s", "images_per_s_per_core",
                         "cores"])
        for name, size, rate in rows:
            writer.writerow([name, size, f"{rate:.1f}", f"{rate / cores:.1f}", cores])
    plot_path = os.path.join(args.out, "input_pipeline.png")
    _plot(rows, cores, plot_path)
    print(f"\nwrote {csv_path} and {plot_path}")


def _plot(rows, cores: int, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{'train' if name.startswith('train') else 'eval'} {size}px"
              for name, size, _ in rows]
    per_core = [rate / cores for _, _, rate in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(labels, per_core, color=["C0"] * (len(rows) - 1) + ["C1"])
    ax.axhline(60, color="gray", linestyle="--", label="target at 300 px: 60 / core")
    ax.set_ylabel("images / s / core")
    ax.set_title(f"Input pipeline, {cores} cores, RandAugment(2, 15) + mixup")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
