"""Every recipe in configs/: it loads as the command line loads it, builds, trains, and holds the
numbers of the paper (Tan & Le 2021, sections 5.1-5.3, Tables 6 and 8) and the official code
(google/automl `effnetv2_configs.py`, `hparams.py`, `datasets.py`, `main.py`; tensorflow/tpu
`efficientnet_builder.py`, `main.py` for V1).

Loading goes through ml_collections' own file parser (`--config=configs/X.py:ARG`), so a recipe
that only works when imported some other way fails here. Building uses `run.setup` (no
compilation) on a tiny override; four representative recipes train two real steps.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from config_parsing import parse_command_line

from effnetv2_jax.models.factory import resolve_model_args
from effnetv2_jax.train import hardware, loop, progressive, run
from effnetv2_jax.train.config import validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p.stem for p in CONFIGS.glob("*.py"))
# The parametrised recipes and the files that fix their argument (file: its fixed key=value).
FAMILY = {"imagenet21k": {f"{m}_21k": f"model={m}" for m in ("s", "m", "l", "xl")},
          "finetune": {"cifar10_ft": "dataset=cifar10", "cifar100_ft": "dataset=cifar100",
                       "flowers_ft": "dataset=flowers", "cars_ft": "dataset=cars",
                       "imagenet_ft1k": "dataset=imagenet1k"}}
# Every recipe with each argument it accepts: both schedule presets where there are two.
VARIANTS = [(name, arg) for name in RECIPES for arg in (
    ("code", "paper") if name in ("s_imagenet", "m_imagenet", "l_imagenet")
    or name.endswith("_ft") or name == "imagenet_ft1k"
    else ("dataset=cifar10,code", "dataset=imagenet1k,paper,model=m") if name == "finetune"
    else ("", "sigmoid,model=xl") if name == "imagenet21k" else ("",))]
TINY_BLOCKS = ("r1_k3_s1_e1_i8_o8_c1", "r1_k3_s2_e4_i8_o16_se0.25")


def load(name: str, arg: str = ""):
    """The config exactly as `--config=configs/<name>.py:<arg>` gives it."""
    return parse_command_line(f"--config={CONFIGS / name}.py" + (f":{arg}" if arg else ""))


def schedule(config) -> progressive.Schedule:
    _, variant = resolve_model_args(config.model.name, run.model_overrides(config))
    return run.stage_schedule(config, variant)


def stages(config, total_steps: int = 1000) -> list[progressive.Stage]:
    return progressive.make_stages(schedule(config), config.progressive.num_stages, total_steps)


def peak_lr(config) -> float:
    return config.train.base_lr * config.train.global_batch_size / 256


def tiny(config, cache_dir: str, num_stages: int = 4):
    """The recipe's regularisation schedule on a 2-block network, 32 px, synthetic data."""
    sched = schedule(config)
    c = config
    c.model.block_strings = TINY_BLOCKS
    c.model.width, c.model.depth, c.model.feature_size = 1.0, 1.0, 32
    c.data.source = "synthetic"
    c.data.synthetic_num_classes = 4
    c.data.synthetic_num_examples = 32
    c.data.synthetic_num_eval_examples = 8
    c.data.synthetic_image_size = 40
    c.train.global_batch_size = 8
    c.train.num_steps = 4
    c.train.log_every_steps = 1
    c.train.init_checkpoint = ""
    c.train.require_init_checkpoint = False      # smoke runs start from scratch
    c.progressive.num_stages = min(c.progressive.num_stages, num_stages)
    c.progressive.preset = "custom"
    for key in ("randaug_magnitude", "mixup_alpha", "cutmix_alpha", "dropout_rate"):
        c.progressive[key] = getattr(sched, key)
    c.progressive.image_size = (32, 32)
    c.eval.image_size = 32
    c.eval.global_batch_size = 8
    c.checkpoint.every_steps = 2
    c.checkpoint.async_save = False
    c.checkpoint.compile_cache_dir = cache_dir
    return c


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("compile_cache"))


