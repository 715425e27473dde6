#!/bin/bash
# EfficientNetV2 on one machine with several GPUs: a single process drives every visible GPU
# (JAX puts one device per GPU on the "data" mesh axis), so no jax.distributed setup is needed.
#
#   pip install -e ".[gpu,data]"                 # jax[cuda12], tf.data; see launch/README.md
#   WORKDIR=/data/runs/v2s bash launch/gpu_single_node.sh \
#       --config.data.data_dir=/data/tensorflow_datasets
#
# Arguments are config overrides (--config.KEY=VALUE). Environment: WORKDIR (required), CONFIG
# (default configs/s_imagenet.py), PYTHON (default python), CUDA_VISIBLE_DEVICES to pick GPUs.
# The global batch must divide over the GPUs. If 4096 images do not fit in their memory, lower
# it (e.g. --config.train.global_batch_size=1024): the learning rate follows, since base_lr is
# per 256 images. Running the same command again resumes from the latest checkpoint.
set -euo pipefail

: "${WORKDIR:?set WORKDIR to the run directory, e.g. WORKDIR=/data/runs/v2s}"
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/s_imagenet.py}
[ -f "$CONFIG" ] || { echo "launch/gpu_single_node.sh: CONFIG=$CONFIG is not a file" >&2; exit 2; }
if command -v nvidia-smi >/dev/null; then
  echo "effnetv2: $(nvidia-smi -L | wc -l) GPU(s) on $(hostname)"
fi
exec "${PYTHON:-python}" -m effnetv2_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
