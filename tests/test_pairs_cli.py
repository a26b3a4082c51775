"""`iipa pairs build` as a user runs it: the summary, stats.json, the plot, and one-line errors."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.conftest import run_iipa

from shards.schema import write_table

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def small_images(users=6) -> pa.Table:
    """Each user posts a photo a day for 8 days; odd days are five times as popular, every post
    has #cats, every third has a mention, every fourth no caption."""
    rows = []
    for u in range(users):
        for d in range(8):
            n = u * 8 + d
            rows.append({"key": f"{n}_0", "tweet_id": str(n), "media_key": f"3_{n}", "user_id": f"u{u}",
                         "created_at": T0 + timedelta(days=d, hours=u), "collected_at": T0 + timedelta(days=60),
                         "hashtags": ["cats"], "mentions": ["friend"] if n % 3 == 0 else [],
                         "caption_words": [] if n % 4 == 0 else ["a", "cat"], "retweets": 30 if d % 2 else 2,
                         "likes": 500 if d % 2 else 100, "media_count": 1, "status": "pending"})
    return pa.Table.from_pylist(rows)


def test_build_prints_table1_and_writes_stats_and_plot(tmp_path):
    write_table(small_images(), tmp_path / "images.parquet", "images")
    done = run_iipa("pairs", "build", "--images", str(tmp_path / "images.parquet"), "--out", str(tmp_path / "p"),
                    "--split-shares", "0.5,0.25,0.25", "--seed", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    counts = json.loads(lines[-1])
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    # Every odd day beats every even day of the same user (gap ln(1+171)−ln(1+31.4) = 1.67); 4 × 4 = 16
    # pairs per user; every pair passes the retweet rule (30 vs 2, 30 > 20), a third of them carry it.
    assert counts["pairs"] == stats["pairs"] == 6 * 16
    assert sum(counts[s] for s in ("train", "val", "test")) == 96
    for name in ("train", "val", "test", "all", "rule base", "rule retweets"):
        assert any(line.startswith(name) for line in lines), name
    assert stats["all"]["mean_likes"] == 300 and stats["all"]["mean_retweets"] == 16
    assert stats["all"]["share_no_caption"] == pytest.approx(12 / 48)
    assert stats["all"]["share_no_mention"] == pytest.approx(32 / 48)
    assert stats["all"]["share_no_hashtag"] == 0
    assert stats["rules"]["retweets"]["pairs"] == 32 and stats["retweet_rule"]["share_reached"] == 1 / 3
    assert stats["rules"]["retweets"]["pairs"] + stats["rules"]["base"]["pairs"] == 96
    assert sum(v["users"] for v in stats["splits"].values()) == 6
    days = pq.read_table(tmp_path / "p" / "train.parquet").column("days_apart").to_pylist()
    assert set(days) <= {1.0, 3.0, 5.0, 7.0}
    assert (tmp_path / "p" / "pairs.png").stat().st_size > 1000
    assert json.loads((tmp_path / "p" / "config.json").read_text())["seed"] == 3


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop_columns(["user_id"]), "missing required column 'user_id'"),
    (lambda t: t.set_column(t.schema.get_field_index("likes"), "likes", pa.array(["many"] * t.num_rows)),
     "column 'likes' is string"),
    (lambda t: t.set_column(t.schema.get_field_index("retweets"), "retweets", pa.array([-1] * t.num_rows)),
     "negative counts"),
])
def test_bad_tables_give_one_line_and_status_2(tmp_path, change, message):
    table = change(small_images(users=1))
    pq.write_table(table, tmp_path / "images.parquet")
    done = run_iipa("pairs", "build", "--images", str(tmp_path / "images.parquet"), "--out", str(tmp_path / "p"))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "p" / "train.parquet").exists()


@pytest.mark.parametrize("flags, message", [
    (["--max-days", "-2"], "--max-days"), (["--threshold", "1"], "--threshold"), (["--sigma", "0"], "--sigma"),
    (["--min-likes", "-5"], "--min-likes"), (["--split-shares", "0.9,0.2,0"], "--split-shares"),
    (["--weights", "0,0"], "--weights"), (["--max-days", "nan"], "finite"), (["--extra-share", "2"], "--extra-share"),
])
def test_nonsense_flags_give_one_line_and_status_2(tmp_path, flags, message):
    write_table(small_images(users=1), tmp_path / "images.parquet", "images")
    done = run_iipa("pairs", "build", "--images", str(tmp_path / "images.parquet"), "--out", str(tmp_path / "p"),
                    *flags)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_ding_flags_override_the_preset(tmp_path):
    write_table(small_images(), tmp_path / "images.parquet", "images")
    args = ["pairs", "build", "--images", str(tmp_path / "images.parquet"), "--preset", "ding", "--no-plot"]
    # ding: identical mentions needed, ≥ 50 likes, each image once: at most 4 pairs per user.
    done = run_iipa(*args, "--out", str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr
    strict = json.loads(done.stdout.strip().splitlines()[-1])["pairs"]
    loose = run_iipa(*args, "--out", str(tmp_path / "e"), "--no-identical-tags", "--no-one-pair-per-image")
    assert loose.returncode == 0, loose.stderr
    assert 0 < strict <= 6 * 4 < json.loads(loose.stdout.strip().splitlines()[-1])["pairs"] == 96
    assert not (tmp_path / "d" / "pairs.png").exists()


def test_bench_pairs_quick_agrees_with_duckdb(tmp_path):
    pytest.importorskip("duckdb")
    done = run_iipa("bench", "pairs", "--quick", "--workdir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same_pairs"] and result["pairs"] > 100
    assert result["check"]["carrying_retweet_rule"] > 0  # the retweet-rule share was exercised
    assert {"stage", "unit", "value", "baseline", "baseline_value", "ratio"} <= set(result)