@pytest.mark.parametrize("name,arg", VARIANTS)
def test_every_recipe_loads_validates_and_sets_up(name, arg, cache_dir, tmp_path):
    config = load(name, arg)
    if config.train.require_init_checkpoint:    # fine-tunes: validated with a checkpoint path
        config.train.init_checkpoint = "/path/to/checkpoint"
    validate(config)
    assert config.is_locked, "a misspelt --config.key must fail"
    built = run.setup(tiny(config, cache_dir), str(tmp_path))
    assert built.total_steps == 4 and len(built.stages) == config.progressive.num_stages
    built.checkpointer.close()


def test_every_recipe_documents_its_command_and_expected_result():
    for name in RECIPES:
        doc = (CONFIGS / f"{name}.py").read_text().split('"""')[1]
        assert f"--config=configs/{name}.py" in doc, name
        assert "Expected" in doc, name


@pytest.mark.parametrize("name,arg", [pytest.param("s_imagenet", "paper", marks=pytest.mark.slow),
                                      ("efficientnet_b0", ""),
                                      pytest.param("s_21k", "", marks=pytest.mark.slow),
                                      pytest.param("cifar10_ft", "code", marks=pytest.mark.slow)])
def test_two_training_steps(name, arg, cache_dir, tmp_path):
    config = tiny(load(name, arg), cache_dir, num_stages=2)
    config.train.num_steps = 2
    config.mode = "train"
    loop.train_and_evaluate(config, str(tmp_path))
    assert (tmp_path / "checkpoints" / "2").exists()


# ---- the paper's and the official code's numbers ---------------------------------------------

# Official `main.py` (code) and paper Table 6 (paper): per-stage sizes, magnitudes, alphas, dropout.
V2_CODE = {
    "s": ([171, 214, 257, 300], [5, 6.67, 8.33, 10], [0, 0, 0, 0], [0.2] * 4, 384),
    "m": ([192, 256, 320, 384], [5, 8.33, 11.67, 15], [0, 0.067, 0.133, 0.2], [0.3] * 4, 480),
    "l": ([192, 256, 320, 384], [5, 10, 15, 20], [0, 0.167, 0.333, 0.5], [0.4] * 4, 480),
}
V2_PAPER = {  # (first, last) of size, RandAugment, mixup, dropout; cutmix 0
    "s": ((128, 300), (5, 15), (0, 0), (0.1, 0.3)),
    "m": ((128, 380), (5, 20), (0, 0.2), (0.1, 0.4)),
    "l": ((128, 380), (5, 25), (0, 0.4), (0.1, 0.5)),
}


def imagenet_basics(c):
    assert (c.train.num_epochs, c.train.global_batch_size, c.train.num_steps) == (350, 4096, 0)
    assert peak_lr(c) == pytest.approx(0.256)
    assert (c.train.warmup_epochs, c.train.decay_epochs, c.train.decay_factor) == (5, 2.4, 0.97)
    assert (c.train.lr_schedule, c.train.optimizer) == ("exponential", "rmsprop")
    assert (c.train.weight_decay, c.train.label_smoothing, c.train.ema_decay) == (
        1e-5, 0.1, 0.9999)
    assert c.progressive.num_stages == 4 and c.data.name == "imagenet2012"


@pytest.mark.parametrize("model", ["s", "m", "l"])
def test_v2_code_preset(model):
    c = load(f"{model}_imagenet", "code")
    imagenet_basics(c)
    sizes, ram, alpha, dropout, eval_size = V2_CODE[model]
    got = stages(c)
    assert [s.image_size for s in got] == sizes
    assert [s.randaug_magnitude for s in got] == pytest.approx(ram, abs=0.01)
    assert [s.mixup_alpha for s in got] == pytest.approx(alpha, abs=0.001)
    assert [s.cutmix_alpha for s in got] == pytest.approx(alpha, abs=0.001)
    assert [s.dropout_rate for s in got] == pytest.approx(dropout)
    assert c.model.bn_momentum == -1.0 and c.data.augment == "randaug"  # variant's 0.9
    # the eval size is the variant's:
    _, variant = resolve_model_args(c.model.name, {})
    assert (c.eval.image_size or variant.eval_size) == eval_size


