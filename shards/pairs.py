"""The PDIP index builder: popularity-discriminable image pairs from the images table.

A pair is kept when IIPA's Thurstone test P(hi ≻ lo) = Φ((S_hi − S_lo)/(√2σ)) ≥ T holds on
S = ln(1 + p), p = w_r·retweets + w_l·likes, and every rule of the preset passes. Everything runs
as whole-array numpy work, so it scales to tens of millions of rows on a laptop:

- candidates come from a band self-join: rows sorted by (user, time), each row's window end found
  by one `searchsorted`, the pairs of a block of rows expanded with `np.repeat` and filtered;
- hashtag rules use per-row tag ids (a CSR of sorted, distinct ids), a 64-bit signature per row as
  a quick reject and an exact membership test by `searchsorted` on (row, tag) keys;
- draws (the retweet-rule share, one pair per image, the per-user cap, splits) come from a
  seeded 64-bit hash of the keys, so the output depends on the data and the seed only;
- a photo is named by its media key (else URL, else row key), compared by a 64-bit hash of that
  name: two pairs never show the same photo on both sides, and a photo never crosses splits.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shards.console import UserError
from shards.schema import (IMAGES, OK, PENDING, SCHEMA_VERSION, VERSION_KEY, SchemaError, conform, parquet_files,
                           write_json, write_table)

SPLITS = ("train", "val", "test")
DAY_US = 86_400 * 1_000_000
# Candidate pairs expanded at once: bounds memory (about 100 bytes per candidate in flight).
BLOCK_PAIRS = 4_000_000
NEEDED = ("key", "user_id", "created_at", "collected_at", "hashtags", "mentions", "caption_words", "retweets",
          "likes", "media_count", "media_key", "url", "status")


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
    """twitter: share of candidate pairs drawn (by pair hash) to also pass the retweet rule."""
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
    """ding: both posts at least this old when counted (rows without collected_at are skipped)."""
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
    plot: bool = True
    """Write pairs.png (the distribution of P and of days apart)."""

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
        finite = [self.sigma, self.threshold, self.max_days, self.extra_share, self.min_age_days, *self.weights]
        if not all(math.isfinite(v) for v in finite):
            raise UserError("thresholds, --sigma, --max-days and --weights must be finite numbers")
        if not 0.5 < self.threshold < 1:
            raise UserError(f"--threshold must be in (0.5, 1), got {self.threshold}")
        if self.sigma <= 0:
            raise UserError(f"--sigma must be > 0, got {self.sigma}")
        if self.max_days < 0:
            raise UserError(f"--max-days must be ≥ 0 (a time window), got {self.max_days}")
        if len(self.weights) != 2 or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise UserError(f"--weights must be two non-negative numbers, not both 0, got {self.weights}")
        if not 0 <= self.extra_share <= 1:
            raise UserError(f"--extra-share must be in [0, 1], got {self.extra_share}")
        for name in ("max_caption_diff", "min_common_hashtags", "extra_min_retweets", "max_caption_words",
                     "min_likes", "min_age_days", "max_pairs_per_user"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"--{name.replace('_', '-')} must be ≥ 0, got {value}")
        if len(self.split_shares) != 3 or min(self.split_shares) < 0 or not math.isclose(sum(self.split_shares), 1):
            raise UserError("--split-shares must be three non-negative shares that sum to 1")
        if self.split not in ("user", "pair"):
            raise UserError(f"--split must be user or pair, got {self.split!r}")
        if self.preset not in ("twitter", "ding"):
            raise UserError(f"unknown preset {self.preset!r}; choose twitter or ding")

    def min_gap(self) -> float:
        """The score gap S_hi − S_lo at which P reaches the threshold (Φ is increasing)."""
        return math.sqrt(2.0) * self.sigma * NormalDist().inv_cdf(self.threshold)


# ---------------------------------------------------------------- hashing and the Thurstone model

def _mix64(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """splitmix64 finaliser: a well-spread deterministic hash of uint64 values (in place when asked:
    at tens of millions of values the temporaries cost more than the arithmetic)."""
    x = x if inplace else np.array(x, dtype=np.uint64, copy=True)
    t = np.empty_like(x)
    with np.errstate(over="ignore"):
        for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            np.right_shift(x, np.uint64(shift), out=t)
            x ^= t
            x *= np.uint64(factor)
        np.right_shift(x, np.uint64(31), out=t)
        x ^= t
    return x


def _hash_chunk(arr: pa.Array, start_hash: np.ndarray) -> np.ndarray:
    arr = arr.cast(pa.large_string())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + n + 1]
    raw = arr.buffers()[2]
    data = np.zeros(8 + (raw.size if raw is not None else 0), np.uint8)
    if raw is not None:
        data[:raw.size] = np.frombuffer(raw, dtype=np.uint8)
    words = np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))  # unaligned view
    start, length = offsets[:-1], np.diff(offsets)
    h = start_hash.copy()
    for w in range(int(length.max(initial=0) + 7) // 8):
        idx = slice(None) if w == 0 and length.min() >= 8 else np.flatnonzero(length > 8 * w)
        word = words[start[idx] + 8 * w]
        rest = length[idx] - 8 * w
        short = np.flatnonzero(rest < 8)
        word[short] &= (np.uint64(1) << (8 * rest[short]).astype(np.uint64)) - np.uint64(1)
        if isinstance(idx, slice):
            h ^= word
            _mix64(h, inplace=True)
        else:
            word ^= h[idx]
            h[idx] = _mix64(word, inplace=True)
    with np.errstate(over="ignore"):
        h ^= length.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)
    return _mix64(h, inplace=True)


def stable_hash(strings, seed: int) -> np.ndarray:
    """A uint64 hash per string, the same in every process and run (unlike hash()).

    The UTF-8 bytes are read 8 at a time straight from the Arrow buffer (an unaligned uint64
    view), each word chained through splitmix64, the length mixed in last: a handful of
    whole-array steps instead of a Python call per string.
    """
    if isinstance(strings, pa.ChunkedArray):
        chunks = strings.chunks
    elif isinstance(strings, pa.Array):
        chunks = [strings]
    else:
        chunks = [pa.array(list(strings), pa.string())]
    start = _mix64(np.array([(seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (1 << 64)], np.uint64))
    out = [_hash_chunk(c, np.repeat(start, len(c))) for c in chunks if len(c)]
    return np.concatenate(out) if out else np.zeros(0, np.uint64)


def unit_interval(h: np.ndarray) -> np.ndarray:
    """Map uint64 hashes to floats in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def popularity(retweets: np.ndarray, likes: np.ndarray, weights: tuple[float, float]) -> np.ndarray:
    return weights[0] * retweets + weights[1] * likes


