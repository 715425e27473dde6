"""Fine-tune an ImageNet(-21k) EfficientNetV2 on another dataset, head re-initialised.

    python -m effnetv2_jax.main --config=configs/finetune.py:dataset=cifar10,paper,model=s \
        --workdir=DIR --config.train.init_checkpoint=IMAGENET_CHECKPOINT_DIR

`dataset=` (required) is cifar10, cifar100, flowers (TFDS oxford_flowers102, trained on
train+validation), cars (cars196), or imagenet1k (21k -> 1k: 15 epochs instead of 10,000 steps);
cifar10_ft.py, cifar100_ft.py, flowers_ft.py, cars_ft.py and imagenet_ft1k.py are this recipe with
the dataset fixed. `model=s|m|l|xl` picks the network (default s).
`:code` (default) is google/automl's fine-tune config (official `datasets.py`, `ImagenetFt`):
batch 512, RMSProp with a constant 0.0005 per 256 (0.001), 1 warmup epoch, weight decay 1e-5;
`:paper` is paper 5.3: 0.001 with cosine decay and no weight decay. Both: EMA 0.9996, label
smoothing 0.1, dropout 1e-6, survival 0.8, no mixup, "ft" augmentation, one stage at the eval
size (S 384, M/L 480, XL 512 px). The head is re-initialised for the new class count.
`--config.train.init_checkpoint=DIR` (a trained or converted checkpoint) is required: without it
the run stops at start-up, before anything is built (`train/config.validate` refuses it and
names the flag). Append `,hw=NAME` to the argument for a hardware preset
(effnetv2_jax/train/hardware.py: tpu_v3_8, tpu_v4_32, gpu_8xa100, cpu_debug, ...);
`--config.key=value` flags override both.

Expected (paper Table 8, ImageNet-pretrained, S / M / L top-1): CIFAR-10 98.7 / 99.0 / 99.1%,
CIFAR-100 91.5 / 92.2 / 92.3%, Flowers 97.9 / 98.5 / 98.8%, Cars 93.8 / 94.6 / 95.1%; 21k -> 1k
(official README, `-21k-ft1k` checkpoints): S 84.9%, M 86.2%, L 86.9%, XL 87.2%.
"""

from effnetv2_jax import recipes


def get_config(arg: str = ""):
    return recipes.finetune(arg)
