"""`iipa ingest archive`: tweet archives in, the images table (status = pending) out."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.reader import READERS, FormatError, Malformed, detect_format, parse_time
from shards.schema import IMAGES, conform, write_json, write_table

log = logging.getLogger("iipa.ingest")
BATCH_ROWS = 50_000


@dataclass
class ArchiveConfig:
    """Options of `iipa ingest archive`."""

    paths: list[Path]
    """Archive files to read."""
    out: Path
    """Images table to write: a `.parquet` file, or a folder that receives `images.parquet`."""
    format: str = "auto"
    """Archive format, or `auto` to detect it per file."""
    collected_at: str | None = None
    """When the counts were read (ISO time), where the archive does not say."""
    media: list[str] = field(default_factory=lambda: ["photo"])
    """Media types to keep (photos only by default; videos and GIFs are skipped)."""


def images_path(out: Path) -> Path:
    """Where an images table named OUT is written: OUT itself if it ends in .parquet."""
    return out if out.suffix == ".parquet" else out / "images.parquet"


def latest_per_key(table: pa.Table) -> pa.Table:
    """Keep one row per key: the one whose counts were read last (the same tweet seen twice)."""
    order = pc.sort_indices(table, [("key", "ascending"), ("collected_at", "descending")])
    table = table.take(order)
    keys = table.column("key").to_numpy(zero_copy_only=False)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return table.filter(pa.array(first))


def ingest_archive(config: ArchiveConfig) -> dict:
    """Parse every archive into one deduplicated images table; return a summary."""
    if config.format != "auto" and config.format not in READERS:
        raise FormatError(f"unknown format {config.format!r}; choose auto or {', '.join(READERS)}")
    collected_at = parse_time(config.collected_at) if config.collected_at else None
    for path in config.paths:
        if not Path(path).is_file():
            raise FormatError(f"{path}: no such file")
    batches, rows, malformed = [], [], []
    for path in config.paths:
        fmt = detect_format(path) if config.format == "auto" else config.format
        for item in READERS[fmt](Path(path), collected_at, frozenset(config.media)):
            if isinstance(item, Malformed):
                malformed.append(item)
                log.warning("%s:%d: skipped malformed record (%s)", item.path, item.line, item.reason)
                continue
            rows.append(item)
            if len(rows) >= BATCH_ROWS:
                batches.append(conform(pa.Table.from_pylist(rows), IMAGES, "images"))
                rows = []
    batches.append(conform(pa.Table.from_pylist(rows, schema=IMAGES) if not rows
                           else pa.Table.from_pylist(rows), IMAGES, "images"))
    table = latest_per_key(pa.concat_tables(batches))
    out = write_table(table, images_path(Path(config.out)), "images")
    summary = {
        "images": table.num_rows,
        "tweets": len(pc.unique(table.column("tweet_id"))),
        "users": len(pc.unique(table.column("user_id"))),
        "malformed": len(malformed),
        "malformed_lines": [f"{m.path}:{m.line}" for m in malformed[:100]],
        "out": str(out),
    }
    write_json(summary, out.with_name(out.stem + ".summary.json"))
    return summary