def _phi_table(step: float = 1e-3, top: float = 9.0) -> tuple[np.ndarray, np.ndarray]:
    z = np.arange(0.0, top + 2 * step, step)
    return z, np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in z])


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Φ(z) to about 1e-14, vectorised: cubic Hermite interpolation of a table of math.erfc on
    [0, 9] (step 1e-3, exact values and exact slopes φ), symmetry below 0 and 1 above 9.
    numpy has no erf and scipy is not a dependency; a Python call per pair is too slow at 10 M."""
    z = np.asarray(z, dtype=np.float64)
    grid, values = _phi_table()
    step = grid[1]
    a = np.minimum(np.abs(z), grid[-2] - step)
    k = np.minimum((a / step).astype(np.int64), len(grid) - 2)
    t = a / step - k
    z0, z1 = grid[k], grid[k + 1]
    d0 = np.exp(-0.5 * z0 * z0) / math.sqrt(2 * math.pi) * step
    d1 = np.exp(-0.5 * z1 * z1) / math.sqrt(2 * math.pi) * step
    t2, t3 = t * t, t * t * t
    upper = ((2 * t3 - 3 * t2 + 1) * values[k] + (t3 - 2 * t2 + t) * d0 + (-2 * t3 + 3 * t2) * values[k + 1]
             + (t3 - t2) * d1)
    upper = np.where(np.abs(z) >= grid[-2], 1.0, upper)
    return np.where(z >= 0, upper, 1.0 - upper)


def thurstone_prob(score_gap: np.ndarray, sigma: float) -> np.ndarray:
    """P(A ≻ B) = Φ((S_A − S_B)/(√2σ)) under IIPA's Thurstone model."""
    return normal_cdf(np.asarray(score_gap, dtype=np.float64) / (math.sqrt(2.0) * sigma))


