"""Block-spec strings: the official EfficientNet stage grammar, parsed into typed `BlockSpec`s.

A stage of the network is one string of `_`-separated tokens, exactly as in the official code
(google/automl `efficientnetv2/effnetv2_model.py`, tensorflow/tpu `efficientnet_builder.py`):

    r2_k3_s2_e4_i24_o48_c1          Fused-MBConv stage: 2 blocks, 3x3, stride 2, expand 4, 24 -> 48
    r6_k3_s2_e4_i64_o128_se0.25     MBConv stage with squeeze-and-excitation (ratio 0.25)
    r2_k3_s22_e6_i16_o24_se0.25     V1 spelling: one stride digit per axis (`s22` == `s2`)

Each token is split at its first digit: the letters are the key, the rest is the value.

| key      | value                 | meaning                                                        |
|----------|-----------------------|----------------------------------------------------------------|
| `r`      | int >= 1  (required)  | repeats: blocks in the stage (before depth scaling)            |
| `k`      | odd int   (required)  | kernel size                                                    |
| `s`      | 1 or 2 digits         | stride of the first block (the rest use 1); `s22` = `s2`       |
| `e`      | int >= 1  (required)  | expand ratio                                                   |
| `i`, `o` | int >= 1  (required)  | input / output filters before width scaling                    |
| `se`     | float in (0, 1]       | squeeze-and-excitation ratio; absent = no SE                   |
| `c`      | 0 or 1                | conv type (V2 meaning): 0 = MBConv, 1 = Fused-MBConv           |
| `f`      | 0                     | V2 encoder's `fused_conv` flag; the V2 decoder ignores it      |
| `noskip` | (no value)            | no identity skip (V1 only; no released model uses it)          |

`c1` follows the V2 repository (Fused-MBConv). The tensorflow/tpu V1 code used `c1` for a
different block (`MBConvBlockWithoutDepthwise`) that no released model uses; it is not supported.

Only the first block of a stage uses `(i, s)`; blocks 2..r use `input_filters = output_filters`
and stride 1 (see `BlockSpec.expand_repeats`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterable, Sequence

VALID_KEYS = ("r", "k", "s", "e", "i", "o", "se", "c", "f", "noskip")
_REQUIRED_KEYS = ("r", "k", "s", "e", "i", "o")
_KEY_RE = re.compile(r"(\d.*)")


class ConvType(enum.IntEnum):
    """Block type, numbered as the V2 code's `c` token."""

    MBCONV = 0
    FUSED_MBCONV = 1


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One stage of the network, as written in a block-spec string (before width/depth scaling).

    Attributes:
      repeats: number of blocks in the stage.
      kernel_size: spatial kernel size (pixels) of the depthwise (MBConv) or kxk (Fused) conv.
      stride: stride of the first block of the stage.
      expand_ratio: channel expansion of the inverted bottleneck.
      input_filters: input channels of the first block, before width scaling.
      output_filters: output channels, before width scaling.
      se_ratio: squeeze-and-excitation ratio of the block input channels; None means no SE.
      conv_type: MBConv or Fused-MBConv.
      id_skip: whether the block may use an identity residual (also needs stride 1 and in == out).
      stride_digits: 1 or 2; how the stride was written (`s2` or V1's `s22`). Only affects
        `encode()`, so V1 strings round-trip; it is ignored when comparing specs.
    """

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    input_filters: int
    output_filters: int
    se_ratio: float | None = None
    conv_type: ConvType = ConvType.MBCONV
    id_skip: bool = True
    stride_digits: int = dataclasses.field(default=1, compare=False)

    def __post_init__(self):
        for name in ("repeats", "kernel_size", "stride", "expand_ratio", "input_filters",
                     "output_filters"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BlockSpec.{name} must be a positive int, got {value!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"BlockSpec.kernel_size must be odd, got {self.kernel_size}")
        if self.se_ratio is not None and not 0.0 < self.se_ratio <= 1.0:
            raise ValueError(f"BlockSpec.se_ratio must be in (0, 1] or None, got {self.se_ratio!r}")
        if self.stride_digits not in (1, 2):
            raise ValueError(f"BlockSpec.stride_digits must be 1 or 2, got {self.stride_digits!r}")
        object.__setattr__(self, "conv_type", ConvType(self.conv_type))

    @property
    def has_se(self) -> bool:
        return self.se_ratio is not None

    @classmethod
    def decode(cls, block_string: str) -> "BlockSpec":
        """Parses one block string; raises ValueError naming the bad token and the valid keys."""
        return decode(block_string)

    def encode(self) -> str:
        """The official spelling of this spec; `decode(spec.encode()) == spec`."""
        return encode(self)

    def replace(self, **changes) -> "BlockSpec":
        return dataclasses.replace(self, **changes)

    def expand_repeats(self) -> list["BlockSpec"]:
        """The stage's blocks: the first keeps (input_filters, stride), the rest are out->out, s1."""
        first = self.replace(repeats=1)
        rest = self.replace(repeats=1, input_filters=self.output_filters, stride=1)
        return [first] + [rest] * (self.repeats - 1)


def _error(block_string: str, problem: str) -> ValueError:
    return ValueError(
        f"malformed block string {block_string!r}: {problem} "
        f"(valid keys: {', '.join(VALID_KEYS)}; example 'r2_k3_s2_e4_i24_o48_c1')")


def _parse_int(block_string: str, token: str, value: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise _error(block_string, f"token {token!r} needs a non-negative integer value")
    return int(value)


def decode(block_string: str) -> BlockSpec:
    """Parses a block string such as 'r2_k3_s2_e4_i24_o48_c1' into a `BlockSpec`.

    Raises:
      ValueError: quoting the string and naming the bad token for any malformed input
        (unknown or repeated key, missing required key, bad value).
    """
    if not isinstance(block_string, str):
        raise ValueError(f"a block string must be a str, got {type(block_string).__name__}: "
                         f"{block_string!r}")
    if not block_string or block_string != block_string.strip():
        raise _error(block_string, "it is empty or has surrounding whitespace")
    fields: dict[str, str] = {}
    for token in block_string.split("_"):
        if token == "noskip":
            key, value = "noskip", ""
        else:
            parts = _KEY_RE.split(token)
            if len(parts) < 2:
                raise _error(block_string, f"token {token!r} has no value "
                                           f"(or unknown key {token!r})")
            key, value = parts[0], parts[1]
        if key not in VALID_KEYS:
            raise _error(block_string, f"unknown key {key!r} in token {token!r}")
        if key in fields:
            raise _error(block_string, f"key {key!r} appears twice (token {token!r})")
        fields[key] = value
    missing = [k for k in _REQUIRED_KEYS if k not in fields]
    if missing:
        raise _error(block_string, f"missing required key(s) {', '.join(missing)}")

    ints = {k: _parse_int(block_string, k + fields[k], fields[k])
            for k in ("r", "k", "e", "i", "o")}
    for key, value in ints.items():
        if value < 1:
            raise _error(block_string, f"token {key + fields[key]!r} must be >= 1")
    if ints["k"] % 2 == 0:
        raise _error(block_string, f"token 'k{fields['k']}': kernel size must be odd")

    stride_text = fields["s"]
    _parse_int(block_string, "s" + stride_text, stride_text)
    if len(stride_text) == 2 and stride_text[0] != stride_text[1]:
        raise _error(block_string, f"token 's{stride_text}': per-axis strides must be equal")
    if len(stride_text) not in (1, 2) or stride_text[0] not in "12":
        raise _error(block_string, f"token 's{stride_text}': stride must be s1, s2, s11 or s22")

    se_ratio = None
    if "se" in fields:
        try:
            se_ratio = float(fields["se"])
        except ValueError:
            raise _error(block_string, f"token 'se{fields['se']}' needs a number") from None
        if not (math.isfinite(se_ratio) and 0.0 < se_ratio <= 1.0):
            raise _error(block_string, f"token 'se{fields['se']}': ratio must be in (0, 1]")

    conv_type = ConvType.MBCONV
    if "c" in fields:
        if fields["c"] not in ("0", "1"):
            raise _error(block_string, f"token 'c{fields['c']}': conv type must be c0 (MBConv) "
                                       f"or c1 (Fused-MBConv)")
        conv_type = ConvType(int(fields["c"]))
    if "f" in fields and fields["f"] != "0":
        raise _error(block_string, f"token 'f{fields['f']}': only f0 is accepted; write c1 for "
                                   f"a Fused-MBConv stage")
    if "noskip" in fields and fields["noskip"]:
        raise _error(block_string, "token 'noskip' takes no value")

    return BlockSpec(
        repeats=ints["r"], kernel_size=ints["k"], stride=int(stride_text[0]),
        expand_ratio=ints["e"], input_filters=ints["i"], output_filters=ints["o"],
        se_ratio=se_ratio, conv_type=conv_type, id_skip="noskip" not in fields,
        stride_digits=len(stride_text))


def encode(spec: BlockSpec) -> str:
    """Writes a spec in the official order: r, k, s, e, i, o, [se], [c1], [noskip]."""
    tokens = [f"r{spec.repeats}", f"k{spec.kernel_size}", "s" + str(spec.stride) * spec.stride_digits,
              f"e{spec.expand_ratio}", f"i{spec.input_filters}", f"o{spec.output_filters}"]
    if spec.se_ratio is not None:
        tokens.append(f"se{spec.se_ratio!r}")
    if spec.conv_type == ConvType.FUSED_MBCONV:
        tokens.append("c1")
    if not spec.id_skip:
        tokens.append("noskip")
    return "_".join(tokens)


def decode_all(block_strings: Iterable[str] | str) -> list[BlockSpec]:
    """Parses a list of block strings (one per stage). A bare string is refused, not split."""
    if isinstance(block_strings, str):
        raise ValueError(f"expected a list of block strings, got the single string "
                         f"{block_strings!r}; wrap it in a list")
    specs = [decode(s) for s in block_strings]
    if not specs:
        raise ValueError("the list of block strings is empty; a network needs at least one stage")
    return specs


def encode_all(specs: Sequence[BlockSpec]) -> list[str]:
    return [encode(s) for s in specs]
