"""The trainer's index: pairs resolved to rows without a Python object per key, cached beside
the pairs and memory-mapped, invalidated when the shards change, and read alike by eval with the
columns it needs; DALI's crops follow the seed."""
import hashlib
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from eval.evaluate import load_pairs as eval_pairs
from shards.locate import ShardIndex, key_parts, merge_resolved, resolve_in_background, resolve_pairs
from shards.schema import SchemaError, read_table, write_table
from tests.conftest import jpeg_bytes, photo_arrays
from train.config import DataConfig
from train.data import load_pairs
from train.decode import BACKENDS, make_decoder


@pytest.fixture()
def dataset(train_dataset, tmp_path):
    """A private copy: these tests rewrite slices and caches."""
    shutil.copytree(train_dataset / "shards", tmp_path / "shards")
    shutil.copytree(train_dataset / "pairs", tmp_path / "pairs")
    return tmp_path


def expected_pairs(dataset, split="train") -> list[tuple[str, str]]:
    """The manifest's pairs whose two keys have an `ok` row, by plain Python sets."""
    images = read_table(dataset / "shards", "images").to_pylist()
    ok = {r["key"] for r in images if r["status"] == "ok"}
    pairs = read_table(dataset / "pairs" / f"{split}.parquet", "pairs").to_pylist()
    return [(p["hi_key"], p["lo_key"]) for p in pairs if p["hi_key"] in ok and p["lo_key"] in ok]


def resolved_pairs(pairs) -> list[tuple[str, str]]:
    return list(zip(pairs.index.keys_of(pairs.hi), pairs.index.keys_of(pairs.lo)))


def test_pairs_resolve_to_the_right_bytes_and_the_cache_is_mapped(dataset):
    first = load_pairs(dataset / "pairs" / "train.parquet", dataset / "shards")
    assert resolved_pairs(first) == expected_pairs(dataset)
    assert (dataset / "pairs" / ".train.resolved").is_file()
    index = ShardIndex(dataset / "shards")
    again = load_pairs(dataset / "pairs" / "train.parquet", index)
    assert "key_array" not in vars(index)  # a warm cache never reads the shards' slices
    assert isinstance(again.hi, np.memmap) and isinstance(again.index.offsets, np.memmap)
    assert resolved_pairs(again) == resolved_pairs(first)
    assert np.array_equal(again.shard, first.shard) and list(again.shard_names) == list(first.shard_names)
    # Every row's bytes are that key's JPEG, as the shards' own table records them.
    rows = read_table(dataset / "shards", "images").to_pylist()
    sha1 = {r["key"]: r["sha1"] for r in rows if r["status"] == "ok"}
    for row in range(len(again.index)):
        assert hashlib.sha1(again.index.read_row(row)).hexdigest() == sha1[again.index.key(row)]


def test_shards_build_leaves_a_locate_file_that_readers_map(dataset):
    """The build's last step: a reader maps DIR/.locate instead of scanning the slices, and finds
    every `ok` row where the shards' own table says it is."""
    assert (dataset / "shards" / ".locate").is_file()
    index = ShardIndex(dataset / "shards")
    assert isinstance(index.offsets, np.memmap)
    ok = [r for r in read_table(dataset / "shards", "images").to_pylist() if r["status"] == "ok"]
    located = {index.key(row): (str(loc.shard), loc.offset, loc.size)
               for row in range(len(index)) for loc in [index.locate_row(row)]}
    assert located == {r["key"]: (r["shard"], r["offset"], r["size"]) for r in ok}


def test_a_stale_or_damaged_locate_file_is_not_trusted(dataset):
    shards = dataset / "shards"
    slice_path = sorted(shards.glob("*.parquet"))[0]
    table = pq.read_table(slice_path)
    victim = table.column("key")[0].as_py()
    pq.write_table(table.filter(pc.not_equal(table.column("key"), victim)), slice_path)
    assert victim not in set(ShardIndex(shards).keys)  # the rewritten slice is scanned again
    assert victim not in set(ShardIndex(shards).keys)  # and the locate file rewritten with it
    (shards / ".locate").write_bytes(b"\x00" * 100)
    assert len(ShardIndex(shards)) == sum(r["status"] == "ok" for r in read_table(shards, "images").to_pylist())


