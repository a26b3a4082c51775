"""`iipa bench pairs`: the PDIP builder on 10 M photos of 500 000 users against a DuckDB self-join.

The generated images table has realistic shape: photos per user heavy-tailed (log-normal,
capped), posting in bursts (a third of the gaps are minutes, the rest days, scaled to each
user's rate over a year), one to four photos per tweet, hashtags mostly from each user's few
favourites, mentions and caption lengths like real tweets, and heavy-tailed counts (a log-normal
popularity per user times per-post noise; retweets a small fraction of likes). It is written
once under the workdir and reused.

Both methods run in a fresh process (time and peak RSS of that process): `build_pairs` with the
twitter preset and `--all-candidates`, and the same rules as one DuckDB SQL self-join. The two
pair sets are then compared exactly: DuckDB returns every pair of the base rules with whether
it passes the retweet rule; ours must be the same set, and the pairs ours say carry the retweet
rule must pass it by DuckDB's reckoning and be the share asked (or all that pass, if fewer do).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.bench import BenchConfig, run_isolated
from shards.console import UserError
# Imported here, not in the timed functions: `run_isolated` times the call, not the imports.
from shards.pairs import PairsConfig, build_pairs
from shards.schema import write_table

try:
    import duckdb  # the baseline: a bench-only dependency
except ImportError:
    duckdb = None

GENERATOR_VERSION = 1
START_US = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
YEAR_US = 365 * 86_400 * 1_000_000


def _strings(prefix: str, ids: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(ids), pa.string()), "")


def _lists(values: pa.Array, counts: np.ndarray) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _zipf_ids(rng, n: int, vocab: int, a: float = 1.3) -> np.ndarray:
    return (rng.zipf(a, n) - 1) % vocab


def generate(photos: int, users: int, seed: int = 0) -> pa.Table:
    """An images table of about `photos` rows from `users` users (see the module docstring)."""
    rng = np.random.default_rng(seed)
    media = rng.choice([1, 2, 3, 4], size=int(photos / 1.45) + users, p=[0.75, 0.12, 0.06, 0.07])
    tweets = int(np.searchsorted(np.cumsum(media), photos) + 1)
    media = media[:tweets]
    weight = np.minimum(rng.lognormal(0.0, 1.1, users), 150.0)
    author = np.sort(rng.choice(users, size=tweets, p=weight / weight.sum()))
    per_user = np.bincount(author, minlength=users)
    first = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    # Bursts: a third of the gaps are minutes (one session), the rest follow the user's rate.
    mean_gap = YEAR_US / np.maximum(per_user, 1)
    gap = np.where(rng.random(tweets) < 1 / 3, rng.exponential(600e6, tweets),
                   rng.exponential(1.5 * mean_gap[author]))
    gap[first[per_user > 0]] = rng.uniform(0, YEAR_US / 2, int((per_user > 0).sum()))
    within = np.cumsum(gap) - np.repeat(np.cumsum(gap)[first] - gap[first], per_user)
    created = (START_US + within).astype(np.int64)
    base = rng.normal(3.0, 1.6, users)
    likes = np.floor(np.exp(base[author] + rng.normal(0, 0.9, tweets))).astype(np.int64)
    retweets = np.floor(likes * np.exp(rng.normal(-2.5, 0.9, tweets))).astype(np.int64)
    n_tags = rng.choice([0, 1, 2, 3, 5, 8], size=tweets, p=[0.42, 0.25, 0.15, 0.1, 0.06, 0.02])
    slot_user = np.repeat(author, n_tags)
    favourite = (slot_user * 7919 + rng.integers(0, 5, len(slot_user)) * 104_729) % 200_000
    tag_ids = np.where(rng.random(len(slot_user)) < 0.8, favourite, _zipf_ids(rng, len(slot_user), 200_000))
    n_mentions = rng.choice([0, 1, 2], size=tweets, p=[0.7, 0.25, 0.05])
    n_words = np.where(rng.random(tweets) < 0.15, 0, np.minimum(rng.poisson(8, tweets), 40))
    tweet_ids = 1_900_000_000_000_000_000 + np.arange(tweets) * 7919
    tweet = pa.table({
        "tweet_id": _strings("", tweet_ids), "user_id": _strings("", 10_000_000 + author),
        "created_at": pa.array(created, pa.timestamp("us", tz="UTC")),
        "hashtags": _lists(_strings("tag", tag_ids), n_tags),
        "mentions": _lists(_strings("user", _zipf_ids(rng, int(n_mentions.sum()), users)), n_mentions),
        "caption_words": _lists(_strings("w", _zipf_ids(rng, int(n_words.sum()), 5000)), n_words),
        "retweets": retweets, "likes": likes, "media_count": media.astype(np.int32)})
    of_photo = np.repeat(np.arange(tweets), media)[:photos]
    index = np.arange(len(of_photo)) - np.repeat(np.cumsum(media) - media, media)[:photos]
    table = tweet.take(pa.array(of_photo))
    key = pc.binary_join_element_wise(table.column("tweet_id"), pc.cast(pa.array(index), pa.string()), "_")
    media_key = pc.binary_join_element_wise("3_", key, "")
    return (table.append_column("key", key).append_column("media_key", media_key)
            .append_column("url", pc.binary_join_element_wise("https://pbs.twimg.com/media/", key, ".jpg", ""))
            .append_column("collected_at", pa.array(np.full(len(key), START_US + YEAR_US + 86_400_000_000 * 40),
                                                    pa.timestamp("us", tz="UTC")))
            .append_column("status", pa.array(["pending"] * len(key))))


def images_for(config: BenchConfig) -> tuple[Path, int, int]:
    photos, users = config.pick((20_000, 1_000), (1_000_000, 50_000), (10_000_000, 500_000))
    path = Path(config.workdir) / f"images-{photos}-{users}-v{GENERATOR_VERSION}.parquet"
    if not path.exists():
        write_table(generate(photos, users), path, "images")
    return path, photos, users


def run_iipa(images: str, out: str) -> dict:
    """The builder under test: twitter preset, every candidate, no plot."""
    stats = build_pairs(PairsConfig(images=Path(images), out=Path(out), all_candidates=True, plot=False))
    return {"pairs": stats["pairs"], "candidates": stats["candidates"], "retweet_rule": stats["retweet_rule"]}


def duckdb_sql(images: str, out: str, min_gap: float, window_us: int) -> str:
    """The twitter preset's rules as one self-join; each pair once, hi first, with the retweet rule."""
    return f"""
    COPY (
      WITH r AS (
        SELECT key, user_id, epoch_us(created_at) AS t, coalesce(media_key, url, key) AS photo, retweets,
               ln(1 + 0.7 * retweets + 0.3 * likes) AS s, coalesce(len(caption_words), 0) AS words,
               list_distinct(coalesce(hashtags, [])) AS tags
        FROM read_parquet('{images}')
        WHERE status IN ('pending', 'ok') AND retweets IS NOT NULL AND likes IS NOT NULL)
      SELECT CASE WHEN a.s > b.s THEN a.key ELSE b.key END AS hi_key,
             CASE WHEN a.s > b.s THEN b.key ELSE a.key END AS lo_key,
             a.retweets <> b.retweets AND greatest(a.retweets, b.retweets) > 20 AS retweet_rule
      FROM r a JOIN r b ON a.user_id = b.user_id AND b.t BETWEEN a.t AND a.t + {window_us}
                        AND (a.t < b.t OR a.key < b.key)
      WHERE abs(a.s - b.s) >= {min_gap!r} AND a.photo <> b.photo AND abs(a.words - b.words) <= 5
        AND len(list_intersect(a.tags, b.tags)) >= 1
    ) TO '{out}' (FORMAT parquet)"""


