"""The PDIP builder's inputs as arrays: stable hashing, the Thurstone model, and the images table
read column by column into the integer arrays the rules compare (users, times, tag ids, photos)."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.special import ndtr

from shards.console import UserError
from shards.pairs.config import NEEDED, PairsConfig
from shards.schema import IMAGES, OK, PENDING, SchemaError, check_version, conform, parquet_files


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


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Φ(z), vectorised."""
    return ndtr(np.asarray(z, dtype=np.float64))


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
        check_version(parquet.schema_arrow.metadata, file)
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
