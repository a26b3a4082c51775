"""`iipa ingest archive`: tweet archives in, the images table (status = pending) out.

Memory stays flat in the archive's size: readers stream, rows are gathered into Arrow batches
and spilled to temporary Arrow files partitioned by tweet id (so every copy of a tweet lands in
the same partition), and each partition is then deduplicated on its own (the copy read last
wins) and appended to the Parquet output, which is renamed into place only when complete.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.reader import READERS, FormatError, Malformed, detect_format, parse_time
from shards.console import progress
from shards.schema import IMAGES, conform, write_json

log = logging.getLogger("iipa.ingest")
BATCH_ROWS = 50_000
PARTITION_BYTES = 128 << 20  # archive bytes per spill partition: bounds the rows deduplicated at once
MAX_LOGGED = 20
SEQ = "_seq"


@dataclass
class ArchiveConfig:
    """Options of `iipa ingest archive`."""

    paths: list[Path]
    """Archive files to read (an account archive may be given as its folder)."""
    out: Path
    """Images table to write: a `.parquet` file, or a folder that receives `images.parquet`."""
    format: str = "auto"
    """Archive format, or `auto` to detect it per file."""
    collected_at: str | None = None
    """When the counts were read (ISO time), where the archive does not say."""
    media: list[str] = field(default_factory=lambda: ["photo"])
    """Media types to keep (photos only by default; videos and GIFs are skipped)."""
    columns: dict[str, str] | None = None
    """For tables (CSV/Parquet): field → column name, where a column is not named like its field."""
    originals: bool = True
    """Keep the original tweets that retweets embed (the retweets themselves are always dropped)."""


def images_path(out: Path) -> Path:
    """Where an images table named OUT is written: OUT itself if it ends in .parquet."""
    return out if out.suffix == ".parquet" else out / "images.parquet"


def latest_per_key(table: pa.Table) -> pa.Table:
    """Keep one row per key: the one whose counts were read last (the same tweet seen twice);
    between equal times, the one read last. Rows stay in the order they were read."""
    if pc.count_distinct(table.column("key")).as_py() == table.num_rows:
        return table  # the common case, and a hash pass is much cheaper than a sort
    order = [("collected_at", "ascending", "at_start")]  # a row of unknown time loses to a known one
    if SEQ in table.column_names:
        order.append((SEQ, "ascending", "at_end"))
    by_time = pc.sort_indices(table, order)
    ranked = pa.table({"key": table.column("key").take(by_time), "row": by_time})
    last = ranked.group_by("key", use_threads=False).aggregate([("row", "last")]).column("row_last")
    return table.take(pa.array(np.sort(last.to_numpy())))


def plan(config: ArchiveConfig) -> list[tuple[Path, str]]:
    """Every input with its format, checked before any work starts."""
    if config.format != "auto" and config.format not in READERS:
        raise FormatError(f"unknown format {config.format!r}; choose auto or {', '.join(READERS)}")
    try:
        parse_time(config.collected_at)
    except ValueError:
        raise FormatError(f"--collected-at: {config.collected_at!r} is not an ISO time") from None
    if config.columns and config.format not in ("auto", "table"):
        raise FormatError("--columns applies to tables (CSV/Parquet) only")
    files = []
    for path in map(Path, config.paths):
        if not path.exists():
            raise FormatError(f"{path}: no such file")
        if path.is_dir() and config.format not in ("auto", "account"):
            raise FormatError(f"{path}: a folder (only an account archive may be given as a folder)")
        files.append((path, detect_format(path) if config.format == "auto" else config.format))
    return files


def input_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.js")) if path.is_dir() else path.stat().st_size


def partition_of(tweet_ids: pa.ChunkedArray | pa.Array, parts: int) -> np.ndarray:
    """A partition number per row, a function of the tweet id alone."""
    try:  # tweet ids are decimal: their last digits spread evenly
        tail = pc.cast(pc.utf8_slice_codeunits(tweet_ids, -9), pa.int64()).to_numpy()
        return (tail % parts).astype(np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array([zlib.crc32(t.encode()) % parts for t in tweet_ids.to_pylist()], dtype=np.int64)


class Spill:
    """Arrow files, one per partition, that receive row batches while the archives are read."""

    def __init__(self, folder: Path, parts: int):
        self.schema = IMAGES.append(pa.field(SEQ, pa.int64()))
        self.paths = [folder / f"part-{i:05d}.arrow" for i in range(parts)]
        self.writers = [pa.ipc.new_file(p, self.schema) for p in self.paths]
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        table = conform(table, IMAGES, "images")
        table = table.append_column(SEQ, pa.array(np.arange(self.rows, self.rows + table.num_rows), pa.int64()))
        table = table.replace_schema_metadata(None).cast(self.schema)
        self.rows += table.num_rows
        parts = len(self.writers)
        if parts == 1:
            self.writers[0].write_table(table)
            return
        part = partition_of(table.column("tweet_id"), parts)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(parts + 1))
        table = table.take(pa.array(order))
        for i, writer in enumerate(self.writers):
            if bounds[i + 1] > bounds[i]:
                writer.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]))

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def partitions(self):
        """Each partition's rows, read back one at a time."""
        for path in self.paths:
            with pa.memory_map(str(path)) as source:
                yield pa.ipc.open_file(source).read_all()
            path.unlink()


