"""The official TF1 checkpoints' variable names and shapes, replayed from the official code
without this project's model or converter: `python tests/convert/tf1_golden.py` writes
tests/convert/tf1_names/<model>.txt, which test_tf1_names.py holds the converter to.

How the official code names variables (google/automl `efficientnetv2/effnetv2_model.py`; the
V1 and Lite builders in tensorflow/tpu `models/official/efficientnet/` name them alike):
  <model>/stem/conv2d/kernel [3, 3, 3, C] and <model>/stem/tpu_batch_normalization/*;
  <model>/blocks_<i>/..., i counting blocks over all stages, layers named in creation order
  by counters, `conv2d`, `conv2d_1`, ... and `tpu_batch_normalization`, `_1`, `_2`:
    MBConv:  [expand conv2d 1x1 + BN if e != 1], depthwise_conv2d/depthwise_kernel
             [k, k, C, 1] + BN, [se/conv2d, se/conv2d_1 (kernel and bias)], project conv2d
             1x1 + BN;
    Fused:   [expand conv2d k x k + BN if e != 1], project conv2d (1x1 if e != 1, else the
             k x k conv) + BN;
  <model>/head/conv2d/kernel, head/tpu_batch_normalization/*, head/dense/{kernel, bias};
  BN variables gamma, beta, moving_mean, moving_variance; each variable also as
  `<name>/ExponentialMovingAverage` (the EMA the official trainers keep, moving statistics
  included). SE width: max(1, int(block input filters x 0.25)). Lite has no SE and keeps the
  stem at 32 and the head at 1280 (all four models here have width 1.0, so no rounding).
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent / "tf1_names"

# Block strings as the official code writes them (V1 strides reduced to one digit).
V1_B0 = ["r1_k3_s1_e1_i32_o16_se0.25", "r2_k3_s2_e6_i16_o24_se0.25",
         "r2_k5_s2_e6_i24_o40_se0.25", "r3_k3_s2_e6_i40_o80_se0.25",
         "r3_k5_s1_e6_i80_o112_se0.25", "r4_k5_s2_e6_i112_o192_se0.25",
         "r1_k3_s1_e6_i192_o320_se0.25"]
MODELS = {  # name: (block strings, stem, head, SE kept)
    "efficientnet-b0": (V1_B0, 32, 1280, True),
    "efficientnet-lite0": (V1_B0, 32, 1280, False),
    "efficientnetv2-b0": (["r1_k3_s1_e1_i32_o16_c1", "r2_k3_s2_e4_i16_o32_c1",
                           "r2_k3_s2_e4_i32_o48_c1", "r3_k3_s2_e4_i48_o96_se0.25",
                           "r5_k3_s1_e6_i96_o112_se0.25", "r8_k3_s2_e6_i112_o192_se0.25"],
                          32, 1280, True),
    "efficientnetv2-s": (["r2_k3_s1_e1_i24_o24_c1", "r4_k3_s2_e4_i24_o48_c1",
                          "r4_k3_s2_e4_i48_o64_c1", "r6_k3_s2_e4_i64_o128_se0.25",
                          "r9_k3_s1_e6_i128_o160_se0.25", "r15_k3_s2_e6_i160_o256_se0.25"],
                         24, 1280, True),
}
NUM_CLASSES = 1000
BN = ("gamma", "beta", "moving_mean", "moving_variance")


def _parse(block: str) -> dict:
    fields = {}
    for token in block.split("_"):
        key, value = re.split(r"(\d.*)", token)[:2]
        fields[key] = value
    return {"r": int(fields["r"]), "k": int(fields["k"]), "e": int(fields["e"]),
            "i": int(fields["i"]), "o": int(fields["o"]),
            "se": float(fields.get("se", 0)), "fused": fields.get("c") == "1"}


def official_variables(model: str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, TF shape) of every trainable variable and BN statistic, raw names only."""
    blocks, stem, head, keep_se = MODELS[model]
    out = []

    def bn(scope, name, channels):
        out.extend((f"{scope}/{name}/{v}", (channels,)) for v in BN)

    out.append((f"{model}/stem/conv2d/kernel", (3, 3, 3, stem)))
    bn(f"{model}/stem", "tpu_batch_normalization", stem)
    index, channels = 0, stem
    for text in blocks:
        spec = _parse(text)
        for repeat in range(spec["r"]):
            scope = f"{model}/blocks_{index}"
            convs, bns = iter(range(99)), iter(range(99))
            conv = lambda: "conv2d" + (f"_{n}" if (n := next(convs)) else "")  # noqa: E731
            norm = lambda: ("tpu_batch_normalization"  # noqa: E731
                            + (f"_{n}" if (n := next(bns)) else ""))
            declared_in = spec["i"] if repeat == 0 else spec["o"]
            mid = declared_in * spec["e"]
            k = spec["k"]
            if spec["fused"]:
                if spec["e"] != 1:
                    out.append((f"{scope}/{conv()}/kernel", (k, k, channels, mid)))
                    bn(scope, norm(), mid)
                    out.append((f"{scope}/{conv()}/kernel", (1, 1, mid, spec["o"])))
                else:
                    out.append((f"{scope}/{conv()}/kernel", (k, k, channels, spec["o"])))
                bn(scope, norm(), spec["o"])
            else:
                if spec["e"] != 1:
                    out.append((f"{scope}/{conv()}/kernel", (1, 1, channels, mid)))
                    bn(scope, norm(), mid)
                else:
                    mid = channels  # Lite's first block: built from the real 32 channels
                out.append((f"{scope}/depthwise_conv2d/depthwise_kernel", (k, k, mid, 1)))
                bn(scope, norm(), mid)
                if spec["se"] and keep_se:
                    reduced = max(1, int(declared_in * spec["se"]))
                    out += [(f"{scope}/se/conv2d/kernel", (1, 1, mid, reduced)),
                            (f"{scope}/se/conv2d/bias", (reduced,)),
                            (f"{scope}/se/conv2d_1/kernel", (1, 1, reduced, mid)),
                            (f"{scope}/se/conv2d_1/bias", (mid,))]
                out.append((f"{scope}/{conv()}/kernel", (1, 1, mid, spec["o"])))
                bn(scope, norm(), spec["o"])
            channels = spec["o"]
            index += 1
    out.append((f"{model}/head/conv2d/kernel", (1, 1, channels, head)))
    bn(f"{model}/head", "tpu_batch_normalization", head)
    out += [(f"{model}/head/dense/kernel", (head, NUM_CLASSES)),
            (f"{model}/head/dense/bias", (NUM_CLASSES,))]
    return out


def golden_text(model: str) -> str:
    lines = []
    for name, shape in official_variables(model):
        dims = ",".join(map(str, shape))
        lines += [f"{name} {dims}", f"{name}/ExponentialMovingAverage {dims}"]
    return "\n".join(lines) + "\n"


def read_golden(model: str) -> dict[str, tuple[int, ...]]:
    """{name: TF shape} from the checked-in list, EMA copies included."""
    names = {}
    for line in (HERE / f"{model}.txt").read_text().splitlines():
        name, dims = line.split()
        names[name] = tuple(int(d) for d in dims.split(","))
    return names


if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    for model in MODELS:
        (HERE / f"{model}.txt").write_text(golden_text(model))
        print(model, len(official_variables(model)), "variables")
