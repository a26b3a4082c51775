"""Deduplication in bounded memory: with budgets tiny enough that every partition is split again,
the images table and its summary are those of a run that held everything at once, each tweet
keeps its latest counts, and no partition read for deduplication holds more rows than the budget."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from ingest import archive, spill
from ingest.archive import ArchiveConfig, ingest_archive
from shards.schema import read_table

TWEETS = 300
USERS = 37


def write_archive(path, tweets, retrieved_at, extra_likes, page=25):
    """A twarc2 archive of the given tweet numbers, each with one or two photos."""
    lines = []
    for start in range(0, len(tweets), page):
        data, media = [], []
        for n in tweets[start:start + page]:
            keys = [f"3_{n}{i}" for i in range(1 + n % 2)]
            data.append({"id": str(1_000_000 + n), "author_id": str(n % USERS), "text": f"photo {n} #tag",
                         "created_at": "2026-01-01T00:00:00.000Z", "attachments": {"media_keys": keys},
                         "public_metrics": {"retweet_count": n, "like_count": n + extra_likes,
                                            "reply_count": 0, "quote_count": 0}})
            media += [{"media_key": k, "type": "photo", "url": f"https://pbs.twimg.com/media/{k}.jpg"} for k in keys]
        lines.append(json.dumps({"data": data, "includes": {"media": media}, "__twarc": {"retrieved_at": retrieved_at}}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def archives(tmp_path):
    """The later counts are read first, so the times decide, not the reading order; a third
    archive has the first one's time, so there the copy read last wins."""
    every = list(range(TWEETS))
    later = write_archive(tmp_path / "later.jsonl", every[::2], "2026-02-01T00:00:00+00:00", 1000)
    first = write_archive(tmp_path / "first.jsonl", every, "2026-01-15T00:00:00+00:00", 0)
    again = write_archive(tmp_path / "again.jsonl", every[1::3], "2026-01-15T00:00:00+00:00", 5000)
    return [later, first, again]


def expected_likes(n: int) -> int:
    return n + (1000 if n % 2 == 0 else 5000 if n % 3 == 1 else 0)


def test_split_partitions_keep_latest_counts_within_the_budget(archives, tmp_path, monkeypatch):
    whole = ingest_archive(ArchiveConfig(archives, tmp_path / "whole.parquet"))

    budget, held, splits = 40, [], []
    monkeypatch.setattr(spill, "PARTITION_ROWS", budget)
    monkeypatch.setattr(spill, "GATHER_ROWS", 16)
    monkeypatch.setattr(spill, "MAX_PARTS", 3)
    monkeypatch.setattr(archive, "PARTITION_BYTES", 1)
    monkeypatch.setattr(archive, "ROW_GROUP_ROWS", 25)
    read_columns, split = spill.read_columns, spill.Spill.split

    def counted_read(path, names):
        table = read_columns(path, names)
        if "key" in names:  # the narrow columns deduplication holds (not the user ids counted)
            held.append(table.num_rows)
        return table

    def counted_split(self, path, rows):
        splits.append(rows)
        return split(self, path, rows)

    monkeypatch.setattr(archive, "read_columns", counted_read)
    monkeypatch.setattr(spill.Spill, "split", counted_split)
    small = ingest_archive(ArchiveConfig(archives, tmp_path / "small.parquet"))

    assert splits and max(splits) > budget  # partitions did outgrow the budget and were split
    assert held and max(held) <= budget  # what deduplication holds stays within it
    for name in ("images", "tweets", "users", "rows_read", "duplicates"):
        assert small[name] == whole[name], name
    assert whole["tweets"] == TWEETS and whole["users"] == USERS
    a, b = read_table(tmp_path / "whole.parquet", "images"), read_table(tmp_path / "small.parquet", "images")
    assert sorted(a.to_pylist(), key=lambda r: r["key"]) == sorted(b.to_pylist(), key=lambda r: r["key"])
    likes = dict(zip(b.column("tweet_id").to_pylist(), b.column("likes").to_pylist()))
    assert likes == {str(1_000_000 + n): expected_likes(n) for n in range(TWEETS)}
    assert len(set(b.column("key").to_pylist())) == b.num_rows
    assert not list(tmp_path.glob(".ingest-*"))  # the spill is gone


def test_one_tweet_too_many_times_to_split_still_ends(tmp_path, monkeypatch):
    """Every copy of a tweet hashes alike, so splitting cannot shrink its partition: after a few
    tries the partition is read as it is, and the latest copy still wins."""
    paths = [write_archive(tmp_path / f"copy{i}.jsonl", [7], f"2026-01-{i + 1:02d}T00:00:00+00:00", i * 10)
             for i in range(12)]
    monkeypatch.setattr(spill, "PARTITION_ROWS", 4)
    monkeypatch.setattr(spill, "GATHER_ROWS", 2)
    summary = ingest_archive(ArchiveConfig(paths[::-1], tmp_path / "one.parquet"))
    table = read_table(tmp_path / "one.parquet", "images")
    assert summary["images"] == table.num_rows == 2 and summary["duplicates"] == 22
    assert set(table.column("likes").to_pylist()) == {7 + 110}


def test_partition_of_spreads_ids_and_a_new_salt_spreads_a_partition_again():
    ids = pa.array([str(1_800_000_000_000_000_000 + n * 7919) for n in range(40_000)])
    first = spill.partition_of(ids, 4)
    assert np.bincount(first).min() > 9_000
    assert np.array_equal(first, spill.partition_of(ids, 4))  # a function of the id alone
    again = spill.partition_of(ids.filter(pa.array(first == 2)), 4, salt=1)
    assert np.bincount(again, minlength=4).min() > 2_000
    words = pa.array([f"id-{n}" for n in range(4_000)])  # not numbers: hashed another way, still spread
    assert np.bincount(spill.partition_of(words, 4)).min() > 800


def test_winners_keep_the_latest_time_then_the_last_read():
    at = pa.array([2, 1, 2, None, 1], pa.timestamp("us", tz="UTC"))
    keys = pa.table({"key": ["a", "a", "a", "b", "b"], "collected_at": at, spill.SEQ: pa.array([0, 1, 2, 3, 4], pa.int64())})
    assert spill.winners(keys).tolist() == [2, 4]
    assert spill.winners(keys.slice(2, 2)) is None  # no key repeats
