"""effnetv2_jax: EfficientNetV2 (and V1, Lite) in JAX / Flax NNX, from a laptop CPU to TPU pods."""

from setuptools import find_packages, setup

# One set that installs and imports together on Python 3.11 (checked on CPU). jax/flax/orbax move
# quickly: change a pin only together with the tests.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "clu==0.0.12",
    "ml_collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",
    "tensorboard==2.21.0",            # clu.metric_writers needs it
    "importlib_resources==7.1.0",     # TFDS dataset builders need it
    "matplotlib==3.11.2",             # benchmark plots
    "pillow==13.0.0",                 # image decoding checks and reference values
    "scikit-learn==1.9.1",            # ships the real digits dataset (quickstart, tests)
    "scikit-image==0.26.0",           # ships real sample photos (notebooks, tests)
    # mimalloc for XLA:CPU's step buffers (effnetv2_jax/allocator.py); Linux wheels only.
    "cmeel-mimalloc==3.4.3; sys_platform == 'linux'",
    "cmeel==0.62.0; sys_platform == 'linux'",
]

# Weight converters (effnetv2_jax.convert) read timm / Keras files; their parity tests build the
# reference models, so the test extra includes them. torch 2.14.1 + torchvision 0.29.1 is the
# pair that installs and runs on CPU here (a CUDA build, taken from the local wheel store).
CONVERT = ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31", "safetensors==0.8.0",
           "keras==3.15.1"]
NOTEBOOKS = ["nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0"]

setup(
    name="effnetv2_jax",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["effnetv2_jax", "effnetv2_jax.*"]),
    package_data={"effnetv2_jax": ["imagenet_classes.txt", "models/cpu_kernels.cc"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "convert": CONVERT,
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "hypothesis==6.170.17", *CONVERT,
                 *NOTEBOOKS],
        "tpu": ["jax[tpu]==0.10.2"],      # pins the matching libtpu
        "gpu": ["jax[cuda12]==0.10.2"],
    },
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
