"""`iipa ingest archive`: tweet archives in, the images table (status = pending) out.

Memory stays flat in the archive's size: readers stream, rows are gathered into Arrow batches
and spilled to temporary Arrow files partitioned by tweet id (so every copy of a tweet lands in
the same partition), and each partition is then deduplicated on its own (the copy read last
wins) and appended to the Parquet output, which is renamed into place only when complete.
Distinct users are counted the same way, through a second spill partitioned by user id
(`ingest.spill` says what is held at once).
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.formats import READERS, Counted, FormatError, Malformed, Skipped, detect_format
from ingest.formats.rows import parse_time
from ingest.spill import SEQ, Spill, kept_rows, read_columns, regroup, winners
from shards.atomic import atomic_path
from shards.console import progress
from shards.schema import IMAGES, conform, write_json

log = logging.getLogger("iipa.ingest")
BATCH_ROWS = 50_000
PARTITION_BYTES = 128 << 20  # archive bytes per spill partition: a first guess of its rows, checked later
ROW_GROUP_ROWS = 32_768  # rows per Parquet row group of the output, gathered across partitions
MAX_LOGGED = 20
WHY = {"collected_at_from_file_time": " (give --collected-at or map collected_at: the ding preset's "
                                      "30-day age rule is judged from it)"}
SPILLED = IMAGES.append(pa.field(SEQ, pa.int64()))
USER_IDS = pa.schema([pa.field("user_id", pa.string())])
# What deduplication and the summary need of a partition, read before its rows.
NARROW = ["key", "tweet_id", "user_id", "collected_at", SEQ]
COUNTS = ("retweets", "likes", "replies", "quotes")


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
    constants: dict[str, str] | None = None
    """For tables: field → a value every row gets (`user_id` of a single-account export)."""


def images_path(out: Path) -> Path:
    """Where an images table named OUT is written: OUT itself if it ends in .parquet."""
    return out if out.suffix == ".parquet" else out / "images.parquet"


def plan(config: ArchiveConfig) -> list[tuple[Path, str]]:
    """Every input with its format, checked before any work starts."""
    if config.format != "auto" and config.format not in READERS:
        raise FormatError(f"unknown format {config.format!r}; choose auto or {', '.join(READERS)}")
    try:
        parse_time(config.collected_at)
    except ValueError:
        raise FormatError(f"--collected-at: {config.collected_at!r} is not an ISO time") from None
    if (config.columns or config.constants) and config.format not in ("auto", "table"):
        raise FormatError("--columns and --set apply to tables (CSV/Parquet) only")
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


def numbered(table: pa.Table, first: int) -> pa.Table:
    """Rows conformed to the images table, numbered from `first` in reading order (SEQ)."""
    table = conform(table, IMAGES, "images")
    seq = pa.array(np.arange(first, first + table.num_rows), pa.int64())
    return table.append_column(SEQ, seq).replace_schema_metadata(None).cast(SPILLED)


def without_negative_counts(table: pa.Table, skipped: dict) -> pa.Table:
    """The rows whose counts are all ≥ 0; the tweets of the others are counted (a negative count
    would make `pairs build` refuse the whole table)."""
    bad = None
    for name in COUNTS:
        if name in table.column_names:
            negative = pc.fill_null(pc.less(table.column(name), 0), False)
            bad = negative if bad is None else pc.or_(bad, negative)
    if bad is None or not pc.any(bad).as_py():
        return table
    add(skipped, "negative_count", pc.count_distinct(table.column("tweet_id").filter(bad)).as_py())
    return table.filter(pc.invert(bad))


def add(counts: dict, reason: str, n: int) -> None:
    counts[reason] = counts.get(reason, 0) + n


def said(counts: dict) -> str:
    """Per-reason counts as a phrase: `3 retweet, 1 not a tweet`."""
    return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(counts.items()))


def read_inputs(files, config: ArchiveConfig, spill: Spill) -> tuple[list[dict], int, list[str]]:
    """Stream every input into the spill; return per-file counts, malformed count and first lines."""
    collected_at = parse_time(config.collected_at) if config.collected_at else None
    per_file, malformed, first_bad = [], 0, []
    bar = progress(unit=" rows", desc="ingest")
    for path, fmt in files:
        counts = {"path": str(path), "format": fmt, "rows": 0, "malformed": 0, "skipped": {}, "counted": {}}
        rows: list[dict] = []

        def keep(table: pa.Table) -> None:
            table = without_negative_counts(table, counts["skipped"])
            spill.add(numbered(table, spill.rows))
            counts["rows"] += table.num_rows
            bar.update(table.num_rows)

        for item in READERS[fmt](path, collected_at, frozenset(config.media), columns=config.columns,
                                 constants=config.constants, originals=config.originals):
            if isinstance(item, Skipped):
                add(counts["skipped"], item.reason, item.count)
            elif isinstance(item, Counted):
                counts["counted"][item.reason] = counts["counted"].get(item.reason, 0) + item.count
                log.warning("%s: %d row(s): %s%s", path, item.count, item.reason.replace("_", " "),
                            WHY.get(item.reason, ""))
            elif isinstance(item, pa.Table):
                keep(item)
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
                    keep(pa.Table.from_pylist(rows))
                    rows = []
        if rows:
            keep(pa.Table.from_pylist(rows))
        if not counts["rows"]:
            log.warning("%s: no photo tweet in this file (%s)", path, said(
                {**counts["skipped"], **({"malformed": counts["malformed"]} if counts["malformed"] else {})})
                or "no records")
        per_file.append(counts)
    bar.close()
    if malformed > MAX_LOGGED:
        log.warning("%d malformed records in all (the first %d are listed in the summary)", malformed, len(first_bad))
    return per_file, malformed, first_bad


def totals(counts: list[dict]) -> dict:
    """Per-reason counts of every file, summed."""
    out: dict[str, int] = {}
    for c in counts:
        for reason, n in c.items():
            out[reason] = out.get(reason, 0) + n
    return out


def deduplicated(spill: Spill, users: Spill, counts: dict) -> Iterator[pa.RecordBatch]:
    """The rows of every partition, each key's latest copy only; counts tweets and queues user ids."""
    for path in spill.partitions():
        narrow = read_columns(path, NARROW)
        counts["tweets"] += pc.count_distinct(narrow.column("tweet_id")).as_py()
        users.add(pa.table({"user_id": pc.unique(narrow.column("user_id"))}))
        keep = winners(narrow.select(["key", "collected_at", SEQ]))
        del narrow  # its pages stay mapped while it lives; only `keep` is needed from here on
        yield from kept_rows(path, keep)