@pytest.mark.parametrize("model", ["s", "m", "l"])
def test_v2_paper_preset(model):
    c = load(f"{model}_imagenet", "paper")
    imagenet_basics(c)
    size, ram, mixup, dropout = V2_PAPER[model]
    got = stages(c)
    assert (got[0].image_size, got[-1].image_size) == size
    assert (got[0].randaug_magnitude, got[-1].randaug_magnitude) == pytest.approx(ram)
    assert (got[0].mixup_alpha, got[-1].mixup_alpha) == pytest.approx(mixup)
    assert {s.cutmix_alpha for s in got} == {0.0}
    assert (got[0].dropout_rate, got[-1].dropout_rate) == pytest.approx(dropout)
    assert c.model.bn_momentum == 0.99


@pytest.mark.parametrize("model,sizes,eval_size", [
    ("b0", [144, 160, 176, 192], 224), ("b1", [144, 160, 176, 192], 240),
    ("b2", [148, 168, 188, 208], 260), ("b3", [156, 184, 212, 240], 300)])
def test_v2_b_series(model, sizes, eval_size):
    c = load(f"{model}_imagenet")
    imagenet_basics(c)
    assert c.data.augment == "autoaug"
    got = stages(c)
    assert [s.image_size for s in got] == sizes
    assert {s.mixup_alpha for s in got} == {0.0}
    _, variant = resolve_model_args(c.model.name, {})
    assert variant.eval_size == eval_size
    with pytest.raises(flags.IllegalFlagValueError, match="valid: code"):
        load(f"{model}_imagenet", "paper")


V1 = {0: (224, 0.2), 1: (240, 0.2), 2: (260, 0.3), 3: (300, 0.3), 4: (380, 0.4),
      5: (456, 0.4), 6: (528, 0.5), 7: (600, 0.5)}


def v1_basics(c):
    assert (c.train.global_batch_size, c.train.num_steps) == (2048, 218_949)
    assert peak_lr(c) == pytest.approx(0.128)
    assert (c.train.warmup_epochs, c.train.decay_epochs, c.train.decay_factor) == (5, 2.4, 0.97)
    assert (c.model.bn_momentum, c.model.survival_prob) == (0.99, 0.8)
    assert (c.train.label_smoothing, c.train.ema_decay) == (0.1, 0.9999)


@pytest.mark.parametrize("index", range(8))
def test_v1(index):
    c = load(f"efficientnet_b{index}")
    v1_basics(c)
    size, dropout = V1[index]
    (only,) = stages(c)
    assert (only.image_size, c.eval.image_size, only.dropout_rate) == (size, size, dropout)
    assert (only.mixup_alpha, only.cutmix_alpha) == (0, 0)


def test_b7_progressive():
    c = load("b7_progressive")
    v1_basics(c)
    got = stages(c)
    assert [s.image_size for s in got] == [246, 364, 482, 600]
    assert (got[0].randaug_magnitude, got[-1].randaug_magnitude) == (5, 28)
    assert {s.dropout_rate for s in got} == {0.5} and c.data.augment == "randaug"
    assert c.eval.image_size == 600


@pytest.mark.parametrize("model", ["s", "m", "l", "xl"])
def test_21k_pretraining(model):
    c = load(f"{model}_21k")
    assert c.model.name == f"efficientnetv2-{model}"
    assert (c.train.num_epochs, c.train.global_batch_size) == (60, 4096)
    assert peak_lr(c) == pytest.approx(0.128)
    assert (c.train.lr_schedule, c.train.warmup_epochs, c.train.label_smoothing) == (
        "cosine", 1, 0)
    assert (c.model.survival_prob, c.data.augment) == (1.0, "none")
    (only,) = stages(c)
    assert (only.image_size, c.eval.image_size, only.dropout_rate) == (224, 224, 1e-6)
    assert (only.randaug_magnitude, only.mixup_alpha, only.cutmix_alpha) == (0, 0, 0)
    # multi-hot targets / label count with softmax (paper 5.2); 0/1 + sigmoid as published
    assert (c.data.label_key, c.data.normalize_multi_hot, c.train.loss) == (
        "labels", True, "softmax")
    sigmoid = load(f"{model}_21k", "sigmoid,hw=tpu_v3_8")
    assert (sigmoid.data.normalize_multi_hot, sigmoid.train.loss) == (False, "sigmoid")


