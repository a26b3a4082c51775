import itertools
import math
from datetime import datetime, timedelta, timezone
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pytest

from shards.console import UserError
from shards.pairs import PairsConfig, build_pairs
from shards.schema import read_table, write_table

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def random_images(seed: int, users=4, per_user=12) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for t in range(per_user):
            n_words = int(rng.integers(0, 10))
            rows.append({
                "key": f"{u}_{t}", "tweet_id": f"{u}{t:03d}", "media_key": f"3_{u}_{t}", "user_id": f"u{u}",
                "created_at": T0 + timedelta(days=float(rng.uniform(0, 30))),
                "collected_at": T0 + timedelta(days=60), "text": "",
                "hashtags": list(rng.choice(["a", "b", "c", "d"], size=int(rng.integers(0, 3)), replace=False)),
                "mentions": [], "caption_words": ["w"] * n_words,
                "retweets": int(rng.pareto(1.2) * 5), "likes": int(rng.pareto(1.2) * 20),
                "media_count": 1, "status": "pending"})
    return pa.Table.from_pylist(rows)


def brute_force(table: pa.Table, c: PairsConfig, extra: bool) -> set[tuple[str, str]]:
    """Every rule of the twitter preset, pair by pair, written the obvious way."""
    rows = table.to_pylist()
    gap = math.sqrt(2) * c.sigma * NormalDist().inv_cdf(c.threshold)
    found = set()
    for a, b in itertools.combinations(rows, 2):
        if a["user_id"] != b["user_id"]:
            continue
        if abs((a["created_at"] - b["created_at"]).total_seconds()) > c.max_days * 86400:
            continue
        if abs(len(a["caption_words"]) - len(b["caption_words"])) > c.max_caption_diff:
            continue
        if len(set(a["hashtags"]) & set(b["hashtags"])) < c.min_common_hashtags:
            continue
        s_a = math.log1p(0.7 * a["retweets"] + 0.3 * a["likes"])
        s_b = math.log1p(0.7 * b["retweets"] + 0.3 * b["likes"])
        if abs(s_a - s_b) < gap:
            continue
        if extra and not (a["retweets"] != b["retweets"] and max(a["retweets"], b["retweets"]) > 20):
            continue
        hi, lo = (a, b) if s_a > s_b else (b, a)
        found.add((hi["key"], lo["key"]))
    return found


def emitted(out) -> tuple[set[tuple[str, str]], pa.Table]:
    tables = [read_table(out / f"{s}.parquet", "pairs") for s in ("train", "val", "test")]
    table = pa.concat_tables(tables)
    return set(zip(table.column("hi_key").to_pylist(), table.column("lo_key").to_pylist())), table


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("share", [0.0, 1.0])
def test_all_candidates_equals_brute_force(tmp_path, seed, share):
    images = random_images(seed)
    write_table(images, tmp_path / "images.parquet", "images")
    config = PairsConfig(images=tmp_path / "images.parquet", out=tmp_path / "pairs", all_candidates=True,
                         extra_share=share, split_shares=(0.5, 0.25, 0.25))
    build_pairs(config)
    got, table = emitted(tmp_path / "pairs")
    expected = brute_force(images, config, extra=share == 1.0)
    assert got == expected and len(expected) > 0
    assert all(p >= 0.95 for p in table.column("prob").to_pylist())
    assert all(d <= 10 for d in table.column("days_apart").to_pylist())


def test_user_split_keeps_users_apart_and_is_deterministic(tmp_path):
    write_table(random_images(5, users=12), tmp_path / "images.parquet", "images")
    users = {}
    for run in ("a", "b"):
        build_pairs(PairsConfig(images=tmp_path / "images.parquet", out=tmp_path / run, seed=7))
        users[run] = {s: set(read_table(tmp_path / run / f"{s}.parquet", "pairs").column("user_id").to_pylist())
                      for s in ("train", "val", "test")}
        for x, y in itertools.combinations(("train", "val", "test"), 2):
            assert not users[run][x] & users[run][y]
    assert users["a"] == users["b"]
    assert (tmp_path / "a" / "train.parquet").read_bytes() == (tmp_path / "b" / "train.parquet").read_bytes()
    assert (tmp_path / "a" / "pairs.png").stat().st_size > 1000


def test_share_of_pairs_under_the_retweet_rule(tmp_path):
    write_table(random_images(9, users=8, per_user=20), tmp_path / "images.parquet", "images")
    build_pairs(PairsConfig(images=tmp_path / "images.parquet", out=tmp_path / "p", all_candidates=True))
    _, table = emitted(tmp_path / "p")
    images = {r["key"]: r for r in random_images(9, users=8, per_user=20).to_pylist()}
    rules = table.column("rule").to_pylist()
    assert {"base", "retweets"} <= set(rules)
    for hi, lo, rule in zip(table.column("hi_key").to_pylist(), table.column("lo_key").to_pylist(), rules):
        if rule == "retweets":
            rt = images[hi]["retweets"], images[lo]["retweets"]
            assert rt[0] != rt[1] and max(rt) > 20


@pytest.mark.parametrize("bad", [dict(threshold=0.3), dict(sigma=0), dict(split_shares=(0.5, 0.6, 0.1)),
                                 dict(max_days=-1)])
def test_nonsense_options_are_refused(tmp_path, bad):
    with pytest.raises(UserError):
        PairsConfig(images=tmp_path, out=tmp_path, **bad).validate()
