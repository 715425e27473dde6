"""The TF1 converter maps exactly the official checkpoints' variable names, for every family
(V1-B0, Lite0, V2-B0, V2-S): the golden lists in tests/convert/tf1_names/ are replayed from the
official code's layer naming by tf1_golden.py, which uses neither this project's model nor its
converter, and their sizes add up to the official parameter counts (official
`effnetv2_model_test.py`; V1 and Lite from the official builders)."""

import math

import jax
import pytest
from flax import nnx

import tf1_golden
from effnetv2_jax.convert import layout, tf1
from effnetv2_jax.models.arch import resolve_arch
from effnetv2_jax.models.factory import abstract_model
from effnetv2_jax.models.variants import get_variant

# Total parameters including the BN moving statistics, as the official unit test counts them.
OFFICIAL_TOTALS = {"efficientnet-b0": 5_330_564, "efficientnet-lite0": 4_694_024,
                   "efficientnetv2-b0": 7_200_312, "efficientnetv2-s": 21_612_360}


@pytest.mark.parametrize("model", sorted(tf1_golden.MODELS))
def test_golden_list_is_the_official_replay_and_adds_up_to_the_official_count(model):
    golden = tf1_golden.read_golden(model)
    assert (tf1_golden.HERE / f"{model}.txt").read_text() == tf1_golden.golden_text(model)
    raw = {n: s for n, s in golden.items() if not n.endswith(tf1.EMA_SUFFIX)}
    assert sum(math.prod(shape) for shape in raw.values()) == OFFICIAL_TOTALS[model]
    assert set(golden) == set(raw) | {n + tf1.EMA_SUFFIX for n in raw}


@pytest.mark.parametrize("model", sorted(tf1_golden.MODELS))
def test_converter_maps_exactly_the_official_names_with_their_shapes(model):
    golden = tf1_golden.read_golden(model)
    raw = {n: s for n, s in golden.items() if not n.endswith(tf1.EMA_SUFFIX)}
    layers = layout.model_layers(resolve_arch(get_variant(model).arch))
    mapping = tf1.variable_names(layers, model)  # leaf -> (TF name, depthwise transpose)
    names = [name for name, _ in mapping.values()]
    assert len(names) == len(set(names)), "two leaves read the same variable"
    assert set(names) - set(raw) == set(), "names the official code never creates"
    assert set(raw) - set(names) == set(), "official variables left unread"
    # Each official variable lands in a leaf of our model with the matching shape.
    state = nnx.to_pure_dict(nnx.state(abstract_model(model, num_classes=1000)))
    shapes = {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf.shape
              for path, leaf in jax.tree_util.tree_leaves_with_path(state)}
    assert set(shapes) == set(mapping)
    for leaf, (name, depthwise) in mapping.items():
        tf_shape = raw[name]
        expected = (*tf_shape[:2], tf_shape[3], tf_shape[2]) if depthwise else tf_shape
        assert tuple(shapes[leaf]) == expected, (leaf, name, tf_shape, shapes[leaf])
