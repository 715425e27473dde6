"""Pretrained weights per variant, as data: tag, where the file lives, labels, eval size, top-1.

    from effnetv2_jax.pretrained import tags
    tags.get_weights("efficientnetv2-s", "in21k-ft-in1k").repo_id
    # 'timm/tf_efficientnetv2_s.in21k_ft_in1k'
    tags.list_pretrained("efficientnetv2-s")       # ['in21k-ft-in1k', 'in21k', 'in1k']

Every weight file is a timm port of an official TensorFlow checkpoint, on the Hugging Face Hub
(`timm/<timm name>.<timm tag>`, file `model.safetensors`); a tag here is timm's with `-` for `_`.
The repositories, class counts and eval sizes were read from timm's own `pretrained_cfg` metadata
(timm 1.0.31, `timm.models.get_pretrained_cfg`); tests/test_pretrained.py checks the table
against it. Top-1 is the official README's figure for the checkpoint timm ported
(google/automl `efficientnetv2/README.md`; tensorflow/tpu `models/official/efficientnet/
README.md` and `lite/README.md`), None where the README states none (21k heads, B3 21k->1k, B8
RandAugment). The official checkpoints timm has no port of (V2-B0..B2 21k and 21k->1k) are not
listed: convert them from the official `.tgz` with `python -m effnetv2_jax.convert --source tf1`.

The eval preprocessing is the variant's (official `preprocessing.py`), except where a tag says
otherwise: AdvProp weights take `x * 2 / 255 - 1` (mean = std = 127.5 pixels; tensorflow/tpu
`models/official/efficientnet/README.md`), the V2-B3 21k weights mean = std = 127.5 (timm's
`pretrained_cfg`), and L2-475 is evaluated at 475 px. Lite3/4 keep the official 280/300 px
(tensorflow/tpu `lite/efficientnet_lite_builder.py`; timm evaluates them at 300/380).
"""

from __future__ import annotations

import dataclasses

HF_FILENAME = "model.safetensors"
LABEL_SETS = {"in1k": 1000, "in21k": 21843}  # 21k heads: 21,843 outputs (official README)


@dataclasses.dataclass(frozen=True)
class Weights:
    """One pretrained weight file of a registered variant.

    Attributes:
      model: our variant name ("efficientnetv2-s").
      tag: the weights' name ("in21k-ft-in1k").
      repo_id, filename: where the file is on the Hugging Face Hub.
      labels: "in1k" (ImageNet-1k, 1000 classes) or "in21k" (21,843 classes).
      eval_size: eval image size in pixels; None: the variant's.
      mean, std: normalisation in pixels; None: the variant's.
      top1: the official README's ImageNet-1k top-1 (%), None where it states none.
      description: what the weights are, in a few words.
    """

    model: str
    tag: str
    repo_id: str
    filename: str
    labels: str
    eval_size: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    top1: float | None
    description: str

    @property
    def num_classes(self) -> int:
        return LABEL_SETS[self.labels]

    @property
    def source(self) -> str:
        return f"hf://{self.repo_id}/{self.filename}"


_ADVPROP = (127.5,) * 3

# (tag, description, labels) of each weight kind.
_KINDS = {
    "in21k-ft-in1k": ("ImageNet-21k pretrained, fine-tuned on ImageNet-1k", "in1k"),
    "in21k": ("ImageNet-21k (21,843 classes)", "in21k"),
    "in1k": ("ImageNet-1k", "in1k"),
    "ns-jft-in1k": ("NoisyStudent: JFT-300M pseudo labels + ImageNet-1k, RandAugment", "in1k"),
    "ns-jft-in1k-475": ("NoisyStudent L2 at 475 px", "in1k"),
    "ap-in1k": ("AdvProp + AutoAugment, ImageNet-1k", "in1k"),
    "aa-in1k": ("AutoAugment, ImageNet-1k", "in1k"),
    "ra-in1k": ("RandAugment, ImageNet-1k", "in1k"),
}

# model -> timm model name, then {tag: top-1}; the first tag is the model's default.
_V2 = {"s": {"in21k-ft-in1k": 84.9, "in21k": None, "in1k": 83.9},
       "m": {"in21k-ft-in1k": 86.2, "in21k": None, "in1k": 85.2},
       "l": {"in21k-ft-in1k": 86.9, "in21k": None, "in1k": 85.7},
       "xl": {"in21k-ft-in1k": 87.2, "in21k": None},
       "b0": {"in1k": 78.7}, "b1": {"in1k": 79.8}, "b2": {"in1k": 80.5},
       "b3": {"in1k": 82.1, "in21k-ft-in1k": None, "in21k": None}}