def test_a_rewritten_slice_invalidates_the_cache(dataset):
    pairs = load_pairs(dataset / "pairs" / "train.parquet", dataset / "shards")
    victim = pairs.index.key(pairs.hi[0])
    slice_path = dataset / "shards" / pairs.index.shard_names[pairs.index.shard[pairs.hi[0]]].replace(".tar", ".parquet")
    table = pq.read_table(slice_path)
    status = pc.if_else(pc.equal(table.column("key"), victim), pa.scalar("http_404"), table.column("status"))
    pq.write_table(table.set_column(table.schema.get_field_index("status"), "status", status), slice_path)
    after = load_pairs(dataset / "pairs" / "train.parquet", dataset / "shards")
    assert victim not in set(np.concatenate([after.index.keys_of(after.hi), after.index.keys_of(after.lo)]))
    assert resolved_pairs(after) == expected_pairs(dataset) and after.missing > pairs.missing


def test_an_index_in_memory_gives_the_same_pairs_as_the_cached_path(dataset):
    in_memory = resolve_pairs(dataset / "pairs" / "val.parquet", ShardIndex(dataset / "shards"), cache=False)
    cached = resolve_pairs(dataset / "pairs" / "val.parquet", ShardIndex(dataset / "shards"))
    assert list(in_memory.index.keys_of(in_memory.hi)) == list(cached.index.keys_of(cached.hi))
    assert in_memory.missing == cached.missing


def manifest_with_absent_images(dataset, name="mixed") -> tuple[list[dict], list[int]]:
    """PAIRS/{name}.parquet: val's pairs, with pairs naming an image the shards lack put first, in
    the middle and last (either side); every row's columns tell it apart. Its rows, and the row
    numbers of the pairs missing an image (by plain Python sets)."""
    rows = read_table(dataset / "pairs" / "val.parquet", "pairs").to_pylist()
    half = len(rows) // 2
    rows = ([dict(rows[0], hi_key="absent_1")] + rows[:half] + [dict(rows[1], lo_key="absent_2")] + rows[half:]
            + [dict(rows[2], hi_key="absent_3", lo_key="absent_4")])
    for i, row in enumerate(rows):
        row.update(user_id=f"user{i}", rule=f"rule{i % 3}", prob=0.95 + i / 1e4, hi_pop=1000.0 + i, lo_pop=float(i))
    write_table(pa.Table.from_pylist(rows), dataset / "pairs" / f"{name}.parquet", "pairs")
    ok = {r["key"] for r in read_table(dataset / "shards", "images").to_pylist() if r["status"] == "ok"}
    return rows, [i for i, r in enumerate(rows) if r["hi_key"] not in ok or r["lo_key"] not in ok]


EXTRA = ("user_id", "rule", "prob", "hi_pop", "lo_pop")


def extra_columns(rows: list[dict], dropped: list[int]) -> list[tuple]:
    return [tuple(r[c] for c in EXTRA) for i, r in enumerate(rows) if i not in dropped]


def test_train_and_eval_read_a_manifest_alike(dataset):
    """One reader: the trainer's pairs and eval's are the same pairs in the manifest's order, and
    eval's columns belong to the pair beside them (the trainer resolves cold, eval maps its cache)."""
    rows, dropped = manifest_with_absent_images(dataset)
    assert len(dropped) >= 3
    train = load_pairs(dataset / "pairs" / "mixed.parquet", dataset / "shards")
    evaluated = eval_pairs(dataset / "pairs" / "mixed.parquet", ShardIndex(dataset / "shards"))
    kept = [(r["hi_key"], r["lo_key"]) for i, r in enumerate(rows) if i not in dropped]
    assert resolved_pairs(train) == resolved_pairs(evaluated) == kept
    assert train.missing == evaluated.missing == len(dropped)
    assert list(zip(evaluated.user, evaluated.rule, evaluated.prob, evaluated.hi_pop, evaluated.lo_pop)) \
        == extra_columns(rows, dropped)
    assert set(evaluated.split) == {"mixed"}