# ---------------------------------------------------------------- the images table as arrays

# String columns read as Parquet dictionaries (codes, not millions of small strings): a 2-5x
# faster read, and the codes are what the rules compare anyway.
AS_CODES = ("user_id", "status", "hashtags", "mentions", "caption_words")


def _is_coded(actual: pa.DataType) -> bool:
    """A dictionary of strings, or a list of them: what `read_dictionary` gives for a string column."""
    if pa.types.is_list(actual):
        actual = actual.value_type
    return pa.types.is_dictionary(actual) and pa.types.is_string(actual.value_type)


def _conform_column(table: pa.Table, name: str, file) -> pa.ChunkedArray:
    """One needed column, checked like `shards.schema.conform` (codes of strings pass as they are)."""
    field = IMAGES.field(name)
    if name in table.column_names and _is_coded(table.column(name).type):
        column = table.column(name)
        if not field.nullable and column.null_count:
            raise SchemaError(f"{file}: column {name!r} has {column.null_count} null values")
        return column
    if name not in table.column_names and name in ("url", "collected_at"):
        return pa.chunked_array([pa.nulls(table.num_rows, field.type)])
    part = table.select([name]) if name in table.column_names else pa.table({"_": pa.nulls(table.num_rows)})
    return conform(part, pa.schema([field]), f"{file}").column(0)


def _coded_columns(schema: pa.Schema) -> list[str]:
    """The Parquet paths of the string columns (or lists of strings) of AS_CODES in this file."""
    paths = []
    for name in AS_CODES:
        if name not in schema.names:
            continue
        kind = schema.field(name).type
        if pa.types.is_string(kind):
            paths.append(name)
        elif pa.types.is_list(kind) and pa.types.is_string(kind.value_type):
            paths.append(f"{name}.list.{kind.value_field.name}")
    return paths


def _has_nulls(parquet: pq.ParquetFile, name: str) -> bool:
    """Whether a column may hold nulls, from the row-group statistics (True when unknown)."""
    if name not in parquet.schema_arrow.names:
        return True
    index = parquet.schema_arrow.names.index(name)
    for g in range(parquet.metadata.num_row_groups):
        stats = parquet.metadata.row_group(g).column(index).statistics
        if stats is None or not stats.has_null_count or stats.null_count:
            return True
    return False


