import itertools
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pytest

from shards.console import UserError
from shards.pairs import PairsConfig, build_pairs
from shards.pairs.stats import summary
from shards.schema import read_table, write_table

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def random_images(seed: int, users=4, per_user=12, retweets=5) -> pa.Table:
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
                "retweets": int(rng.pareto(1.2) * retweets), "likes": int(rng.pareto(1.2) * 20),
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
    expected = brute_force(images, config, extra=False)
    assert got == expected and len(expected) > 0  # the retweet rule labels pairs, it removes none
    carrying = {p for p, rule in zip(zip(table.column("hi_key").to_pylist(), table.column("lo_key").to_pylist()),
                                     table.column("rule").to_pylist()) if rule == "retweets"}
    assert carrying == (brute_force(images, config, extra=True) if share == 1.0 else set())
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


def carriers(table: pa.Table) -> set[tuple[str, str]]:
    rule = np.array(table.column("rule").to_pylist()) == "retweets"
    return set(zip(np.array(table.column("hi_key").to_pylist())[rule], np.array(table.column("lo_key").to_pylist())[rule]))


@pytest.mark.parametrize("share", [1 / 3, 0.1, 0.5])
def test_the_share_of_output_pairs_carrying_the_retweet_rule_is_the_share_asked(tmp_path, share):
    """Selected pairs (per-user cap, split clashes dropped): the share is of what is written."""
    images = random_images(9, users=8, per_user=20, retweets=40)
    write_table(images, tmp_path / "images.parquet", "images")
    config = PairsConfig(images=tmp_path / "images.parquet", out=tmp_path / "p", extra_share=share,
                         max_pairs_per_user=12, split="pair")
    stats = build_pairs(config)
    pairs, table = emitted(tmp_path / "p")
    by_key = {r["key"]: r for r in images.to_pylist()}
    passing = {(a, b) for a, b in pairs if by_key[a]["retweets"] != by_key[b]["retweets"]
               and max(by_key[a]["retweets"], by_key[b]["retweets"]) > 20}
    carrying = carriers(table)
    assert len(passing) > share * len(pairs) + 1  # enough pass: no shortfall
    assert carrying <= passing and abs(len(carrying) - share * len(pairs)) <= 0.5
    assert stats["retweet_rule"] == {"share_asked": share, "share_reached": len(carrying) / len(pairs),
                                     "pairs_asked": len(carrying), "pairs_carrying": len(carrying),
                                     "pairs_passing": len(passing), "shortfall": 0}
    assert stats["rules"]["retweets"]["pairs"] == len(carrying)
    build_pairs(PairsConfig(**{**config.__dict__, "out": tmp_path / "again"}))
    assert carriers(emitted(tmp_path / "again")[1]) == carrying  # the same seed draws the same pairs
    build_pairs(PairsConfig(**{**config.__dict__, "out": tmp_path / "seed1", "seed": 1}))
    assert carriers(emitted(tmp_path / "seed1")[1]) != carrying


def test_too_few_pairs_pass_the_retweet_rule_all_carry_it_and_the_shortfall_is_said(tmp_path):
    images = random_images(9, users=8, per_user=20)
    write_table(images, tmp_path / "images.parquet", "images")
    stats = build_pairs(PairsConfig(images=tmp_path / "images.parquet", out=tmp_path / "p", all_candidates=True,
                                    extra_share=0.9, plot=False))
    pairs, table = emitted(tmp_path / "p")
    passing = brute_force(images, PairsConfig(images=Path(), out=Path()), extra=True)
    assert 0 < len(passing) < 0.9 * len(pairs) and carriers(table) == passing
    share = stats["retweet_rule"]
    assert share["shortfall"] == round(0.9 * len(pairs)) - len(passing) and share["pairs_carrying"] == len(passing)
    assert share["share_reached"] == pytest.approx(len(passing) / len(pairs))
    assert f"short by {share['shortfall']} pairs" in summary(stats)


@pytest.mark.parametrize("bad", [dict(threshold=0.3), dict(sigma=0), dict(split_shares=(0.5, 0.6, 0.1)),
                                 dict(max_days=-1)])
def test_nonsense_options_are_refused(tmp_path, bad):
    with pytest.raises(UserError):
        PairsConfig(images=tmp_path, out=tmp_path, **bad).validate()