def test_a_warm_cache_gives_what_a_cold_one_gave_extra_columns_included(dataset):
    rows, dropped = manifest_with_absent_images(dataset)
    path = dataset / "pairs" / "mixed.parquet"
    cold = resolve_pairs(path, ShardIndex(dataset / "shards"), columns=EXTRA)
    index = ShardIndex(dataset / "shards")
    warm = resolve_pairs(path, index, columns=EXTRA)
    assert "key_array" not in vars(index) and isinstance(warm.dropped, np.memmap)  # mapped, not resolved again
    uncached = resolve_pairs(path, ShardIndex(dataset / "shards"), cache=False, columns=EXTRA)
    for resolved in (cold, warm, uncached):
        assert resolved_pairs(resolved) == resolved_pairs(cold)
        assert list(resolved.dropped) == dropped
        assert list(zip(*(resolved.columns[c] for c in EXTRA))) == extra_columns(rows, dropped)
    assert resolve_pairs(path, index).columns == {}  # the trainer asks for none


def test_splits_that_share_images_merge_over_one_index(dataset):
    """eval's pairs folder: each file a split, the splits in file order; an image two of them
    use is one row of the merged index, and the dropped rows count through both files."""
    rows, dropped = manifest_with_absent_images(dataset, "a")
    val = read_table(dataset / "pairs" / "val.parquet", "pairs").to_pylist()  # every image also in `a`
    folder = dataset / "eval-pairs"
    folder.mkdir()
    for split in ("a", "val"):
        shutil.copy(dataset / "pairs" / f"{split}.parquet", folder / f"{split}.parquet")
    index = ShardIndex(dataset / "shards")
    parts = [resolve_pairs(folder / f"{split}.parquet", index, columns=("prob",)) for split in ("a", "val")]
    merged = merge_resolved(parts, index)
    expected = resolved_pairs(parts[0]) + resolved_pairs(parts[1])
    assert resolved_pairs(merged) == expected and len(expected) > len(parts[0].hi)
    assert len(merged.index) == len({key for pair in expected for key in pair})
    assert list(merged.dropped) == dropped + [len(rows) + i for i in parts[1].dropped]
    assert list(merged.columns["prob"]) == [r["prob"] for i, r in enumerate(rows) if i not in dropped] \
        + [r["prob"] for i, r in enumerate(val) if i not in parts[1].dropped]
    evaluated = eval_pairs(folder, index)
    assert resolved_pairs(evaluated) == expected
    assert list(evaluated.split) == ["a"] * len(parts[0].hi) + ["val"] * len(parts[1].hi)


def test_a_damaged_cache_is_rebuilt(dataset):
    load_pairs(dataset / "pairs" / "train.parquet", dataset / "shards")
    cache = dataset / "pairs" / ".train.resolved"
    cache.write_bytes(b"{not json\n" + cache.read_bytes())
    pairs = load_pairs(dataset / "pairs" / "train.parquet", dataset / "shards")
    assert resolved_pairs(pairs) == expected_pairs(dataset)


@pytest.mark.skipif("dali" not in BACKENDS, reason="DALI is not installed")
def test_dali_crops_follow_the_seed_so_ranks_differ_and_resume_repeats():
    encoded = [jpeg_bytes(a) for a in photo_arrays().values()]
    decode = make_decoder(DataConfig(backend="dali", decode_device="cpu", resize=160, crop=96), True,
                          torch.device("cpu"))
    rank0, rank1, rank0_again = decode(encoded, 11), decode(encoded, 12), decode(encoded, 11)
    assert torch.equal(rank0, rank0_again)
    assert not torch.equal(rank0, rank1)