def read_images(path, config: PairsConfig | None = None) -> pa.Table:
    """The columns the rules need from an images table (file or folder), version and types checked.

    `url` is read only where some `media_key` is null (it names a photo only then), and
    `collected_at` only when a minimum age is asked for.
    """
    tables = []
    for file in parquet_files(path):
        try:
            parquet = pq.ParquetFile(file, read_dictionary=_coded_columns(pq.read_schema(file)))
            version = (parquet.schema_arrow.metadata or {}).get(VERSION_KEY)
            names = [n for n in NEEDED if n in parquet.schema_arrow.names]
            if not _has_nulls(parquet, "media_key") and "url" in names:
                names.remove("url")
            if config is not None and not config.min_age_days and "collected_at" in names:
                names.remove("collected_at")
            # Row group by row group: Arrow cannot read nested dictionary columns across groups at once.
            groups = [parquet.read_row_group(g, columns=names) for g in range(parquet.metadata.num_row_groups)]
            table = pa.concat_tables(groups) if groups else parquet.read(columns=names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(f"{file}: not a readable Parquet file ({exc})") from exc
        if version is not None and int(version) != SCHEMA_VERSION:
            raise SchemaError(f"{file}: schema version {int(version)}, this iipa reads version {SCHEMA_VERSION}")
        tables.append(pa.table({name: _conform_column(table, name, file) for name in NEEDED}))
    return pa.concat_tables(tables, promote_options="permissive")


def dense_ids(values: np.ndarray) -> np.ndarray:
    """0..k-1 ids of the distinct values, equal values equal ids (by sorting: numpy's hash-based
    `np.unique` is many times slower on millions of uint64)."""
    order = np.argsort(values)
    ids = np.empty(len(values), np.int64)
    ids[order] = np.cumsum(np.r_[False, values[order][1:] != values[order][:-1]])
    return ids


def string_codes(chunks: list[pa.Array]) -> tuple[np.ndarray, pa.Array]:
    """Int codes for string values given as plain or dictionary chunks (equal strings, equal
    codes across chunks), and the strings of the codes. Null values get code -1."""
    coded = [c if pa.types.is_dictionary(c.type) else pc.dictionary_encode(c) for c in chunks]
    if not coded:
        return np.zeros(0, np.int64), pa.array([], pa.string())
    vocab = pa.concat_arrays([c.dictionary.cast(pa.string()) for c in coded])
    unified = pc.dictionary_encode(vocab)
    mapping = np.append(unified.indices.to_numpy().astype(np.int64), -1)
    out, offset = [], 0
    for c in coded:
        if c.null_count:
            local = c.indices.fill_null(-1).to_numpy().astype(np.int64)
            out.append(mapping[np.where(local < 0, len(mapping) - 1, local + offset)])
        else:
            out.append(mapping[offset:offset + len(c.dictionary)][c.indices.to_numpy()])
        offset += len(c.dictionary)
    return np.concatenate(out), unified.dictionary


class Tags:
    """A list column as sorted, distinct int ids per row (CSR), looked up by the row order of `Rows`.

    The CSR stays in the table's own row order, where the ids of a row are already together, so
    making them sorted and distinct is a nearly-sorted (fast, stable) sort.
    """

    def __init__(self, column: pa.ChunkedArray, order: np.ndarray, fingerprints: bool = False):
        chunks = [c for c in column.chunks if len(c)]
        ids, _ = string_codes([pc.list_flatten(c) for c in chunks])
        n = len(column)
        count = pc.list_value_length(column).fill_null(0).to_numpy().astype(np.int64)
        row = np.repeat(np.arange(n), count)
        if (ids < 0).any():  # a null inside a list names no tag
            row, ids = row[ids >= 0], ids[ids >= 0]
        self.vocab = max(int(ids.max(initial=-1)) + 1, 1)
        keys = np.sort(row * self.vocab + ids, kind="stable")
        distinct = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
        if not distinct.all() or len(keys) != count.sum():
            keys = keys[distinct]
            count = np.bincount(keys // self.vocab, minlength=n)
        self.keys, self.ids = keys, keys % self.vocab
        self.start = (np.cumsum(count) - count)[order]
        self.count = count[order]
        bits = np.uint64(1) << (self.ids.astype(np.uint64) & np.uint64(63))  # ids are codes: spread enough
        signature, fingerprint = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
        nonempty = count > 0
        if nonempty.any():
            starts = (np.cumsum(count) - count)[nonempty]
            signature[nonempty] = np.bitwise_or.reduceat(bits, starts)
            if fingerprints:  # only `identical` needs them
                with np.errstate(over="ignore"):
                    fingerprint[nonempty] = np.add.reduceat(_mix64(self.ids.astype(np.uint64) + np.uint64(1)),
                                                            starts)
        self.signature, self.fingerprint = signature[order], fingerprint[order]
        self.source_row = order

    def common(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Number of distinct ids row i shares with row j, per pair (exact)."""
        n_i = self.count[i]
        owner = np.repeat(np.arange(len(i)), n_i)
        within = np.arange(len(owner)) - np.repeat(np.cumsum(n_i) - n_i, n_i)
        query = self.source_row[j][owner] * self.vocab + self.ids[self.start[i][owner] + within]
        at = np.minimum(np.searchsorted(self.keys, query), max(len(self.keys) - 1, 0))
        found = self.keys[at] == query if len(self.keys) else np.zeros(len(query), bool)
        return np.bincount(owner, weights=found, minlength=len(i)).astype(np.int64)

    def identical(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Whether rows i and j hold the same set of ids, per pair (fingerprint, then exact)."""
        same = (self.count[i] == self.count[j]) & (self.fingerprint[i] == self.fingerprint[j])
        idx = np.flatnonzero(same)
        same[idx] = self.common(i[idx], j[idx]) == self.count[i[idx]]
        return same


class Rows:
    """The columns the rules need, as numpy arrays sorted by (user, time), usable rows only."""

    def __init__(self, table: pa.Table, config: PairsConfig):
        self.skipped = self._usable(table, config)
        # `order`: rows of `table` that the rules can use, sorted by (user, time); the table itself is
        # never filtered or reordered (that would copy every string column).
        user, self.user_names = string_codes(table.column("user_id").chunks)
        time = pc.cast(table.column("created_at"), pa.int64()).to_numpy()
        usable = np.flatnonzero(self.mask)
        key, self.window = self.band_key(user[usable], time[usable], config)
        sort = np.argsort(key, kind="stable")
        self.order = usable[sort]
        self.band = key[sort]
        self.user = user[self.order]
        self.time = time[self.order]
        collected = table.column("collected_at")
        self.collected = pc.cast(collected, pa.int64()).fill_null(0).to_numpy()[self.order]
        self.retweets = table.column("retweets").fill_null(0).to_numpy().astype(np.int64)[self.order]
        self.likes = table.column("likes").fill_null(0).to_numpy().astype(np.int64)[self.order]
        self.pop = popularity(self.retweets, self.likes, config.weights)
        self.score = np.log1p(self.pop)
        self.n_words = pc.list_value_length(table.column("caption_words")).fill_null(0).to_numpy()[self.order]
        # Tag ids only where a rule compares them; the statistics need only the list lengths.
        self.tag_count = pc.list_value_length(table.column("hashtags")).fill_null(0).to_numpy()[self.order]
        self.mention_count = pc.list_value_length(table.column("mentions")).fill_null(0).to_numpy()[self.order]
        need_tags = bool(config.min_common_hashtags) or config.identical_tags
        self.tags = Tags(table.column("hashtags"), self.order, config.identical_tags) if need_tags else None
        self.mentions = Tags(table.column("mentions"), self.order, True) if config.identical_tags else None
        # A photo is named by its media key (else URL, else row key); rows compare 64-bit hashes of
        # those names, and `photo_ids` turns the ones a step needs into dense ids.
        photo = pc.coalesce(table.column("media_key"), table.column("url"), table.column("key"))
        self.photo = stable_hash(photo, 0)[self.order]
        self.keys = table.column("key")  # the rest is in the arrays above; the strings can go

    def _usable(self, table: pa.Table, config: PairsConfig) -> dict:
        """Rows the rules can use; the others are counted by reason (nothing is dropped silently)."""
        for name in ("retweets", "likes"):
            negative = pc.sum(pc.less(table.column(name), 0)).as_py() or 0
            if negative:
                raise UserError(f"images: column {name!r} has {negative} negative counts")
        codes, names = string_codes(table.column("status").chunks)
        usable = np.append(np.isin(names.to_numpy(zero_copy_only=False), [PENDING, OK]), False)[codes]
        checks = [("status", usable),
                  ("no_counts", pc.and_(pc.is_valid(table.column("retweets")),
                                        pc.is_valid(table.column("likes"))).to_numpy())]
        if config.single_photo:
            checks.append(("multi_photo", pc.fill_null(pc.equal(table.column("media_count"), 1), False).to_numpy()))
        if config.min_age_days:
            checks.append(("no_collected_at", pc.is_valid(table.column("collected_at")).to_numpy()))
        skipped, mask = {}, np.ones(table.num_rows, bool)
        for reason, ok in checks:
            skipped[reason] = int((mask & ~ok).sum())
            mask &= ok
        self.mask = mask
        return skipped

    @staticmethod
    def band_key(user: np.ndarray, time: np.ndarray, config: PairsConfig) -> tuple[np.ndarray, int]:
        """One int64 sort key (user, second) and the time window in its units, so one argsort and
        one searchsorted find every row's window (a superset: the exact window is checked later)."""
        seconds = np.floor_divide(time, 1_000_000)
        seconds = seconds - seconds.min(initial=0)
        window = math.floor(config.max_days * 86_400) + 1
        bits = max(int(seconds.max(initial=0) + window + 1).bit_length(), 1)
        if (int(user.max(initial=0)) + 1).bit_length() + bits > 62:
            raise UserError("images: created_at spans too long a period for this many users")
        return (user << bits) | seconds, window


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


def retweet_draw(h: np.ndarray, share: float) -> np.ndarray:
    """Whether each pair is drawn into the retweet rule's share: its hash quantile < share."""
    return unit_interval(_mix64(h ^ np.uint64(0x5EED))) < share


def apply_retweet_rule(rows: Rows, hi, lo, h, config: PairsConfig):
    """The twitter preset's extra rule on a seeded share of the pairs, drawn from each pair's hash.

    A pair drawn into the share (hash quantile < extra_share) is kept only if its retweet counts
    differ and one tweet has more than `extra_min_retweets` retweets; its rule is `retweets`.
    """
    drawn = retweet_draw(h, config.extra_share)
    rt_hi, rt_lo = rows.retweets[hi], rows.retweets[lo]
    passes = (rt_hi != rt_lo) & (np.maximum(rt_hi, rt_lo) > config.extra_min_retweets)
    return ~drawn | passes, drawn


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
    from shards.pairstats import table1, write_plot  # plotting is heavy; import on use

    config.validate()
    rows = Rows(read_images(config.images, config), config)
    with progress(total=len(rows.order), desc="pairs", unit="row") as bar:
        hi, lo = candidate_pairs(rows, config, bar)
    h = pair_hash(rows, hi, lo, config.seed)
    keep, drawn = apply_retweet_rule(rows, hi, lo, h, config)
    candidates = {"rules": int(len(hi)), "retweet_rule_drawn": int(drawn.sum()),
                  "retweet_rule_failed": int((~keep).sum())}
    hi, lo, h, drawn = hi[keep], lo[keep], h[keep], drawn[keep]
    chosen = select(rows, hi, lo, h, config)
    hi, lo, rule = hi[chosen], lo[chosen], np.where(drawn[chosen], "retweets", "base")
    split = assign_splits(rows, hi, lo, config)
    keep = drop_shared_photos(rows, hi, lo, split)
    hi, lo, rule, split = hi[keep], lo[keep], rule[keep], split[keep]
    prob = thurstone_prob(rows.score[hi] - rows.score[lo], config.sigma)
    days = np.abs(rows.time[hi] - rows.time[lo]) / DAY_US
    out = Path(config.out)
    for s, name in enumerate(SPLITS):
        mask = split == s
        write_table(pairs_table(rows, hi[mask], lo[mask], rule[mask], prob[mask], days[mask]),
                    out / f"{name}.parquet", "pairs")
    stats = {"rows": int(len(rows.mask)), "usable_rows": int(len(rows.order)), "skipped_rows": rows.skipped,
             "candidates": {**candidates, "selected": int(len(chosen))},
             "dropped_shared_photo": int((~keep).sum()), "pairs": int(len(hi)),
             **table1(rows, hi, lo, rule, split, prob, days, SPLITS)}
    write_json(stats, out / "stats.json")
    write_json({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}, out / "config.json")
    if config.plot:
        write_plot(out)
    return stats
