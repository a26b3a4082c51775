"""`iipa shards build --retry-failed`: fetch again the rows of finished shards that failed for a
reason that may pass (a timeout, a 429, a 5xx), and write those shards anew.

A retried shard keeps its samples where they were: its new tar is the old tar's bytes up to the
end of its last sample, with the recovered samples appended, so every offset of the old slice
stays valid until the new slice replaces it (the slice is the commit point, as in a build). A
kill at any moment leaves a folder whose slices describe their tars; at worst a tar ends with
samples no slice names yet, which the next retry cuts off before appending again.
"""
from __future__ import annotations

import fnmatch
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from shards.console import UserError
from shards.schema import OK, read_columns, read_table

# Statuses that may pass on another try; `http_5xx` stands for every 5NN (shell-style patterns).
TRANSIENT = ("timeout", "truncated", "connection_error", "http_429", "http_5xx")


def status_patterns(statuses: tuple[str, ...]) -> tuple[str, ...]:
    """`http_5xx` → `http_5??`: the patterns a status is matched against."""
    if not statuses:
        raise UserError("--statuses needs at least one status, e.g. timeout,http_5xx")
    return tuple(s.replace("xx", "??") if s.startswith("http_") else s for s in statuses)


def to_retry(status: pa.ChunkedArray, patterns: tuple[str, ...]) -> np.ndarray:
    """Mask of the rows whose status matches one of `patterns`."""
    values = status.to_pylist()
    return np.array([v != OK and any(fnmatch.fnmatchcase(v or "", p) for p in patterns) for v in values], dtype=bool)


def plan_retries(out: Path, names: list[str], patterns: tuple[str, ...]) -> list[tuple[str, pa.Table]]:
    """(name, rows of its slice) of each complete shard with rows to retry."""
    jobs = []
    for name in names:
        # The status column decides; a whole slice (captions and all) is read only when it must be rewritten.
        if to_retry(read_columns(out / f"{name}.parquet", "images", ["status"]).column("status"), patterns).any():
            jobs.append((name, read_table(out / f"{name}.parquet", "images")))
    return jobs


def kept_bytes(tar_path: Path, rows: pa.Table) -> int:
    """Where the old tar's last sample that the slice names ends: what a retry keeps of it."""
    ok_keys = {key for key, status in zip(rows.column("key").to_pylist(), rows.column("status").to_pylist())
               if status == OK}
    end = 0
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if member.name.partition(".")[0] in ok_keys:
                end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return end
