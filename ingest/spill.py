"""Deduplication in bounded memory: rows spilled to disk by hash of an id, read back a partition at a time.

Rows go into Arrow IPC files, one per hash partition of a column (the tweet id for images, so
every copy of a tweet lands in the same file). A partition is read twice: a few narrow columns
first, to decide which copy of each key wins, then its rows a batch at a time. What is held at
once is one gathering buffer, one partition's narrow columns and a batch: a partition that holds
more rows than the budget (the archive's size underestimated its rows) is split again before it
is read, so nothing held grows with the archive.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SEQ = "_seq"  # the order rows were read in: between copies read at the same time, the last wins
GATHER_ROWS = 32_768  # rows gathered before they are cut among partitions: few, large writes per file
PARTITION_ROWS = 250_000  # most rows of one partition; its narrow columns are what dedup holds
MAX_PARTS = 256  # files open at once while spilling; more rows than this allows are split again later
MAX_SPLITS = 3  # a partition of one tweet's many copies cannot be split: stop trying


def mixed(numbers: np.ndarray, salt: int) -> np.ndarray:
    """SplitMix64 of numbers + salt: consecutive ids spread evenly, and a new salt spreads the
    rows of one partition over all the partitions of a split (an additive or multiplicative
    hash alone would keep them together)."""
    with np.errstate(over="ignore"):  # the arithmetic wraps on purpose
        z = numbers.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def partition_of(ids: pa.Array | pa.ChunkedArray, parts: int, salt: int = 0) -> np.ndarray:
    """A partition number per row, a function of the id (and the salt) alone."""
    try:  # tweet and user ids are decimal numbers: hash them as numbers, in C
        tail = pc.cast(pc.utf8_slice_codeunits(ids, -18), pa.int64())
        if tail.null_count:
            raise pa.ArrowInvalid("null id")
        numbers = tail.to_numpy().astype(np.uint64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        numbers = np.array([zlib.crc32(i.encode()) for i in ids.to_pylist()], dtype=np.uint64)
    return (mixed(numbers, salt) % np.uint64(parts)).astype(np.int64)


def read_columns(path: Path, names: list[str]) -> pa.Table:
    """Some columns of a spilled partition, without reading the others: memory-mapped, so only
    their pages are touched, and unmapped once the table is released. (Arrow's own column
    selection, `included_fields`, copies every column of each batch instead.)"""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all().select(names)


def read_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """A spilled partition's rows, one batch in memory at a time (read, not memory-mapped, so the
    pages leave memory with the batch)."""
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


class Spill:
    """Arrow files, one per partition of column `by`, that receive row batches of `schema`."""

    def __init__(self, folder: Path, parts: int, schema: pa.Schema, by: str, salt: int = 0):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.schema, self.by, self.salt = folder, schema, by, salt
        self.parts = max(1, min(parts, MAX_PARTS))
        self.paths = [folder / f"part-{i:05d}.arrow" for i in range(self.parts)]
        self.writers = [pa.ipc.new_file(str(p), schema) for p in self.paths]
        self.counts = np.zeros(self.parts, dtype=np.int64)
        self.gathered: list[pa.Table] = []
        self.gathered_rows = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        """Queue rows of `schema`; they reach the files GATHER_ROWS at a time."""
        self.gathered.append(table)
        self.gathered_rows += table.num_rows
        self.rows += table.num_rows
        if self.gathered_rows >= GATHER_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.gathered:
            return
        table = pa.concat_tables(self.gathered)
        self.gathered, self.gathered_rows = [], 0
        part = partition_of(table.column(self.by), self.parts, self.salt)
        order = np.argsort(part, kind="stable")  # stable: rows keep their reading order within a partition
        bounds = np.searchsorted(part[order], np.arange(self.parts + 1))
        table = table.take(pa.array(order))
        for i, writer in enumerate(self.writers):
            if bounds[i + 1] > bounds[i]:
                writer.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]))
        self.counts += np.diff(bounds)

    def close(self) -> None:
        self.flush()
        for writer in self.writers:
            writer.close()

    def partitions(self) -> Iterator[Path]:
        """Each partition's file, none over PARTITION_ROWS rows unless it cannot be split; each is
        deleted once the caller has moved on to the next."""
        for path, rows in zip(self.paths, self.counts):
            if rows > PARTITION_ROWS and self.salt < MAX_SPLITS:
                yield from self.split(path, int(rows))
            else:
                yield path
            path.unlink()

    def split(self, path: Path, rows: int) -> Iterator[Path]:
        """A partition too large to read at once, spilled again into smaller ones by a new hash."""
        parts = -(-2 * rows // PARTITION_ROWS)  # half full on average: room for an uneven spread
        smaller = Spill(path.with_suffix(""), parts, self.schema, self.by, self.salt + 1)
        try:
            for batch in read_batches(path):
                smaller.add(pa.Table.from_batches([batch]))
        finally:
            smaller.close()
        yield from smaller.partitions()
        smaller.folder.rmdir()


def winners(keys: pa.Table) -> np.ndarray | None:
    """The SEQ of each key's kept row, sorted, or None when no key repeats: the row whose counts
    were read last (a row of unknown time loses to a known one); between equal times, the one
    read last."""
    if pc.count_distinct(keys.column("key")).as_py() == keys.num_rows:
        return None  # the common case, and a hash pass is much cheaper than a sort
    by_time = pc.sort_indices(keys, [("collected_at", "ascending", "at_start"), (SEQ, "ascending", "at_end")])
    ranked = pa.table({"key": keys.column("key").take(by_time), "seq": keys.column(SEQ).take(by_time)})
    last = ranked.group_by("key", use_threads=False).aggregate([("seq", "last")]).column("seq_last")
    return np.sort(last.to_numpy())


def kept_rows(path: Path, keep: np.ndarray | None) -> Iterator[pa.RecordBatch]:
    """A partition's rows whose SEQ is in `keep` (all of them for None), in reading order, less SEQ."""
    for batch in read_batches(path):
        if keep is not None:
            seq = batch.column(SEQ).to_numpy()
            at = np.minimum(np.searchsorted(keep, seq), len(keep) - 1)
            batch = batch.filter(pa.array(keep[at] == seq))
        yield batch.drop_columns([SEQ])


def regroup(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Tables of about `rows` rows (the last may hold fewer) from a stream of batches of any size."""
    held, count = [], 0
    for batch in batches:
        if batch.num_rows:
            held.append(batch)
            count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(held)
            held, count = [], 0
    if held:
        yield pa.Table.from_batches(held)
