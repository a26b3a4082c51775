"""The PDIP index builder: popularity-discriminable image pairs from the images table.

Candidates are found by a band self-join: rows sorted by (user, time), then for each offset k
the rows i and i+k are compared as whole numpy arrays, stopping once no pair at that offset is
within the time window. No Python loop runs per row, so it scales to tens of millions of rows.
A pair is kept when IIPA's Thurstone test P(hi ≻ lo) = Φ((S_hi − S_lo)/(√2σ)) ≥ T holds on
S = ln(1 + p), p = w_r·retweets + w_l·likes, and every rule of the preset passes.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.console import UserError
from shards.schema import OK, PENDING, read_table, write_json, write_table

SPLITS = ("train", "val", "test")
DAY_US = 86_400 * 1_000_000


@dataclass
class PairsConfig:
    """Options of `iipa pairs build`; every threshold of a preset is a field."""

    images: Path
    """Images table (Parquet file or folder)."""
    out: Path
    """Folder for {train,val,test}.parquet, stats.json and config.json."""
    preset: str = "twitter"
    """`twitter` (the Twitter paper's rules) or `ding` (IIPA's Instagram rules)."""
    weights: tuple[float, float] = (0.7, 0.3)
    """Popularity p = w_r · retweets + w_l · likes."""
    sigma: float = 0.3
    """σ of the Thurstone model on S = ln(1 + p)."""
    threshold: float = 0.95
    """Keep a pair when P(hi ≻ lo) ≥ this."""
    max_days: float = 10.0
    """Posted at most this many days apart."""
    max_caption_diff: int | None = 5
    """twitter: caption lengths (words) differ by at most this."""
    min_common_hashtags: int = 1
    """twitter: hashtags in common."""
    extra_share: float = 1 / 3
    """twitter: share of pairs that must also pass the retweet rule."""
    extra_min_retweets: int = 20
    """twitter retweet rule: counts differ and one tweet has more than this."""
    identical_tags: bool = False
    """ding: identical hashtags and mentions."""
    max_caption_words: int | None = None
    """ding: at most this many caption words."""
    single_photo: bool = False
    """ding: single-photo posts only."""
    min_likes: int = 0
    """ding: at least this many likes."""
    min_age_days: float = 0.0
    """ding: both posts at least this old when counted."""
    one_pair_per_image: bool = False
    """ding: each image in at most one pair."""
    max_pairs_per_user: int | None = 1000
    """Cap per user, so prolific users do not dominate (None: no cap)."""
    all_candidates: bool = False
    """Emit every pair that passes the rules (no cap, no one-per-image draw)."""
    split: str = "user"
    """`user`: no user in two splits; `pair`: random pair split as IIPA did."""
    split_shares: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Shares of train, val, test."""
    seed: int = 0
    """Seed of every draw: same seed, same pairs and splits."""

    @classmethod
    def preset_defaults(cls, preset: str) -> dict:
        """The thresholds a preset sets; flags given by the user override them."""
        if preset == "twitter":
            return {}
        if preset == "ding":
            return dict(max_caption_diff=None, min_common_hashtags=0, extra_share=0.0, identical_tags=True,
                        max_caption_words=6, single_photo=True, min_likes=50, min_age_days=30.0,
                        one_pair_per_image=True, max_pairs_per_user=None)
        raise UserError(f"unknown preset {preset!r}; choose twitter or ding")

    def validate(self) -> None:
        """Reject options that make no sense before any work starts."""
        if not 0.5 < self.threshold < 1:
            raise UserError(f"--threshold must be in (0.5, 1), got {self.threshold}")
        if self.sigma <= 0 or self.max_days < 0 or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise UserError("--sigma must be > 0, --max-days ≥ 0 and --weights non-negative, not both 0")
        if not 0 <= self.extra_share <= 1:
            raise UserError(f"--extra-share must be in [0, 1], got {self.extra_share}")
        if len(self.split_shares) != 3 or min(self.split_shares) < 0 or not math.isclose(sum(self.split_shares), 1):
            raise UserError("--split-shares must be three non-negative shares that sum to 1")
        if self.split not in ("user", "pair"):
            raise UserError(f"--split must be user or pair, got {self.split!r}")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread deterministic hash of uint64 values."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def stable_hash(strings, seed: int) -> np.ndarray:
    """A uint64 hash per string that is the same in every process and run (unlike hash())."""
    salt = seed.to_bytes(8, "little", signed=True)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8, key=salt).digest(), "little") for s in strings),
        dtype=np.uint64, count=len(strings))