@pytest.mark.parametrize("name,dataset", [("cifar10_ft", "cifar10"), ("cifar100_ft", "cifar100"),
                                          ("flowers_ft", "oxford_flowers102"),
                                          ("cars_ft", "cars196")])
def test_transfer_finetunes(name, dataset):
    paper, code = load(name, "paper"), load(name, "code")
    for c in (paper, code):
        assert c.data.name == dataset and c.data.augment == "ft"
        assert (c.train.global_batch_size, c.train.num_steps) == (512, 10_000)
        assert peak_lr(c) == pytest.approx(0.001)
        (only,) = stages(c)
        assert (only.image_size, c.eval.image_size, only.dropout_rate) == (384, 384, 1e-6)
        assert (c.train.ema_decay, c.train.label_smoothing) == (0.9996, 0.1)
        assert c.train.init_checkpoint == "" and c.train.init_use_ema
        assert c.train.require_init_checkpoint
    assert (paper.train.lr_schedule, paper.train.weight_decay) == ("cosine", 0.0)
    assert (code.train.lr_schedule, code.train.weight_decay, code.train.warmup_epochs) == (
        "constant", 1e-5, 1)
    assert paper.data.train_split == ("train+validation" if name == "flowers_ft" else "train")
    for model, size in (("m", 480), ("l", 480)):
        c = load(name, f"paper,model={model}")
        assert c.model.name == f"efficientnetv2-{model}" and c.eval.image_size == size


def test_21k_to_1k_finetune():
    c = load("imagenet_ft1k", "code,model=xl")
    assert (c.model.name, c.data.name, c.train.num_epochs) == (
        "efficientnetv2-xl", "imagenet2012", 15)
    assert peak_lr(c) == pytest.approx(0.001) and c.eval.image_size == 512
    assert load("imagenet_ft1k", "paper").train.lr_schedule == "cosine"


# ---- hardware presets -----------------------------------------------------------------------

def test_hardware_presets_compose_with_recipes():
    c = load("l_imagenet", "paper,hw=gpu_8xa100")
    assert (c.train.global_batch_size, c.model.dtype) == (1024, "bfloat16")
    assert c.model.bn_momentum == 0.99 and stages(c)[-1].image_size == 380  # recipe kept
    assert peak_lr(c) == pytest.approx(0.064)  # linear scaling: base_lr is per 256
    v1 = load("efficientnet_b0", "hw=gpu_8xa100")  # steps scale to keep the images seen
    assert (v1.train.global_batch_size, v1.train.num_steps) == (1024, 437_898)
    ft = load("cifar10_ft", "paper,hw=tpu_v4_32")  # the cap never raises a batch
    assert (ft.train.global_batch_size, ft.train.num_steps) == (512, 10_000)
    assert (ft.train.bn_mode, ft.train.bn_group_size) == ("groups", 8)
    debug = load("s_imagenet", "hw=cpu_debug")
    assert (debug.train.global_batch_size, debug.train.num_steps, debug.model.dtype) == (
        8, 8, "float32")


def test_command_line_flags_override_the_hardware_preset():
    c = parse_command_line(f"--config={CONFIGS / 's_imagenet.py'}:paper,hw=tpu_v4_32",
                           "--config.train.global_batch_size=256", "--config.model.dtype=float32")
    assert (c.train.global_batch_size, c.model.dtype, c.train.bn_mode) == (256, "float32",
                                                                          "groups")
    assert c.model.bn_momentum == 0.99


def test_bad_hardware_name_or_argument_lists_the_valid_ones():
    with pytest.raises(flags.IllegalFlagValueError, match="cpu_debug.*tpu_v4_32"):
        load("s_imagenet", "hw=tpu_v9")
    with pytest.raises(flags.IllegalFlagValueError, match="valid: code, paper"):
        load("s_imagenet", "papr")
    with pytest.raises(flags.IllegalFlagValueError, match="valid: hw="):
        load("s_imagenet", "batch=8")
    assert set(hardware.names()) >= {"tpu_v3_8", "tpu_v4_32", "tpu_v5e_32", "gpu_8xa100",
                                     "cpu_debug"}


def test_finetune_refuses_to_start_without_a_checkpoint():
    with pytest.raises(ValueError, match="set --config.train.init_checkpoint=DIR"):
        validate(load("cifar10_ft", "code"))
    validate(parse_command_line(
        f"--config={CONFIGS / 'cifar10_ft'}.py:code", "--config.train.init_checkpoint=/ckpt"))


