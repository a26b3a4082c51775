"""The PDIP index builder: popularity-discriminable image pairs from the images table.

A pair is kept when IIPA's Thurstone test P(hi ≻ lo) = Φ((S_hi − S_lo)/(√2σ)) ≥ T holds on
S = ln(1 + p), p = w_r·retweets + w_l·likes, and every rule of the preset passes. Everything runs
as whole-array numpy work, so it scales to tens of millions of rows on a laptop:

- candidates come from a band self-join: rows sorted by (user, time), each row's window end found
  by one `searchsorted`, the pairs of a block of rows expanded with `np.repeat` and filtered;
- hashtag rules use per-row tag ids (a CSR of sorted, distinct ids), a 64-bit signature per row as
  a quick reject and an exact membership test by `searchsorted` on (row, tag) keys;
- draws (one pair per image, the per-user cap, splits, which pairs carry the retweet rule) come
  from a seeded 64-bit hash of the keys, so the output depends on the data and the seed only;
- a photo is named by its media key (else URL, else row key), compared by a 64-bit hash of that
  name: two pairs never show the same photo on both sides, and a photo never crosses splits.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from shards.pairs.config import DAY_US, SPLITS, PairsConfig
from shards.pairs.rows import Rows, _mix64, dense_ids, read_images, stable_hash, thurstone_prob, unit_interval
from shards.schema import write_json, write_table

# Candidate pairs expanded at once: bounds memory (about 100 bytes per candidate in flight).
BLOCK_PAIRS = 4_000_000


# ---------------------------------------------------------------- the rules

def _block_candidates(rows: Rows, lo_row: int, hi_row: int, window_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j) with lo_row ≤ i < hi_row and i < j < window_end[i]: the band of one block."""
    first = np.arange(lo_row, hi_row)
    count = window_end[lo_row:hi_row] - first - 1
    i = np.repeat(first, count)
    j = i + 1 + (np.arange(len(i)) - np.repeat(np.cumsum(count) - count, count))
    return i, j


def _passes(rows: Rows, i: np.ndarray, j: np.ndarray, config: PairsConfig) -> np.ndarray:
    """Keep-mask of every rule except the retweet rule, cheapest and most selective first."""
    keep = np.abs(rows.time[j] - rows.time[i]) <= config.max_days * DAY_US
    keep &= np.abs(rows.score[i] - rows.score[j]) >= config.min_gap()
    keep &= rows.photo[i] != rows.photo[j]
    if config.max_caption_diff is not None:
        keep &= np.abs(rows.n_words[i] - rows.n_words[j]) <= config.max_caption_diff
    if config.max_caption_words is not None:
        keep &= np.maximum(rows.n_words[i], rows.n_words[j]) <= config.max_caption_words
    if config.min_likes:
        keep &= np.minimum(rows.likes[i], rows.likes[j]) >= config.min_likes
    if config.min_age_days:
        age = np.minimum(rows.collected[i] - rows.time[i], rows.collected[j] - rows.time[j])
        keep &= age >= config.min_age_days * DAY_US
    if config.min_common_hashtags:
        keep &= (rows.tags.signature[i] & rows.tags.signature[j]) != 0
        idx = np.flatnonzero(keep)
        keep[idx] = rows.tags.common(i[idx], j[idx]) >= config.min_common_hashtags
    if config.identical_tags:
        idx = np.flatnonzero(keep)
        keep[idx] = rows.tags.identical(i[idx], j[idx]) & rows.mentions.identical(i[idx], j[idx])
    return keep