def unit_interval(h: np.ndarray) -> np.ndarray:
    """Map uint64 hashes to floats in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def popularity(retweets: np.ndarray, likes: np.ndarray, weights: tuple[float, float]) -> np.ndarray:
    return weights[0] * retweets + weights[1] * likes


def thurstone_prob(score_gap: np.ndarray, sigma: float) -> np.ndarray:
    """P(A ≻ B) = Φ((S_A − S_B)/(√2σ)) under IIPA's Thurstone model."""
    z = np.asarray(score_gap, dtype=np.float64) / (math.sqrt(2.0) * sigma)
    return 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(z / math.sqrt(2.0)))


class Rows:
    """The columns of the images table the rules need, as numpy arrays sorted by (user, time)."""

    def __init__(self, table: pa.Table, config: PairsConfig):
        usable = pc.is_in(table.column("status"), pa.array([PENDING, OK]))
        needed = [pc.is_valid(table.column(c)) for c in ("retweets", "likes")]
        table = table.filter(pc.and_(usable, pc.and_(*needed)))
        if config.single_photo:
            table = table.filter(pc.equal(table.column("media_count"), 1))
        table = table.take(pc.sort_indices(table, [("user_id", "ascending"), ("created_at", "ascending"),
                                                   ("key", "ascending")]))
        self.table = table
        self.key = table.column("key").to_numpy(zero_copy_only=False)
        self.user = table.column("user_id").to_numpy(zero_copy_only=False)
        self.time = pc.cast(table.column("created_at"), pa.int64()).to_numpy()
        collected = table.column("collected_at").fill_null(pa.scalar(None, pa.timestamp("us", tz="UTC")))
        self.collected = pc.cast(collected, pa.int64()).to_numpy(zero_copy_only=False)
        self.retweets = table.column("retweets").to_numpy().astype(np.int64)
        self.likes = table.column("likes").to_numpy().astype(np.int64)
        self.pop = popularity(self.retweets, self.likes, config.weights)
        self.score = np.log1p(self.pop)
        self.n_words = pc.list_value_length(table.column("caption_words")).fill_null(0).to_numpy()
        self.tags = table.column("hashtags").to_pylist()
        self.mentions = table.column("mentions").to_pylist()
        self.photo = pc.coalesce(table.column("media_key"), table.column("url"), table.column("key")).to_pylist()