@pytest.mark.parametrize("name", ["finetune", "cifar10_ft", "cifar100_ft", "flowers_ft",
                                  "cars_ft", "imagenet_ft1k"])
def test_finetune_docstrings_say_a_missing_checkpoint_is_refused(name):
    """What the docstring promises is what validate does: the run stops at start-up."""
    import ast

    doc = " ".join(ast.get_docstring(ast.parse((CONFIGS / f"{name}.py").read_text())).split())
    assert "--config.train.init_checkpoint=DIR" in doc and "is required" in doc, doc
    assert "without it the run stops at start-up" in doc, doc
    assert "scratch" not in doc, doc
    config = load(name, "code,dataset=cifar10" if name == "finetune" else "code")
    assert config.train.require_init_checkpoint
    with pytest.raises(ValueError, match="set --config.train.init_checkpoint=DIR"):
        validate(config)


# ---- one library module, parametrised families ----------------------------------------------

HW = ("", "hw=tpu_v4_32", "hw=gpu_8xa100", "hw=cpu_debug")


def family_arguments(family: str) -> list[str]:
    """Every argument the per-model / per-dataset files of `family` accept (presets x models x
    hardware), as config arguments without the fixed key."""
    presets = ("", "paper", "sigmoid") if family == "imagenet21k" else ("", "code", "paper")
    models = ("",) if family == "imagenet21k" else ("", "model=s", "model=m", "model=l",
                                                     "model=xl")
    return [",".join(filter(None, (p, m, h))) for p in presets for m in models for h in HW]


@pytest.mark.parametrize("family,name", [(f, n) for f in FAMILY for n in FAMILY[f]])
def test_each_family_file_is_the_parametrised_recipe(family, name):
    """s_21k.py:ARG == imagenet21k.py:model=s,ARG and cifar10_ft.py:ARG ==
    finetune.py:dataset=cifar10,ARG, for every argument the file accepts. (Checked once more, at
    the change, against the configs the per-file recipes gave before: all 438 file-argument
    pairs of configs/ were equal.)"""
    fixed = FAMILY[family][name]
    for arg in family_arguments(family):
        parametrised = load(family, f"{fixed},{arg}".rstrip(","))
        assert load(name, arg).to_dict() == parametrised.to_dict(), (name, arg)


def test_family_arguments_are_checked():
    with pytest.raises(flags.IllegalFlagValueError, match="needs dataset=NAME.*imagenet1k"):
        load("finetune", "code")
    with pytest.raises(flags.IllegalFlagValueError, match="unknown dataset 'imagenet'"):
        load("finetune", "dataset=imagenet")
    with pytest.raises(flags.IllegalFlagValueError, match="model 'b0' .*valid: s, m, l, xl"):
        load("imagenet21k", "model=b0")
    # a file that fixes the model or dataset does not take it again
    with pytest.raises(flags.IllegalFlagValueError, match="unknown key 'model'.*valid: hw="):
        load("s_21k", "model=m")
    with pytest.raises(flags.IllegalFlagValueError, match="key 'dataset'.*valid: hw=, model="):
        load("cifar10_ft", "dataset=cars")
    assert load("imagenet21k").model.name == "efficientnetv2-s"  # the default model


def test_no_recipe_touches_sys_path():
    """Recipes import the library module `effnetv2_jax.recipes`, as the command line and any
    other program that loads them by path can."""
    for name in RECIPES:
        text = (CONFIGS / f"{name}.py").read_text()
        assert "sys.path" not in text and "import common" not in text, name


def test_recipes_load_without_tensorflow():
    """The core install (no TensorFlow) can read a recipe, e.g. to inspect or compile it."""
    script = (
        "import sys\n"
        "for m in ('tensorflow', 'tensorflow_datasets', 'tensorboard'): sys.modules[m] = None\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from config_parsing import parse_command_line\n"
        f"c = parse_command_line('--config={CONFIGS}/finetune.py:dataset=cars,model=l')\n"
        "print(c.model.name, c.data.name)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["efficientnetv2-l", "cars196"]