def read_inputs(files, config: ArchiveConfig, spill: Spill) -> tuple[list[dict], int, list[str]]:
    """Stream every input into the spill; return per-file counts, malformed count and first lines."""
    collected_at = parse_time(config.collected_at) if config.collected_at else None
    per_file, malformed, first_bad = [], 0, []
    bar = progress(unit=" rows", desc="ingest")
    for path, fmt in files:
        counts = {"path": str(path), "format": fmt, "rows": 0, "malformed": 0}
        rows: list[dict] = []
        for item in READERS[fmt](path, collected_at, frozenset(config.media), columns=config.columns,
                                 originals=config.originals):
            if isinstance(item, pa.Table):
                spill.add(item)
                counts["rows"] += item.num_rows
                bar.update(item.num_rows)
            elif isinstance(item, Malformed):
                counts["malformed"] += 1
                malformed += 1
                if len(first_bad) < 100:
                    first_bad.append(f"{item.path}:{item.line}")
                if malformed <= MAX_LOGGED:
                    log.warning("%s:%d: skipped malformed record (%s)", item.path, item.line, item.reason)
            else:
                rows.append(item)
                if len(rows) >= BATCH_ROWS:
                    spill.add(pa.Table.from_pylist(rows))
                    counts["rows"] += len(rows)
                    bar.update(len(rows))
                    rows = []
        if rows:
            spill.add(pa.Table.from_pylist(rows))
            counts["rows"] += len(rows)
            bar.update(len(rows))
        per_file.append(counts)
    bar.close()
    if malformed > MAX_LOGGED:
        log.warning("%d malformed records in all (the first %d are listed in the summary)", malformed, len(first_bad))
    return per_file, malformed, first_bad


def merge(spill: Spill, out: Path) -> dict:
    """Deduplicate each partition and append it to the Parquet output (renamed when complete)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    schema = conform(IMAGES.empty_table(), IMAGES, "images").schema
    images, tweets, users = 0, 0, set()
    # Dictionary pages only where values repeat: for unique strings they cost time and save nothing.
    repeats = ["user_id", "collected_at", "hashtags", "mentions", "caption_words", "media_count", "status"]
    with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=repeats) as writer:
        for part in spill.partitions():
            table = conform(latest_per_key(part).drop_columns([SEQ]), IMAGES, "images")
            writer.write_table(table)
            images += table.num_rows
            tweets += len(pc.unique(table.column("tweet_id")))
            users.update(pc.unique(table.column("user_id")).to_pylist())
    os.replace(tmp, out)
    return {"images": images, "tweets": tweets, "users": len(users)}


def ingest_archive(config: ArchiveConfig) -> dict:
    """Parse every archive into one deduplicated images table; return a summary."""
    files = plan(config)
    out = images_path(Path(config.out))
    parts = max(1, -(-sum(input_bytes(p) for p, _ in files) // PARTITION_BYTES))
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ingest-", dir=out.parent) as tmp:
        spill = Spill(Path(tmp), parts)
        try:
            per_file, malformed, first_bad = read_inputs(files, config, spill)
        finally:
            spill.close()
        counts = merge(spill, out)
    summary = {
        **counts,
        "rows_read": spill.rows,
        "duplicates": spill.rows - counts["images"],
        "malformed": malformed,
        "malformed_lines": first_bad,
        "files": per_file,
        "seconds": round(time.perf_counter() - start, 3),
        "out": str(out),
        "config": {k: (list(map(str, v)) if k == "paths" else str(v) if k == "out" else v)
                   for k, v in asdict(config).items()},
    }
    write_json(summary, out.with_name(out.stem + ".summary.json"))
    log.info("ingest: %d images of %d tweets by %d users from %d file(s); %d malformed record(s) skipped",
             counts["images"], counts["tweets"], counts["users"], len(files), malformed)
    return summary
