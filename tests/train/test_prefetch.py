"""Device prefetch: batches go to the mesh ahead of the step, in the input's order, bounded."""

import numpy as np
import pytest

from effnetv2_jax.train import sharding


class CountingBatches:
    """Local batches 0, 1, 2, ... (each filled with its index); counts how many were read."""

    def __init__(self, count: int, batch: int = 4):
        self.count, self.batch, self.read = count, batch, 0

    def __iter__(self):
        for i in range(self.count):
            self.read += 1
            yield {"image": np.full((self.batch, 2, 2, 3), i, np.float32),
                   "label": np.full((self.batch,), i, np.int32)}


@pytest.mark.parametrize("size", [0, 1, 2, 5])
def test_same_batches_in_the_same_order_and_bounded_lookahead(size):
    mesh = sharding.make_mesh()
    source = CountingBatches(6)
    seen = []
    for i, (local, global_batch) in enumerate(sharding.prefetch_to_mesh(source, mesh, size)):
        # When batch i is handed out, at most `size` later ones have been read and put.
        assert source.read == min(i + 1 + size, 6)
        assert global_batch["image"].sharding == sharding.batch_sharded(mesh)
        np.testing.assert_array_equal(np.asarray(global_batch["image"]), local["image"])
        seen.append(int(np.asarray(global_batch["label"])[0]))
    assert seen == list(range(6))


def test_closing_early_reads_no_further():
    source = CountingBatches(100)
    batches = sharding.prefetch_to_mesh(source, sharding.make_mesh(), 2)
    next(batches)
    batches.close()
    assert source.read == 3


def test_negative_size_is_refused():
    with pytest.raises(ValueError, match="prefetch size must be >= 0"):
        next(sharding.prefetch_to_mesh(CountingBatches(1), sharding.make_mesh(), -1))