def candidate_pairs(rows: Rows, config: PairsConfig, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """All (hi, lo) row indices that pass the preset's rules, except the twitter retweet rule."""
    key = rows.band
    window_end = np.searchsorted(key, key + rows.window, side="right")
    per_row = np.cumsum(window_end - np.arange(len(key)) - 1)
    bounds = np.searchsorted(per_row, np.arange(0, int(per_row[-1]) if len(key) else 0, BLOCK_PAIRS), side="right")
    bounds = np.unique(np.concatenate([[0], bounds, [len(key)]]))
    his, los = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        i, j = _block_candidates(rows, int(a), int(b), window_end)
        keep = _passes(rows, i, j, config)
        i, j = i[keep], j[keep]
        hi_first = rows.score[i] > rows.score[j]
        his.append(np.where(hi_first, i, j))
        los.append(np.where(hi_first, j, i))
        if progress is not None:
            progress.update(int(b - a))
    return np.concatenate(his), np.concatenate(los)


def combine_hashes(hash_hi: np.ndarray, hash_lo: np.ndarray) -> np.ndarray:
    """The pair hash from the key hashes of its two sides (order matters: hi, lo)."""
    with np.errstate(over="ignore"):
        return _mix64(hash_hi * np.uint64(0x9E3779B97F4A7C15) ^ hash_lo)


def pair_hash(rows: Rows, hi: np.ndarray, lo: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic per-pair hash from the two keys and the seed (the draw order of pairs)."""
    used = np.zeros(len(rows.order), bool)
    used[hi] = used[lo] = True
    used = np.flatnonzero(used)
    key_hash = np.zeros(len(rows.order), np.uint64)
    key_hash[used] = stable_hash(rows.keys.take(pa.array(rows.order[used])), seed)
    return combine_hashes(key_hash[hi], key_hash[lo])


def passes_retweet_rule(rows: Rows, hi, lo, config: PairsConfig) -> np.ndarray:
    """The twitter preset's extra rule: retweet counts differ and one has more than `extra_min_retweets`."""
    rt_hi, rt_lo = rows.retweets[hi], rows.retweets[lo]
    return (rt_hi != rt_lo) & (np.maximum(rt_hi, rt_lo) > config.extra_min_retweets)


def retweet_share(rows: Rows, hi, lo, h, config: PairsConfig) -> tuple[np.ndarray, dict]:
    """Which output pairs carry the retweet rule (`retweets`; the others are `base`) and how close
    that came to the share asked.

    The seed adds the rule "for about 1/3rd of the PDIPs generated": `extra_share` of the output
    pairs carry it. They are drawn in seeded hash order among the output pairs that pass it; when
    fewer pass than the share needs, all of them carry it and the shortfall is reported. Labels
    never remove a pair, so the pair set is the same at every share (a pair a label leaves `base`
    may pass the rule too: it was just not held to it).
    """
    passing = np.flatnonzero(passes_retweet_rule(rows, hi, lo, config))
    wanted = int(np.floor(config.extra_share * len(hi) + 0.5))  # rounded half up, as a share of pairs
    drawn = passing[np.argsort(_mix64(h[passing] ^ np.uint64(0x5EED)), kind="stable")[:wanted]]
    carries = np.zeros(len(hi), bool)
    carries[drawn] = True
    return carries, {"share_asked": config.extra_share,
                     "share_reached": float(len(drawn) / len(hi)) if len(hi) else 0.0,
                     "pairs_asked": wanted, "pairs_carrying": int(len(drawn)),
                     "pairs_passing": int(len(passing)), "shortfall": max(0, wanted - int(len(passing)))}


# ---------------------------------------------------------------- selection and splits

def greedy_matching(a: np.ndarray, b: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Mask of the edges that a one-by-one greedy pass in `rank` order would take so that no
    node is in two edges, computed in rounds: an edge whose rank is the lowest among the live
    edges at both its ends is taken by the greedy pass too; take those, drop the edges touching
    them, repeat. Random ranks need a few dozen rounds, each a whole-array step."""
    chosen = np.zeros(len(a), bool)
    live = np.arange(len(a))
    best = np.full(int(max(a.max(initial=-1), b.max(initial=-1))) + 1, np.iinfo(np.int64).max)
    taken = np.zeros(len(best), bool)
    while len(live):
        ea, eb, er = a[live], b[live], rank[live]
        np.minimum.at(best, ea, er)
        np.minimum.at(best, eb, er)
        win = (best[ea] == er) & (best[eb] == er)
        chosen[live[win]] = True
        taken[ea[win]] = taken[eb[win]] = True
        best[ea] = best[eb] = np.iinfo(np.int64).max
        live = live[~(taken[ea] | taken[eb])]
    return chosen


def select(rows: Rows, hi, lo, h, config: PairsConfig) -> np.ndarray:
    """Indices of the candidate pairs to emit: one pair per image, then the per-user cap, both
    in hash order (the result of walking the pairs by hash and taking each one that still fits)."""
    if config.all_candidates:
        return np.arange(len(hi))
    order = np.argsort(h, kind="stable")
    rank = np.empty(len(h), np.int64)
    rank[order] = np.arange(len(h))
    keep = np.ones(len(hi), bool)
    if config.one_pair_per_image:
        photo = dense_ids(np.concatenate([rows.photo[hi], rows.photo[lo]]))
        keep = greedy_matching(photo[:len(hi)], photo[len(hi):], rank)
    if config.max_pairs_per_user is not None:
        idx = np.flatnonzero(keep)
        by_user = idx[np.lexsort((rank[idx], rows.user[hi[idx]]))]
        user = rows.user[hi[by_user]]
        first = np.r_[0, np.flatnonzero(user[1:] != user[:-1]) + 1] if len(user) else np.zeros(0, np.int64)
        within = np.arange(len(user)) - np.repeat(first, np.diff(np.r_[first, len(user)]))
        keep[by_user[within >= config.max_pairs_per_user]] = False
    return np.flatnonzero(keep)


def assign_splits(rows: Rows, hi, lo, config: PairsConfig) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per pair, by user hash or by pair hash."""
    if config.split == "user":
        u = unit_interval(stable_hash(rows.user_names, config.seed + 1))[rows.user[hi]]
    else:
        u = unit_interval(pair_hash(rows, hi, lo, config.seed + 1))
    edges = np.cumsum(config.split_shares)[:-1]
    return np.searchsorted(edges, u, side="right")


def drop_shared_photos(rows: Rows, hi, lo, split) -> np.ndarray:
    """Keep-mask that removes pairs whose photo is already in a kept pair of an earlier split."""
    keep = np.ones(len(hi), dtype=bool)
    photo = dense_ids(np.concatenate([rows.photo[hi], rows.photo[lo]]))
    photo_hi, photo_lo = photo[:len(hi)], photo[len(hi):]
    seen = np.zeros(len(photo), bool)
    for s in range(len(SPLITS)):
        idx = np.flatnonzero(split == s)
        p_hi, p_lo = photo_hi[idx], photo_lo[idx]
        clash = seen[p_hi] | seen[p_lo]
        keep[idx[clash]] = False
        seen[p_hi[~clash]] = seen[p_lo[~clash]] = True
    return keep


def pairs_table(rows: Rows, hi, lo, rule, prob, days) -> pa.Table:
    keys = rows.keys
    return pa.table({
        "hi_key": keys.take(pa.array(rows.order[hi])), "lo_key": keys.take(pa.array(rows.order[lo])),
        "hi_pop": rows.pop[hi].astype(np.float64), "lo_pop": rows.pop[lo].astype(np.float64), "prob": prob,
        "user_id": rows.user_names.take(pa.array(rows.user[hi])), "rule": pa.array(rule, pa.string()),
        "days_apart": days,
    })


def build_pairs(config: PairsConfig) -> dict:
    """Build the pair manifests of every split; return the statistics written to stats.json."""
    from shards.console import progress
    from shards.pairs.stats import table1, write_plot  # plotting is heavy; import on use

    config.validate()
    rows = Rows(read_images(config.images, config), config)
    with progress(total=len(rows.order), desc="pairs", unit="row") as bar:
        hi, lo = candidate_pairs(rows, config, bar)
    h = pair_hash(rows, hi, lo, config.seed)
    candidates = {"rules": int(len(hi))}
    chosen = select(rows, hi, lo, h, config)
    hi, lo, h = hi[chosen], lo[chosen], h[chosen]
    split = assign_splits(rows, hi, lo, config)
    keep = drop_shared_photos(rows, hi, lo, split)
    hi, lo, h, split = hi[keep], lo[keep], h[keep], split[keep]
    carries, share = retweet_share(rows, hi, lo, h, config)
    rule = np.where(carries, "retweets", "base")
    prob = thurstone_prob(rows.score[hi] - rows.score[lo], config.sigma)
    days = np.abs(rows.time[hi] - rows.time[lo]) / DAY_US
    out = Path(config.out)
    for s, name in enumerate(SPLITS):
        mask = split == s
        write_table(pairs_table(rows, hi[mask], lo[mask], rule[mask], prob[mask], days[mask]),
                    out / f"{name}.parquet", "pairs")
    stats = {"rows": int(len(rows.mask)), "usable_rows": int(len(rows.order)), "skipped_rows": rows.skipped,
             "candidates": {**candidates, "selected": int(len(chosen))},
             "dropped_shared_photo": int((~keep).sum()), "pairs": int(len(hi)), "retweet_rule": share,
             **table1(rows, hi, lo, rule, split, prob, days, SPLITS)}
    write_json(stats, out / "stats.json")
    write_json({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}, out / "config.json")
    if config.plot:
        write_plot(out)
    return stats