def test_rows_of_few_keys_and_of_many_agree(train_dataset):
    """Two lookups (hash the index, or hash the few keys asked for) give the same rows."""
    index = ShardIndex(train_dataset / "shards")
    keys = list(index.keys)
    few = [keys[-1], "no-such-key", keys[0], keys[-1]]
    many = few + keys  # at least as many keys as the index: the other path
    assert list(index.rows(few)) == [len(keys) - 1, -1, 0, len(keys) - 1]
    assert list(index.rows(many)) == [len(keys) - 1, -1, 0, len(keys) - 1] + list(range(len(keys)))


def test_a_keys_partition_depends_on_its_own_bytes_only():
    """Short and long keys, at the start of the buffer or after others, sliced or not, either
    string type: the same key always lands in the same partition, and partitions are used."""
    keys = ["a", "ab", "1234567", "12345678", "123456789", "1000000000000000001_0", "x" * 95, "a"]
    keys += [f"{10**18 + i}_{i % 4}" for i in range(2000)]
    alone = [int(key_parts(pa.array([k]), 64)[0]) for k in keys]
    assert list(key_parts(pa.array(keys), 64)) == alone
    assert list(key_parts(pa.array(keys, pa.large_string()), 64)) == alone
    assert list(key_parts(pa.array(["zz"] + keys).slice(1), 64)) == alone
    assert list(key_parts(pa.chunked_array([keys[:5], keys[5:]]), 64)) == alone
    assert len(set(alone)) == 64


def test_rows_through_many_partitions_match_a_dictionary(tmp_path, monkeypatch):
    """A real shards folder of 20 000 rows split into 64 partitions: every present key finds its
    own row, absent ones -1, in any order and with repeats."""
    import shards.locate
    from cluster.benches.scale import make_scaleset

    monkeypatch.setattr(shards.locate, "ROWS_PER_PART", 300)
    root = make_scaleset(tmp_path, 20_000, 4, 100)
    index = ShardIndex(root / "shards")
    assert len(index.part_bounds) - 1 == 64
    row_of = {k: i for i, k in enumerate(index.keys)}
    rng = np.random.default_rng(0)
    asked = list(rng.choice(index.keys, 30_000)) + ["1000000000000000000_1", "nope"] * 10
    rng.shuffle(asked)
    assert list(index.rows(asked)) == [row_of.get(k, -1) for k in asked]
    ok = [r for r in read_table(root / "shards", "images").to_pylist() if r["status"] == "ok"]
    assert {index.key(i): (index.locate_row(i).shard, index.locate_row(i).offset) for i in range(len(index))} \
        == {r["key"]: (r["shard"], r["offset"]) for r in ok}


def test_background_resolution_writes_the_caches_and_reraises_errors(dataset):
    pairs = dataset / "pairs"
    resolve_in_background(dataset / "shards", [pairs / "train.parquet", pairs / "val.parquet"]).result()
    assert (pairs / ".train.resolved").is_file() and (pairs / ".val.resolved").is_file()
    index = ShardIndex(dataset / "shards")
    assert resolved_pairs(load_pairs(pairs / "train.parquet", index)) == expected_pairs(dataset)
    assert "key_array" not in vars(index)  # what the trainer then loads is the mapped cache
    (pairs / "val.parquet").write_bytes(b"not parquet")
    with pytest.raises(SchemaError, match="not a readable Parquet file"):
        resolve_in_background(dataset / "shards", [pairs / "val.parquet"]).result()


def test_a_locate_file_grouped_by_another_partition_function_is_rebuilt(tmp_path, monkeypatch):
    """An upgrade that changes key_parts must not send lookups to the wrong partitions."""
    import shards.locate
    from cluster.benches.scale import make_scaleset

    monkeypatch.setattr(shards.locate, "ROWS_PER_PART", 300)
    root = make_scaleset(tmp_path, 20_000, 4, 100)
    keys = list(ShardIndex(root / "shards").keys)
    original = shards.locate.key_parts
    monkeypatch.setattr(shards.locate, "key_parts", lambda k, parts: (original(k, parts) + 1) % parts)
    index = ShardIndex(root / "shards")
    row_of = {k: i for i, k in enumerate(index.keys)}
    asked = keys[:5000] + keys[-5000:]
    assert list(index.rows(asked)) == [row_of[k] for k in asked]
