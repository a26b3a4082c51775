"""Finding a sample's encoded bytes: key → row → (shard, offset, size), from the shards' Parquet slices.

Pair manifests name keys only; this is where keys become bytes, and where a manifest is read
(`resolve_pairs`, for the trainer and eval alike: its pairs as rows, cached). At IIPA's scale
(10 M images, millions of pairs, 8 ranks a node) start-up must not grow with what the trainer
does not need: only the five columns that locate a sample are read, once: `shards build` keeps
them as flat arrays in `DIR/.locate`, which every later reader memory-maps, its rows grouped by
a hash of the key. Keys are resolved to integer rows by vectorised hash lookups (Arrow's
`index_in`), one small one per group, and every sample is three numbers in flat arrays, never a
Python object per key.
Whole shards are read sequentially (as WebDataset intends) and sliced in memory.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import hashlib
import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from shards.atomic import atomic_path
from shards.console import UserError
from shards.schema import OK, check_version, parquet_files, read_columns

log = logging.getLogger("iipa.shards")

LOCATE_COLUMNS = ["key", "shard", "offset", "size", "status"]
# What ShardIndex holds: rows grouped by a hash of their key into partitions (part_bounds[p] is
# the first row of partition p), so a lookup builds many small hash tables instead of one big one.
ARRAYS = ("key_array", "shard_names", "shard", "offsets", "sizes", "part_bounds")
ROWS_PER_PART = 1 << 16  # small enough for a partition's hash table to stay in cache
LOCATE_FILE = ".locate"  # DIR/.locate: those arrays, for every rank to map instead of scanning the slices


@dataclass(frozen=True)
class Location:
    shard: str
    offset: int
    size: int


class ShardIndex:
    """Where every `ok` sample of a shards folder sits, as flat arrays indexed by row."""

    def __init__(self, shards_dir: str | Path, arrays: dict | None = None):
        """Map the folder's locate file (or scan its Parquet slices) on first use, or take `arrays`
        (ARRAYS) as they are, e.g. memory-mapped from a pair cache."""
        self.dir = Path(shards_dir)
        if not (self.dir / "manifest.json").exists():
            raise UserError(f"{self.dir}: not a shards folder (no manifest.json)")
        for name, value in (arrays or {}).items():
            setattr(self, name, value)

    def __getattr__(self, name: str):
        # The slices are read on first use only: a trainer whose pair caches are warm never reads them.
        if name not in ARRAYS:
            raise AttributeError(name)
        for key, value in self._read(self.dir).items():
            setattr(self, key, value)
        return getattr(self, name)

    @staticmethod
    def _read(shards_dir: Path) -> dict:
        """The folder's locate file when it is current (shards build writes it last), else a scan
        of the slices, kept as the locate file for the next reader."""
        path, fingerprint = shards_dir / LOCATE_FILE, _fingerprint(shards_dir)
        if (mapped := _map_arrays(path, fingerprint)) is not None:
            return _index_arrays(*mapped)
        arrays = _scan_slices(shards_dir)
        try:
            header, flat = _flat_arrays(arrays)
            _write_arrays(path, {"fingerprint": fingerprint, **header}, flat)
        except OSError as exc:  # a read-only shards folder: scan again next time
            log.warning("cannot write the locate file %s (%s); scanning the slices again next time", path, exc)
        return arrays

    def arrays(self) -> dict:
        return {name: getattr(self, name) for name in ARRAYS}

    def subset(self, rows: np.ndarray) -> "ShardIndex":
        """The index of just `rows` (in that order), sharing shard ids and names."""
        take = pa.array(rows)
        return ShardIndex(self.dir, {"key_array": self.key_array.take(take), "shard_names": self.shard_names,
                                     "shard": self.shard[rows], "offsets": self.offsets[rows],
                                     "sizes": self.sizes[rows], "part_bounds": np.array([0, len(rows)])})

    def __len__(self) -> int:
        return len(self.key_array)

    def rows(self, keys) -> np.ndarray:
        """Row of each key (-1 where the key has no `ok` sample), in vectorised lookups."""
        if not isinstance(keys, (pa.Array, pa.ChunkedArray)):
            keys = pa.array(keys, self.key_array.type)
        keys = keys.cast(self.key_array.type)
        if 4 * len(keys) < len(self.key_array):
            return self._rows_of_few(keys)
        parts = len(self.part_bounds) - 1
        if parts == 1:
            return pc.fill_null(pc.index_in(keys, value_set=self.key_array), -1).to_numpy().astype(np.int64)
        # Each chunk's keys ordered by partition (orders, not copies of the strings), then one small
        # lookup per partition over its keys gathered from every chunk (threads: Arrow releases
        # the GIL). At 10 M keys about twice as fast as one lookup, in a fraction of the memory.
        chunks = keys.chunks if isinstance(keys, pa.ChunkedArray) else [keys]
        groups, base = [], 0
        for chunk in chunks:
            part = key_parts(chunk, parts)
            order = np.argsort(part, kind="stable").astype(np.int32)  # a chunk holds < 2**31 keys; half the memory
            groups.append((chunk, order, np.searchsorted(part[order], np.arange(parts + 1)), base))
            base += len(chunk)
        rows = np.empty(len(keys), dtype=np.int64)

        def lookup(p: int) -> None:
            first, end = int(self.part_bounds[p]), int(self.part_bounds[p + 1])
            asked = pa.chunked_array([chunk.take(pa.array(order[starts[p]:starts[p + 1]]))
                                      for chunk, order, starts, _ in groups], type=keys.type)
            found = pc.index_in(asked, value_set=self.key_array.slice(first, end - first))
            found = pc.fill_null(pc.add(found, first), -1).to_numpy()
            at = 0
            for _, order, starts, chunk_base in groups:
                mine = order[starts[p]:starts[p + 1]]
                rows[chunk_base + mine] = found[at:at + len(mine)]
                at += len(mine)

        with ThreadPoolExecutor(min(parts, len(os.sched_getaffinity(0)), 8)) as pool:
            list(pool.map(lookup, range(parts)))
        return rows

    def _rows_of_few(self, keys: pa.Array) -> np.ndarray:
        # Few keys (a validation split): hash those, not the 10 M of the index, and scan the index once.
        wanted = pc.unique(keys)
        hit = pc.fill_null(pc.index_in(self.key_array, value_set=wanted), -1).to_numpy()
        row_of_wanted = np.full(len(wanted), -1, dtype=np.int64)
        row_of_wanted[hit[hit >= 0]] = np.flatnonzero(hit >= 0)
        return row_of_wanted[pc.index_in(keys, value_set=wanted).to_numpy()]

    def key(self, row: int) -> str:
        return self.key_array[int(row)].as_py()

    def keys_of(self, rows: np.ndarray) -> np.ndarray:
        return self.key_array.take(pa.array(rows)).to_numpy(zero_copy_only=False)

    @property
    def keys(self) -> np.ndarray:
        """Every key as a NumPy array of str (small tools only: a Python object per key)."""
        return self.key_array.to_numpy(zero_copy_only=False)

    @cached_property
    def _row(self) -> dict[str, int]:
        # Built only for the scalar look-ups of small tools and tests; the trainer never asks.
        return {k: i for i, k in enumerate(self.key_array.to_pylist())}

    def check_files(self) -> None:
        """Every tar this index points into exists and holds its samples' bytes: a missing or
        truncated shard is one clear line before the work, not a decoding failure in the middle
        of it. One pass over the offsets (ufunc.at: 0.05 s for 10 M samples)."""
        ends = np.zeros(len(self.shard_names), dtype=np.int64)
        np.maximum.at(ends, self.shard, self.offsets + self.sizes)
        used = np.flatnonzero(ends)
        absent = [name for name in self.shard_names[used] if not (self.dir / name).is_file()]
        if absent:
            raise UserError(f"{len(absent)} shard(s) missing from {self.dir}, e.g. {absent[0]}: "
                            "rebuild them with `iipa shards build` (it resumes)")
        for i in used:
            size = (self.dir / self.shard_names[i]).stat().st_size
            if size < ends[i]:
                raise UserError(f"{self.dir / self.shard_names[i]}: truncated ({size} bytes, its samples need "
                                f"{ends[i]}): run `iipa shards verify`, then rebuild the shard")

    def locate_row(self, row: int) -> Location:
        return Location(self.shard_names[self.shard[row]], int(self.offsets[row]), int(self.sizes[row]))

    def read_shard(self, shard: str) -> bytes:
        return (self.dir / shard).read_bytes()

    def slice(self, data: bytes, row: int) -> bytes:
        """One sample's bytes out of its whole shard's bytes."""
        offset = int(self.offsets[row])
        return data[offset:offset + int(self.sizes[row])]

    def read_row(self, row: int) -> bytes:
        """One sample's bytes by offset (no whole-shard read)."""
        with open(self.dir / self.shard_names[self.shard[row]], "rb") as f:
            f.seek(int(self.offsets[row]))
            return f.read(int(self.sizes[row]))

    def read(self, key: str) -> bytes:
        return self.read_row(self._row[key])


