"""The splitting stages as pure functions of a World: many layouts, no process group."""
import numpy as np
import pytest

from shards.console import UserError
from train.data import World, epoch_order, rank_batches, steps_per_epoch


@pytest.mark.parametrize("n_pairs", [7, 64, 100, 1001])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_every_pair_once_and_equal_steps(n_pairs, world_size, batch):
    shard = np.random.default_rng(n_pairs).integers(0, 5, n_pairs)
    order = epoch_order(shard, epoch=3, seed=1, window=2)
    assert sorted(order) == list(range(n_pairs))
    if n_pairs < world_size * steps_per_epoch(n_pairs, world_size, batch):
        with pytest.raises(UserError):
            rank_batches(order, World(0, world_size), batch)
        return
    per_rank = [rank_batches(order, World(r, world_size), batch) for r in range(world_size)]
    steps = {len(b) for b in per_rank}
    assert steps == {steps_per_epoch(n_pairs, world_size, batch)}
    seen = np.concatenate([np.concatenate(b) for b in per_rank])
    assert sorted(seen) == list(range(n_pairs))
    assert max(len(x) for b in per_rank for x in b) <= batch
    assert all(len(x) >= 1 for b in per_rank for x in b)
    # Cut as np.array_split cuts a rank's share, batch for batch.
    for r, b in enumerate(per_rank):
        share = order[n_pairs * r // world_size:n_pairs * (r + 1) // world_size]
        assert [list(x) for x in b] == [list(x) for x in np.array_split(share, len(b))]


def test_order_streams_shards_window_by_window():
    shard = np.repeat(np.arange(12), 10)
    order = epoch_order(shard, epoch=0, seed=0, window=3)
    windows = [set(shard[order[i:i + 30]]) for i in range(0, 120, 30)]
    assert all(len(w) == 3 for w in windows) and set().union(*windows) == set(range(12))
    assert not np.array_equal(order, epoch_order(shard, epoch=1, seed=0, window=3))
    assert np.array_equal(order, epoch_order(shard, epoch=0, seed=0, window=3))