def _offset_candidates(rows: Rows, k: int, config: PairsConfig, min_gap: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Index pairs (i, i+k) that pass every vectorised rule, or None once offset k is past the window."""
    i = np.arange(len(rows.key) - k)
    j = i + k
    near = (rows.user[i] == rows.user[j]) & (rows.time[j] - rows.time[i] <= config.max_days * DAY_US)
    if not near.any():
        return None
    i, j = i[near], j[near]
    keep = np.abs(rows.score[i] - rows.score[j]) >= min_gap
    if config.max_caption_diff is not None:
        keep &= np.abs(rows.n_words[i] - rows.n_words[j]) <= config.max_caption_diff
    if config.max_caption_words is not None:
        keep &= np.maximum(rows.n_words[i], rows.n_words[j]) <= config.max_caption_words
    if config.min_likes:
        keep &= np.minimum(rows.likes[i], rows.likes[j]) >= config.min_likes
    if config.min_age_days:
        age_i = (rows.collected[i] - rows.time[i]) / DAY_US
        age_j = (rows.collected[j] - rows.time[j]) / DAY_US
        keep &= np.minimum(age_i, age_j) >= config.min_age_days
    return i[keep], j[keep]


def _tags_pass(rows: Rows, i: int, j: int, config: PairsConfig) -> bool:
    tags_i, tags_j = rows.tags[i] or [], rows.tags[j] or []
    if config.identical_tags:
        return set(tags_i) == set(tags_j) and set(rows.mentions[i] or []) == set(rows.mentions[j] or [])
    return len(set(tags_i) & set(tags_j)) >= config.min_common_hashtags


def candidate_pairs(rows: Rows, config: PairsConfig) -> tuple[np.ndarray, np.ndarray]:
    """All (hi, lo) row indices that pass the preset's rules, except the twitter retweet rule."""
    min_gap = math.sqrt(2.0) * config.sigma * NormalDist().inv_cdf(config.threshold)
    his, los = [], []
    k = 1
    while (found := _offset_candidates(rows, k, config, min_gap)) is not None:
        i, j = found
        if config.min_common_hashtags or config.identical_tags:
            ok = np.fromiter((_tags_pass(rows, a, b, config) for a, b in zip(i, j)), dtype=bool, count=len(i))
            i, j = i[ok], j[ok]
        hi_first = rows.score[i] > rows.score[j]
        his.append(np.where(hi_first, i, j))
        los.append(np.where(hi_first, j, i))
        k += 1
    if not his:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(his), np.concatenate(los)


def pair_hash(rows: Rows, hi: np.ndarray, lo: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic per-pair hash from the two keys and the seed (the draw order of pairs)."""
    key_hash = stable_hash(rows.key, seed)
    with np.errstate(over="ignore"):
        return _mix64(key_hash[hi] * np.uint64(0x9E3779B97F4A7C15) ^ key_hash[lo])


def apply_retweet_rule(rows: Rows, hi, lo, h, config: PairsConfig):
    """The twitter preset's extra rule on a seeded share of the pairs, drawn from each pair's hash.

    A pair drawn into the share (hash quantile < extra_share) is kept only if its retweet counts
    differ and one tweet has more than `extra_min_retweets` retweets; its rule is `retweets`.
    """
    drawn = unit_interval(_mix64(h ^ np.uint64(0x5EED))) < config.extra_share
    rt_hi, rt_lo = rows.retweets[hi], rows.retweets[lo]
    passes = (rt_hi != rt_lo) & (np.maximum(rt_hi, rt_lo) > config.extra_min_retweets)
    keep = ~drawn | passes
    rule = np.where(drawn, "retweets", "base")
    return keep, rule


def select(rows: Rows, hi, lo, h, config: PairsConfig) -> np.ndarray:
    """Indices of the candidate pairs to emit: per-user cap and one pair per image, in hash order."""
    order = np.argsort(h, kind="stable")
    if config.all_candidates:
        return np.sort(order)
    chosen, used, per_user = [], set(), {}
    for p in order:
        user = rows.user[hi[p]]
        if config.max_pairs_per_user is not None and per_user.get(user, 0) >= config.max_pairs_per_user:
            continue
        if config.one_pair_per_image and (hi[p] in used or lo[p] in used):
            continue
        used.update((hi[p], lo[p]))
        per_user[user] = per_user.get(user, 0) + 1
        chosen.append(p)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def assign_splits(rows: Rows, hi, lo, config: PairsConfig) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per pair, by user hash or by pair hash."""
    if config.split == "user":
        u = unit_interval(stable_hash(rows.user[hi], config.seed + 1))
    else:
        u = unit_interval(pair_hash(rows, hi, lo, config.seed + 1))
    edges = np.cumsum(config.split_shares)[:-1]
    return np.searchsorted(edges, u, side="right")


def drop_shared_photos(rows: Rows, hi, lo, split) -> np.ndarray:
    """Keep-mask that removes pairs whose photo already appears in an earlier split."""
    keep = np.ones(len(hi), dtype=bool)
    seen: set = set()
    for s in range(len(SPLITS)):
        idx = np.flatnonzero(split == s)
        photos = [rows.photo[x] for x in np.concatenate([hi[idx], lo[idx]])]
        clash = np.fromiter((rows.photo[a] in seen or rows.photo[b] in seen for a, b in zip(hi[idx], lo[idx])),
                            dtype=bool, count=len(idx))
        keep[idx[clash]] = False
        seen.update(photos)
    return keep


def pairs_table(rows: Rows, hi, lo, rule, config: PairsConfig) -> pa.Table:
    return pa.table({
        "hi_key": rows.key[hi], "lo_key": rows.key[lo],
        "hi_pop": rows.pop[hi].astype(np.float64), "lo_pop": rows.pop[lo].astype(np.float64),
        "prob": thurstone_prob(rows.score[hi] - rows.score[lo], config.sigma),
        "user_id": rows.user[hi], "rule": rule,
        "days_apart": np.abs(rows.time[hi] - rows.time[lo]) / DAY_US,
    })


def build_pairs(config: PairsConfig) -> dict:
    """Build the pair manifests of every split; return the statistics written to stats.json."""
    config.validate()
    rows = Rows(read_table(config.images, "images"), config)
    hi, lo = candidate_pairs(rows, config)
    h = pair_hash(rows, hi, lo, config.seed)
    keep, rule = apply_retweet_rule(rows, hi, lo, h, config)
    hi, lo, h, rule = hi[keep], lo[keep], h[keep], rule[keep]
    chosen = select(rows, hi, lo, h, config)
    hi, lo, rule = hi[chosen], lo[chosen], rule[chosen]
    split = assign_splits(rows, hi, lo, config)
    keep = drop_shared_photos(rows, hi, lo, split)
    from shards.pairstats import split_stats, write_plot  # plotting is heavy; import on use

    out = Path(config.out)
    stats = {"candidates": int(len(chosen)), "dropped_shared_photo": int((~keep).sum()), "splits": {}}
    for s, name in enumerate(SPLITS):
        mask = keep & (split == s)
        table = pairs_table(rows, hi[mask], lo[mask], rule[mask], config)
        write_table(table, out / f"{name}.parquet", "pairs")
        stats["splits"][name] = split_stats(rows, hi[mask], lo[mask], table)
    stats["pairs"] = sum(s["pairs"] for s in stats["splits"].values())
    write_json(stats, out / "stats.json")
    write_json({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}, out / "config.json")
    write_plot(out)
    return stats