def _scan_ok_rows(shards_dir: Path) -> pa.Table:
    """key, shard (dictionary-encoded, as Parquet stores it), offset and size of the `ok` rows,
    every slice scanned in parallel by Arrow's dataset reader with the status filter pushed into
    the scan: at 2 000 slices about 3× faster than reading them one by one. Each slice's schema
    version is checked first, as read_table does."""
    files = [str(f) for f in parquet_files(shards_dir)]
    options = ds.ParquetReadOptions(dictionary_columns=["shard"])
    dataset = ds.dataset(files, format=ds.ParquetFileFormat(read_options=options))
    for fragment in dataset.get_fragments():
        check_version(fragment.physical_schema.metadata, fragment.path)
    return dataset.to_table(columns=["key", "shard", "offset", "size"], filter=ds.field("status") == OK)


def _scan_slices(shards_dir: Path) -> dict:
    """key_array, shard_names, shard, offsets and sizes of the `ok` rows, from the slices."""
    try:
        table = _scan_ok_rows(shards_dir)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # slices whose types differ: the strict, slower reader
        table = read_columns(shards_dir, "images", LOCATE_COLUMNS, dictionary=("shard",))
        table = table.filter(pc.equal(table.column("status"), OK))
    table = table.unify_dictionaries()
    shard = table.column("shard").combine_chunks()
    # Shard ids follow the sorted shard names, so an id order is a name order.
    names = np.asarray(shard.dictionary.to_pylist(), dtype=object)
    order = np.argsort(names)
    rank = np.empty(len(names), dtype=np.int32)
    rank[order] = np.arange(len(names), dtype=np.int32)
    keys = table.column("key").combine_chunks()
    parts = 1 << max(0, min(8, int(np.log2(max(1, len(keys) // ROWS_PER_PART)))))
    part = key_parts(keys, parts)
    rows = np.argsort(part, kind="stable")  # rows grouped by partition, in scan order within one
    return {"key_array": keys.take(pa.array(rows)), "shard_names": names[order],
            "shard": rank[shard.indices.to_numpy()][rows],
            "offsets": table.column("offset").to_numpy().astype(np.int64, copy=False)[rows],
            "sizes": table.column("size").to_numpy().astype(np.int64, copy=False)[rows],
            "part_bounds": np.searchsorted(part[rows], np.arange(parts + 1))}


def string_buffers(keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow string array's offsets (this array's slice of them) and UTF-8 bytes, zero-copy."""
    offsets = np.frombuffer(keys.buffers()[1], OFFSETS[keys.type])[keys.offset:keys.offset + len(keys) + 1]
    return offsets, np.frombuffer(keys.buffers()[2] or b"", np.uint8)


def key_parts(keys: pa.Array | pa.ChunkedArray, parts: int) -> np.ndarray:
    """Each key's partition (0 … parts-1, a power of two): a multiplicative hash of the key's
    length and last 8 bytes, where identifiers differ most. One gather per key, no Python per
    key; a key's partition depends on its own bytes only. Locate files store rows grouped by
    it, and their fingerprint holds what it makes of a few keys, so a changed hash rebuilds them."""
    if isinstance(keys, pa.ChunkedArray):
        return np.concatenate([key_parts(c, parts) for c in keys.chunks] or [np.empty(0, np.uint16)])
    if parts == 1 or len(keys) == 0:
        return np.zeros(len(keys), dtype=np.uint16)
    offsets, data = string_buffers(keys)
    if len(data) < 8 or offsets[1:].min() < 8:  # a key within the first 8 bytes: 8 bytes of zeros before it
        data, offsets = np.concatenate([np.zeros(8, np.uint8), data]), offsets + 8
    words = np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))  # 8 bytes from every offset
    length = np.diff(offsets).astype(np.uint64)
    with np.errstate(over="ignore"):
        # The 8 bytes ending at the key's end, the bytes before its start shifted out (little-endian);
        # the top bits of one odd multiply depend on every bit below them.
        last = words[offsets[1:] - 8] >> ((np.uint64(8) - np.minimum(length, np.uint64(8))) * np.uint64(8))
        h = (last ^ (length << np.uint64(56))) * np.uint64(0x9E3779B97F4A7C15)
    return (h >> np.uint64(64 - int(np.log2(parts)))).astype(np.uint16)


def write_locate_file(shards_dir: str | Path) -> None:
    """Write DIR/.locate now, so that the first trainer maps it instead of scanning the slices
    (shards build and rebuild call this after the manifest)."""
    ShardIndex._read(Path(shards_dir))


@dataclass
class ResolvedPairs:
    """A pair manifest resolved against a shards folder: each pair's two images as rows of a
    compact index holding only the images these pairs use, in the manifest's order."""

    index: ShardIndex
    hi: np.ndarray  # int64 rows of `index`
    lo: np.ndarray
    dropped: np.ndarray  # int64 manifest rows of the pairs left out: an image is not in the shards
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # further manifest columns, kept pairs only

    @property
    def missing(self) -> int:
        return len(self.dropped)


# Part of every fingerprint: bump it whenever what the files hold changes (a change of key_parts
# is caught by the fingerprint's probe of it).
CACHE_VERSION = 4  # 2: rows grouped by key partition (part_bounds); 3: the probe of key_parts; 4: dropped
OFFSETS = {pa.string(): np.int32, pa.large_string(): np.int64}  # Arrow string offsets, by key type


def resolve_pairs(pairs_file: str | Path, index: ShardIndex, cache: bool = True,
                  columns: tuple[str, ...] = ()) -> ResolvedPairs:
    """The one reader of a pair manifest: every pair's keys resolved to rows once, vectorised,
    the pairs missing an image dropped. With `cache`, the result is kept in
    `PAIRS/.{split}.resolved` (memory-mapped by every rank of a node, so they share one copy
    through the page cache), rebuilt whenever the shards' slices or the manifest change. A hit
    never reads the slices (`index` loads them on first use), so splits may share one index.
    `columns` (e.g. user_id, rule) are read as well, for the kept pairs in their order; the
    trainer asks for none and reads only the keys, and only when the cache is cold."""
    pairs_file = Path(pairs_file)
    resolved = _resolve_cached(pairs_file, index) if cache else _resolve(pairs_file, index)
    if columns:
        table = read_columns(pairs_file, "pairs", list(columns))
        if table.num_rows != len(resolved.hi) + resolved.missing:
            raise UserError(f"{pairs_file}: rewritten while it was read; run again")
        resolved.columns = {name: np.delete(table.column(name).to_numpy(zero_copy_only=False), resolved.dropped)
                            for name in columns}
    return resolved


def merge_resolved(parts: list[ResolvedPairs], index: ShardIndex) -> ResolvedPairs:
    """Several resolved manifests (e.g. the splits of a pairs folder) as one, in order, over one
    compact index: an image two of them share is one row. `dropped` counts the manifests' rows
    as if they were concatenated."""
    if len(parts) == 1:
        return parts[0]
    full = [index.rows(part.index.key_array) for part in parts]  # each compact index's rows in `index`
    hi = np.concatenate([rows[part.hi] for rows, part in zip(full, parts)])
    lo = np.concatenate([rows[part.lo] for rows, part in zip(full, parts)])
    starts = np.cumsum([0] + [len(part.hi) + part.missing for part in parts])
    dropped = np.concatenate([part.dropped + start for part, start in zip(parts, starts)])
    columns = {name: np.concatenate([part.columns[name] for part in parts]) for name in parts[0].columns}
    return ResolvedPairs(*_compact(index, hi, lo), dropped, columns)


def resolve_in_background(shards_dir: str | Path, pairs_files: list[Path]) -> Future:
    """Resolve the manifests into their caches on a thread, so that a trainer's imports and model
    set-up (Python, holding the GIL) overlap the resolution (NumPy and Arrow, releasing it). The
    Future's result is None, or the first error, re-raised where the trainer waits for it."""
    index = ShardIndex(shards_dir)

    def resolve_all() -> None:  # the results are dropped: the trainer maps the caches written
        for pairs_file in pairs_files:
            if pairs_file.exists():
                resolve_pairs(pairs_file, index)

    pool = ThreadPoolExecutor(1, thread_name_prefix="resolve-pairs")
    future = pool.submit(resolve_all)
    pool.shutdown(wait=False)
    return future


def _resolve_cached(pairs_file: Path, index: ShardIndex) -> ResolvedPairs:
    """`_resolve` through the cache file beside the manifest (see resolve_pairs)."""
    path = pairs_file.with_name(f".{pairs_file.stem}.resolved")
    fingerprint = _fingerprint(index.dir, pairs_file)
    if (mapped := _map_arrays(path, fingerprint)) is not None:
        header, a = mapped
        return ResolvedPairs(ShardIndex(index.dir, _index_arrays(header, a)), a["hi"], a["lo"], a["dropped"])
    resolved = _resolve(pairs_file, index)
    try:
        header, flat = _flat_arrays(resolved.index.arrays())
        _write_arrays(path, {"fingerprint": fingerprint, **header},
                      {"hi": resolved.hi, "lo": resolved.lo, "dropped": resolved.dropped, **flat})
    except OSError as exc:  # a read-only pairs folder: run without the cache
        log.warning("cannot write the pair cache %s (%s); resolving again next time", path, exc)
    return resolved


def _resolve(pairs_file: Path, index: ShardIndex) -> ResolvedPairs:
    table = read_columns(pairs_file, "pairs", ["hi_key", "lo_key"])
    n = table.num_rows
    # One lookup for both columns: Arrow builds the hash tables of the images' keys per call.
    rows = index.rows(pa.chunked_array(table.column("hi_key").chunks + table.column("lo_key").chunks))
    hi, lo = rows[:n], rows[n:]
    present = (hi >= 0) & (lo >= 0)
    return ResolvedPairs(*_compact(index, hi[present], lo[present]), np.flatnonzero(~present))


def _compact(index: ShardIndex, hi: np.ndarray, lo: np.ndarray) -> tuple[ShardIndex, np.ndarray, np.ndarray]:
    """The images that rows `hi` and `lo` of `index` use, as an index of their own (in index order,
    renumbered: linear, a mask, not a sort), and hi and lo as its rows."""
    in_use = np.zeros(len(index), dtype=bool)
    in_use[hi] = in_use[lo] = True
    used = np.flatnonzero(in_use)
    number = np.zeros(len(index), dtype=np.int64)
    number[used] = np.arange(len(used))
    return index.subset(used), number[hi], number[lo]


def _fingerprint(shards_dir: Path, *more: Path) -> str:
    """Changes whenever a slice or the manifest (or one of `more`, e.g. a pair manifest) is rewritten;
    not when the folders are copied or moved whole (names, sizes and times only)."""
    files = [*more, shards_dir / "manifest.json", *parquet_files(shards_dir)]
    stats = [(f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in files if f.exists()]
    # What key_parts makes of a few keys: files grouped by another partition function are stale.
    probe = key_parts(pa.array([f"{10 ** 18 + i}_{i % 4}" for i in range(16)] + ["a", "k001"]), 256).tolist()
    return hashlib.sha1(json.dumps([CACHE_VERSION, probe, stats]).encode()).hexdigest()


def _flat_arrays(index: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """An index's arrays as a JSON header part and flat NumPy arrays (the keys as their Arrow
    offsets and bytes, zero-copy), as `_write_arrays` stores them."""
    key_offsets, key_bytes = string_buffers(index["key_array"])
    return {"shard_names": index["shard_names"].tolist()}, {
        "key_offsets": key_offsets, "key_bytes": key_bytes,
        "shard": index["shard"], "offsets": index["offsets"], "sizes": index["sizes"],
        "part_bounds": np.asarray(index["part_bounds"], dtype=np.int64)}


def _index_arrays(header: dict, arrays: dict[str, np.ndarray]) -> dict:
    """The inverse of `_flat_arrays`: ShardIndex's arrays from a mapped file."""
    offsets = arrays["key_offsets"]
    key_type = pa.large_string() if offsets.dtype == np.int64 else pa.string()
    keys = pa.Array.from_buffers(key_type, len(offsets) - 1,
                                 [None, pa.py_buffer(offsets), pa.py_buffer(arrays["key_bytes"])])
    return {"key_array": keys, "shard_names": np.asarray(header["shard_names"], dtype=object),
            "shard": arrays["shard"], "offsets": arrays["offsets"], "sizes": arrays["sizes"],
            "part_bounds": arrays["part_bounds"]}


def _write_arrays(path: Path, header: dict, arrays: dict[str, np.ndarray]) -> None:
    """One file: a JSON header line, then each array's raw bytes at a 64-byte aligned offset, so a
    reader maps it without copying (write, then rename)."""
    layout, position = {}, 0
    for name, a in arrays.items():
        layout[name] = {"dtype": a.dtype.str, "shape": len(a), "offset": position}
        position += -(-a.nbytes // 64) * 64
    line = json.dumps({**header, "arrays": layout}).encode() + b"\n"
    start = -(-len(line) // 64) * 64
    with atomic_path(path, tag=str(os.getpid())) as tmp, open(tmp, "wb") as f:
        f.write(line.ljust(start, b" "))
        for name, a in arrays.items():
            f.seek(start + layout[name]["offset"])
            f.write(memoryview(np.ascontiguousarray(a)).cast("B"))


def _map_arrays(path: Path, fingerprint: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """The header and memory-mapped arrays of a file `_write_arrays` wrote with this fingerprint
    (None when it is absent, unreadable or stale)."""
    try:
        with open(path, "rb") as f:
            line = f.readline()
        header = json.loads(line)
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("fingerprint") != fingerprint:
        return None
    start = -(-len(line) // 64) * 64  # the arrays start at the first aligned offset after the header
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    arrays = {}
    for name, spec in header["arrays"].items():
        dtype = np.dtype(spec["dtype"])
        begin = start + spec["offset"]
        arrays[name] = mm[begin:begin + spec["shape"] * dtype.itemsize].view(dtype)
    return header, arrays


def open_webdataset(shards_dir: str | Path, **kwargs):
    """The folder's shards as a `webdataset.WebDataset` of (key, JPEG bytes, metadata) samples, in
    shard order, for training with one's own WebDataset pipeline. The metadata is each sample's
    `{key}.json` member: key, tweet_id, user_id, created_at, retweets and likes (the labels a
    popularity model needs). Keyword arguments go to WebDataset (e.g. `shardshuffle=100`,
    `nodesplitter=webdataset.split_by_node`)."""
    import webdataset as wds

    folder = Path(shards_dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    tars = [str(folder / s["tar"]) for s in manifest["shards"] if s["ok"]]  # a tar of failures only is empty
    kwargs.setdefault("shardshuffle", False)
    return wds.WebDataset(tars, **kwargs).to_tuple("__key__", "jpg", "json").map_tuple(None, None, json.loads)
