"""`Preprocessing`: how a model's weights expect their images, the one type for it.

The model registry (`models/variants.py`) attaches one to every variant as its weights'
metadata; the data pipeline (`data/preprocess.py`), inference and export apply it, once, outside
the model. It lives here, in a module that imports nothing of the package, because models/ may
not import data/ and data/ may not import models/: both import this.

    from effnetv2_jax.preprocessing import Preprocessing
    Preprocessing()                                         # V2 S-XL: (x - 128) / 128, bilinear
    Preprocessing.from_metadata(variant.preprocessing, train_crop="resize")  # fine-tune crop
"""

from __future__ import annotations

import dataclasses

INTERPOLATIONS = ("bilinear", "bicubic")
TRAIN_CROPS = ("v2", "legacy", "resize")


def _check_choice(field: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {field} {value!r} (valid: {', '.join(valid)})")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a model's weights expect their images (official `preprocessing.py`,
    `preprocess_legacy.py`). Defaults: V2 S-XL.

    Attributes:
      mean, std: per channel, in pixel units (0-255): the model sees `(x - mean) / std`.
        V2: 128/128; V1 and B-series: ImageNet mean/std; Lite: 127/128.
      interpolation: "bilinear" (V2: `tf.image.resize`, half-pixel centres, no antialias) or
        "bicubic" (the legacy V1 pipeline: `resize_bicubic` without half-pixel centres). The
        legacy choice also brings the legacy eval crop offset `(H - c + 1) // 2` (V2: `//2`).
      crop_padding: the eval centre crop keeps a square of side
        `int(size / (size + crop_padding) * min(H, W))` pixels.
      squash_min_size: eval sizes >= this skip the crop and resize the whole image
        (V2 S-XL: 320); None = always crop.
      train_crop: "v2" (random crop of 5-100% of the area), "legacy" (V1's 8-100% crop with a
        centre-crop fallback) or "resize" (fine-tune recipe: whole image, and whole-image eval).
        None follows `interpolation`: bilinear -> "v2", bicubic -> "legacy".
    """

    mean: tuple[float, float, float] = (128.0, 128.0, 128.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    interpolation: str = "bilinear"
    crop_padding: int = 32
    squash_min_size: int | None = 320
    train_crop: str | None = None

    def __post_init__(self):
        _check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        if self.train_crop is not None:
            _check_choice("train_crop", self.train_crop, TRAIN_CROPS)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean}, {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        # Tuples, so a config loaded from YAML/JSON lists still hashes and compares.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def crop(self) -> str:
        """The training crop in effect ("v2", "legacy" or "resize")."""
        if self.train_crop is not None:
            return self.train_crop
        return "v2" if self.interpolation == "bilinear" else "legacy"

    @classmethod
    def from_metadata(cls, metadata: object, train_crop: str | None = None) -> Preprocessing:
        """Copies mean/std/interpolation/crop_padding/squash_min_size from a weight's metadata.

        `metadata` is any object with those attributes, e.g. a registered variant's
        `preprocessing`; `train_crop="resize"` selects the fine-tune recipe.
        """
        return cls(mean=tuple(metadata.mean), std=tuple(metadata.std),
                   interpolation=metadata.interpolation, crop_padding=metadata.crop_padding,
                   squash_min_size=metadata.squash_min_size, train_crop=train_crop)

    @classmethod
    def from_dict(cls, fields: dict) -> Preprocessing:
        """From a checkpoint's metadata dict (`"preprocessing"`); keys it does not know are
        ignored (a converted checkpoint writes no `train_crop`)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in known})