def distinct(spill: Spill, column: str) -> int:
    """Distinct values of a column spilled by that column: each value sits in one partition."""
    return sum(pc.count_distinct(read_columns(path, [column]).column(column)).as_py() for path in spill.partitions())


def merge(spill: Spill, out: Path, scratch: Path) -> dict:
    """Deduplicate each partition and append it to the Parquet output (renamed when complete)."""
    schema = conform(IMAGES.empty_table(), IMAGES, "images").schema
    counts = {"images": 0, "tweets": 0}
    users = Spill(scratch / "users", spill.parts, USER_IDS, by="user_id")
    # Dictionary pages only where values repeat: for unique strings they cost time and save nothing.
    repeats = ["user_id", "collected_at", "hashtags", "mentions", "caption_words", "media_count", "status"]
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=repeats) as writer:
            for table in regroup(deduplicated(spill, users, counts), ROW_GROUP_ROWS):
                writer.write_table(conform(table, IMAGES, "images"))
                counts["images"] += table.num_rows
        users.close()
        counts["users"] = distinct(users, "user_id")
    return counts


@contextmanager
def system_allocator():
    """Arrow's own allocators (mimalloc, jemalloc) keep the pages they free for reuse, so resident
    memory climbs to a high-water mark set by the pattern of allocations rather than by what is
    held (a 100k-tweet ingest peaked at 240 MB with mimalloc, 200 MB with the system allocator,
    at the same speed); the system allocator gives them back."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def ingest_archive(config: ArchiveConfig) -> dict:
    """Parse every archive into one deduplicated images table; return a summary."""
    files = plan(config)
    out = images_path(Path(config.out))
    parts = max(1, -(-sum(input_bytes(p) for p, _ in files) // PARTITION_BYTES))
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with system_allocator(), tempfile.TemporaryDirectory(prefix=".ingest-", dir=out.parent) as tmp:
        spill = Spill(Path(tmp) / "images", parts, SPILLED, by="tweet_id")
        try:
            per_file, malformed, first_bad = read_inputs(files, config, spill)
        finally:
            spill.close()
        counts = merge(spill, out, Path(tmp))
    summary = {
        **counts,
        "rows_read": spill.rows,
        "duplicates": spill.rows - counts["images"],
        "malformed": malformed,
        "malformed_lines": first_bad,
        "skipped": totals([f["skipped"] for f in per_file]),
        "counted": totals([f["counted"] for f in per_file]),
        "files": per_file,
        "seconds": round(time.perf_counter() - start, 3),
        "out": str(out),
        "config": {k: (list(map(str, v)) if k == "paths" else str(v) if k == "out" else v)
                   for k, v in asdict(config).items()},
    }
    write_json(summary, out.with_name(out.stem + ".summary.json"))
    log.info("ingest: %d images of %d tweets by %d users from %d file(s); %d malformed record(s); skipped: %s",
             counts["images"], counts["tweets"], counts["users"], len(files), malformed,
             said(summary["skipped"]) or "none")
    return summary