# V1 per kind, B0.. in order (tensorflow/tpu README): NoisyStudent, AdvProp, AutoAugment,
# baseline (timm's `.in1k` ports of `ckpts/`, which exist for B0-B5 only), RandAugment.
_NS = (78.8, 81.5, 82.4, 84.1, 85.3, 86.1, 86.4, 86.9)
_AP = (77.6, 79.6, 80.5, 81.9, 83.3, 84.3, 84.8, 85.2, 85.5)
_AA = (77.1, 79.1, 80.1, 81.6, 82.9, 83.6, 84.0, 84.3)
_BASE = (76.7, 78.7, 79.8, 81.1, 82.5, 83.1)
_RA = {5: 83.7, 7: 84.7, 8: None}
_LITE = (75.1, 76.7, 77.6, 79.8, 81.5)


def _entries() -> list[Weights]:
    entries = []

    def add(model, timm_name, tag, top1, *, eval_size=None, mean=None):
        description, labels = _KINDS[tag]
        entries.append(Weights(model, tag, f"timm/{timm_name}.{tag.replace('-', '_')}",
                               HF_FILENAME, labels, eval_size, mean, mean, top1, description))

    for key, tags in _V2.items():
        for tag, top1 in tags.items():
            add(f"efficientnetv2-{key}", f"tf_efficientnetv2_{key}", tag, top1,
                mean=_ADVPROP if key == "b3" and tag.startswith("in21k") else None)
    for b in range(9):
        model, timm_name = f"efficientnet-b{b}", f"tf_efficientnet_b{b}"
        if b < len(_NS):
            add(model, timm_name, "ns-jft-in1k", _NS[b])
        add(model, timm_name, "ap-in1k", _AP[b], mean=_ADVPROP)
        if b < len(_AA):
            add(model, timm_name, "aa-in1k", _AA[b])
        if b < len(_BASE):
            add(model, timm_name, "in1k", _BASE[b])
        if b in _RA:
            add(model, timm_name, "ra-in1k", _RA[b])
    add("efficientnet-l2", "tf_efficientnet_l2", "ns-jft-in1k", 88.4)
    add("efficientnet-l2", "tf_efficientnet_l2", "ns-jft-in1k-475", 88.2, eval_size=475)
    for i, top1 in enumerate(_LITE):
        add(f"efficientnet-lite{i}", f"tf_efficientnet_lite{i}", "in1k", top1)
    return entries


WEIGHTS: tuple[Weights, ...] = tuple(_entries())
_BY_MODEL: dict[str, dict[str, Weights]] = {}
for _w in WEIGHTS:
    _BY_MODEL.setdefault(_w.model, {})[_w.tag] = _w


def list_pretrained(model: str | None = None) -> list[str]:
    """Tags of `model` (default first), or every "model/tag" when `model` is None."""
    if model is None:
        return [f"{w.model}/{w.tag}" for w in WEIGHTS]
    return list(_BY_MODEL.get(model, {}))


def default_tag(model: str) -> str:
    """The model's default weights: its best ImageNet-1k classifier."""
    tags = list_pretrained(model)
    if not tags:
        raise ValueError(f"no pretrained weights are listed for {model!r} (models with weights: "
                         f"{', '.join(_BY_MODEL)})")
    return tags[0]


def get_weights(model: str, tag: str | None = None) -> Weights:
    """The table entry of `model`'s `tag` (None: the default tag).

    Raises ValueError naming the valid tags (or the models that have weights)."""
    tag = default_tag(model) if tag is None else tag
    found = _BY_MODEL.get(model, {}).get(tag)
    if found is None:
        valid = list_pretrained(model)
        if not valid:
            default_tag(model)  # raises, naming the models with weights
        raise ValueError(f"unknown pretrained tag {tag!r} for {model} (valid: "
                         f"{', '.join(valid)}; or a local weight file or checkpoint path)")
    return found


def markdown_table() -> str:
    """The table as Markdown: model, tag, Hub repository, labels, eval size and crop, top-1."""
    rows = ["| model | tag | Hub repository | labels | eval | top-1 |",
            "|---|---|---|---|---|---|"]
    for w in WEIGHTS:
        top1 = f"{w.top1:.1f}" if w.top1 is not None else "-"
        rows.append(f"| {w.model} | {w.tag} | `{w.repo_id}` | {w.labels} | "
                    f"{eval_size(w)} px {eval_crop(w)} | {top1} |")
    return "\n".join(rows)


def eval_size(weights: Weights) -> int:
    """The weights' eval image size in pixels."""
    from effnetv2_jax.models.variants import get_variant

    return weights.eval_size or get_variant(weights.model).eval_size


def eval_crop(weights: Weights) -> str:
    """"squash" (the whole image resized: V2 S-XL at >= 320 px) or "center" (a centre square
    of side size / (size + 32) of the short side)."""
    from effnetv2_jax.models.variants import get_variant

    squash = get_variant(weights.model).preprocessing.squash_min_size
    return "squash" if squash is not None and eval_size(weights) >= squash else "center"
