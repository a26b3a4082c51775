import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards.schema import IMAGES, PAIRS, SCHEMA_VERSION, SchemaError, conform, read_table, write_table


def pairs_rows(n=3):
    return pa.table({"hi_key": [f"a{i}" for i in range(n)], "lo_key": [f"b{i}" for i in range(n)],
                     "hi_pop": [10.0] * n, "lo_pop": [1.0] * n, "prob": [0.99] * n, "user_id": ["u"] * n,
                     "rule": ["base"] * n, "days_apart": [1.5] * n})


def test_write_then_read_round_trips_with_version(tmp_path):
    path = write_table(pairs_rows(), tmp_path / "p.parquet", "pairs")
    raw = pq.read_table(path)
    assert raw.schema.metadata[b"iipa.schema"] == str(SCHEMA_VERSION).encode()
    assert read_table(path, "pairs").equals(conform(pairs_rows(), PAIRS, "pairs"))
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_missing_required_column_is_named():
    with pytest.raises(SchemaError, match="prob"):
        conform(pairs_rows().drop(["prob"]), PAIRS, "pairs")


def test_wrong_type_is_named():
    bad = pairs_rows().set_column(4, "prob", pa.array(["high", "low", "x"]))
    with pytest.raises(SchemaError, match="'prob'"):
        conform(bad, PAIRS, "pairs")


def test_nullable_columns_are_added_and_required_nulls_rejected():
    table = pa.table({"key": ["k"], "tweet_id": ["1"], "user_id": ["u"], "status": ["pending"],
                      "created_at": pa.array([0], pa.timestamp("s", tz="UTC"))})
    out = conform(table, IMAGES, "images")
    assert out.schema.names == IMAGES.names and out.column("likes").null_count == 1
    with pytest.raises(SchemaError, match="null"):
        conform(table.set_column(0, "key", pa.array([None], pa.string())), IMAGES, "images")


def test_other_schema_version_is_refused(tmp_path):
    table = conform(pairs_rows(), PAIRS, "pairs").replace_schema_metadata({b"iipa.schema": b"99"})
    pq.write_table(table, tmp_path / "p.parquet")
    with pytest.raises(SchemaError, match="version 99"):
        read_table(tmp_path / "p.parquet", "pairs")


def test_the_pair_builder_refuses_another_schema_version_too(tmp_path):
    """The pair builder reads the images table with its own column reader; the same check holds."""
    from datetime import datetime, timezone

    from shards.pairs.rows import read_images

    row = {"key": "1_0", "tweet_id": "1", "user_id": "u", "created_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
           "status": "pending", "url": "https://pbs.twimg.com/media/a.jpg", "retweets": 1, "likes": 2}
    table = conform(pa.Table.from_pylist([row]), IMAGES, "images").replace_schema_metadata({b"iipa.schema": b"99"})
    pq.write_table(table, tmp_path / "images.parquet")
    with pytest.raises(SchemaError, match="version 99"):
        read_images(tmp_path / "images.parquet")
