"""Block-spec grammar: round trips for every official string, clear errors, and a fuzzed parser."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effnetv2_jax.models import variants
from effnetv2_jax.models.block_spec import (VALID_KEYS, BlockSpec, ConvType, decode, decode_all,
                                            encode)

OFFICIAL_STRINGS = sorted({s for v in (variants.V2_BASE, variants.V2_S, variants.V2_M,
                                       variants.V2_L, variants.V2_XL, variants.V1_BASE)
                           for s in v})


@pytest.mark.parametrize("block_string", OFFICIAL_STRINGS)
def test_official_strings_round_trip(block_string):
    spec = decode(block_string)
    assert encode(spec) == block_string
    assert BlockSpec.decode(block_string).encode() == block_string
    assert decode(encode(spec)) == spec


def test_decode_fields_of_fused_and_mbconv_strings():
    fused = decode("r2_k3_s2_e4_i24_o48_c1")
    assert (fused.repeats, fused.kernel_size, fused.stride, fused.expand_ratio,
            fused.input_filters, fused.output_filters) == (2, 3, 2, 4, 24, 48)
    assert fused.conv_type == ConvType.FUSED_MBCONV and fused.se_ratio is None
    mb = decode("r6_k3_s2_e4_i64_o128_se0.25")
    assert mb.conv_type == ConvType.MBCONV and mb.se_ratio == 0.25 and mb.id_skip


def test_v1_two_digit_strides_equal_one_digit():
    assert decode("r2_k5_s22_e6_i24_o40_se0.25") == decode("r2_k5_s2_e6_i24_o40_se0.25")
    assert decode("r2_k5_s22_e6_i24_o40_se0.25").stride == 2
    assert decode("r1_k3_s11_e1_i32_o16_se0.25").stride == 1


def test_optional_tokens():
    spec = decode("r1_k3_s1_e1_i32_o16_f0_noskip")
    assert not spec.id_skip
    assert encode(spec) == "r1_k3_s1_e1_i32_o16_noskip"
    assert decode("r1_k3_s1_e1_i32_o16_c0").conv_type == ConvType.MBCONV


def test_expand_repeats_first_block_keeps_stride_and_input():
    blocks = decode("r3_k3_s2_e4_i24_o48").expand_repeats()
    assert [(b.input_filters, b.output_filters, b.stride) for b in blocks] == [
        (24, 48, 2), (48, 48, 1), (48, 48, 1)]


@pytest.mark.parametrize("bad, token", [
    ("r2_q3_s1_e1_i24_o24", "q"),             # unknown key
    ("r2_k3_s1_e1_i24", "o"),                  # missing output filters
    ("r2_k3_s1_e1_i24_o24_r3", "r"),           # repeated key
    ("r2_k4_s1_e1_i24_o24", "k4"),             # even kernel
    ("r2_k3_s3_e1_i24_o24", "s3"),             # stride 3
    ("r2_k3_s12_e1_i24_o24", "s12"),           # unequal per-axis strides
    ("r0_k3_s1_e1_i24_o24", "r0"),             # zero repeats
    ("r2_k3_s1_e1_i24_o24_se1.5", "se1.5"),    # ratio above 1
    ("r2_k3_s1_e1_i24_o24_sex", "sex"),        # no digit in the token
    ("r2_k3_s1_e1_i24_o24_c2", "c2"),          # unknown conv type
    ("r2_k3_s1_e1_i24_o24_f1", "f1"),          # fused_conv flag of the tpu code
    ("r2_k3_s1_e1.5_i24_o24", "e1.5"),         # non-integer expand ratio
])
def test_malformed_strings_name_the_token_and_list_keys(bad, token):
    with pytest.raises(ValueError) as info:
        decode(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert token in message
    assert "valid keys: " + ", ".join(VALID_KEYS) in message


@pytest.mark.parametrize("bad", ["", " r1_k3_s1_e1_i1_o1", "r1_k3_s1_e1_i1_o1_", "_", "noskip"])
def test_degenerate_strings_are_value_errors(bad):
    with pytest.raises(ValueError, match="malformed block string"):
        decode(bad)


def test_non_string_and_bare_string_lists_are_refused():
    with pytest.raises(ValueError, match="must be a str"):
        decode(123)
    with pytest.raises(ValueError, match="wrap it in a list"):
        decode_all("r1_k3_s1_e1_i32_o16")
    with pytest.raises(ValueError, match="empty"):
        decode_all([])


_ALPHABET = "rkseiocf_nopd0123456789.-+eE "


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.text(max_size=40), st.text(alphabet=_ALPHABET, max_size=40)))
def test_fuzzed_input_gives_a_spec_or_a_value_error(text):
    try:
        spec = decode(text)
    except ValueError as error:
        assert "block string" in str(error)
    else:
        assert decode(encode(spec)) == spec


@st.composite
def specs(draw):
    return BlockSpec(
        repeats=draw(st.integers(1, 40)), kernel_size=draw(st.sampled_from([1, 3, 5, 7])),
        stride=draw(st.sampled_from([1, 2])), expand_ratio=draw(st.integers(1, 8)),
        input_filters=draw(st.integers(1, 2048)), output_filters=draw(st.integers(1, 2048)),
        se_ratio=draw(st.one_of(st.none(), st.floats(1e-4, 1.0))),
        conv_type=draw(st.sampled_from(list(ConvType))), id_skip=draw(st.booleans()),
        stride_digits=draw(st.sampled_from([1, 2])))


@settings(max_examples=500, deadline=None)
@given(specs())
def test_every_valid_spec_round_trips(spec):
    text = encode(spec)
    assert re.fullmatch(r"[a-z0-9_.e\-]+", text)
    assert decode(text) == spec
    assert encode(decode(text)) == text


def test_blockspec_validates_its_fields():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        BlockSpec(1, 4, 1, 1, 8, 8)
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        BlockSpec(0, 3, 1, 1, 8, 8)
    with pytest.raises(ValueError, match="se_ratio"):
        BlockSpec(1, 3, 1, 1, 8, 8, se_ratio=0.0)