def run_duckdb(images: str, out: str) -> dict:
    config = PairsConfig(images=Path(images), out=Path(out))
    con = duckdb.connect()
    con.execute(duckdb_sql(images, out, config.min_gap(), int(config.max_days * 86_400 * 1_000_000)))
    return {"pairs": con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]}


def check_same_pairs(ours: str, theirs: str, out: str) -> dict:
    """Exact comparison: ours = DuckDB's pairs; ours carrying the retweet rule pass it in DuckDB and
    are the share asked of all pairs (rounded), or every pair that passes where fewer do."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW theirs AS SELECT hi_key, lo_key, retweet_rule FROM read_parquet('{theirs}')")
    con.execute(f"CREATE VIEW ours AS SELECT hi_key, lo_key, rule FROM read_parquet('{ours}/*.parquet')")
    pairs = "SELECT hi_key, lo_key FROM"
    missing = con.execute(f"SELECT count(*) FROM ({pairs} theirs EXCEPT ALL {pairs} ours)").fetchone()[0]
    extra = con.execute(f"SELECT count(*) FROM ({pairs} ours EXCEPT ALL {pairs} theirs)").fetchone()[0]
    total, passing = con.execute("SELECT count(*), count(*) FILTER (retweet_rule) FROM theirs").fetchone()
    carrying, carrying_failing = con.execute(
        "SELECT count(*), count(*) FILTER (NOT t.retweet_rule) FROM ours o JOIN theirs t USING (hi_key, lo_key) "
        "WHERE o.rule = 'retweets'").fetchone()
    share = PairsConfig(images=Path(), out=Path()).extra_share
    return {"missing_from_iipa": int(missing), "extra_in_iipa": int(extra), "retweet_rule_passing": int(passing),
            "carrying_retweet_rule": int(carrying), "carrying_but_failing": int(carrying_failing),
            "carrying_as_asked": int(carrying) == min(int(passing), int(np.floor(share * total + 0.5)))}


def run(config: BenchConfig) -> dict:
    if duckdb is None:
        raise UserError("iipa bench pairs needs duckdb for its baseline: pip install duckdb")
    images, photos, users = images_for(config)
    work = Path(config.workdir)
    ours = run_isolated("cluster.benches.pairs:run_iipa", images=str(images), out=str(work / "iipa-pairs"))
    theirs = run_isolated("cluster.benches.pairs:run_duckdb", images=str(images), out=str(work / "duckdb-pairs.parquet"))
    check = run_isolated("cluster.benches.pairs:check_same_pairs", ours=str(work / "iipa-pairs"),
                         theirs=str(work / "duckdb-pairs.parquet"), out=str(work))
    same = (check["missing_from_iipa"] == 0 and check["extra_in_iipa"] == 0 and check["carrying_but_failing"] == 0
            and check["carrying_as_asked"])
    if not same:
        raise RuntimeError(f"iipa and DuckDB disagree on the pair set: {check}")
    return {
        "stage": "pairs", "unit": "photos/s", "value": photos / ours["seconds"],
        "baseline": "duckdb self-join", "baseline_value": photos / theirs["seconds"],
        "ratio": theirs["seconds"] / ours["seconds"],
        "photos": photos, "users": users, "pairs": ours["pairs"], "candidates": ours["candidates"],
        "seconds": round(ours["seconds"], 2), "baseline_seconds": round(theirs["seconds"], 2),
        "peak_rss_mb": round(ours["peak_rss_mb"]), "baseline_peak_rss_mb": round(theirs["peak_rss_mb"]),
        "same_pairs": same, "check": check, "quick": config.quick,
        "targets": {"seconds": 60, "peak_rss_mb": 8 * 1024, "met": ours["seconds"] < 60
                    and ours["peak_rss_mb"] < 8 * 1024 and ours["seconds"] < theirs["seconds"]},
        "input_mb": round(images.stat().st_size / 2**20, 1),
    }
