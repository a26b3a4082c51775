"""`iipa shards rebuild`: re-shard a shards folder on Ray without downloading anything again.

Rows are regrouped (by user: a user's images share a shard, so pairs are shard-local) and cut
into new shards; each actor reads its images by offset from the old tars (which every node must
see, e.g. on a shared filesystem), re-resizes them when a smaller `--size` is asked, and writes
its new shards with a consistent Parquet slice. Failed rows are carried over as they are.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from hashlib import sha1
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from shards.console import UserError, check_out
from shards.build.pool import entries, prepare_out, raise_if_failed, run_shard_jobs, write_manifest
from shards.build.resize import ResizeConfig, check_resize, resize_image
from shards.schema import OK, read_table
from shards.build.worker import write_shard
from shards.build.writer import is_complete, shard_name

log = logging.getLogger("iipa.shards")
GROUPINGS = ("none", "user")


@dataclass
class RebuildConfig:
    """Options of `iipa shards rebuild`."""

    shards: Path
    """The shards folder to read."""
    out: Path
    """Folder for the new shards (not inside `shards`)."""
    by: str = "none"
    """`user`: pack whole users into shards (a user larger than a shard spans consecutive
    shards); `none`: keep the old order and only change the shard size."""
    size: int | None = None
    """New shorter side; images already at or below it are copied as they are (never upscaled,
    never re-encoded without need)."""
    shard_size: int = 1000
    """Rows per new shard (with --by user, a shard holds at most this many unless one user has more)."""
    workers: int = 2
    """Actors in the pool."""
    cpus_per_worker: float = 1.0
    """Ray CPUs per actor (rebuilding is decode/encode work, not I/O waiting)."""
    ray_address: str | None = None
    """Address of a running Ray cluster; a local instance is started when unset."""
    prefix: str = "shard"
    """New shard file names are {prefix}-{NNNNNN}.tar."""
    retries: int = 1
    """Times a shard is retried on a fresh actor after its actor died."""
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    """Quality and limits used when re-resizing (its `size` is replaced by `size`)."""


def group_sizes(users: list[str], by: str, shard_size: int) -> list[int]:
    """Rows per new shard, in order, for rows already sorted (by user when `by` is user).

    With `user`, users are packed whole: a shard is closed before a user that would overflow it,
    and a user with more than `shard_size` rows fills shards of their own.
    """
    if by == "none":
        full, rest = divmod(len(users), shard_size)
        return [shard_size] * full + ([rest] if rest else [])
    runs: list[int] = []
    for i, user in enumerate(users):
        if i and user == users[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    sizes: list[int] = []
    current = 0
    for run in runs:
        if current and current + run > shard_size:
            sizes.append(current)
            current = 0
        while run > shard_size:
            sizes.append(shard_size)
            run -= shard_size
        current += run
    return sizes + ([current] if current else [])


def plan_rebuild(config: RebuildConfig) -> tuple[pa.Table, list[tuple[str, pa.Table]]]:
    """Every row in its new order, and the (name, rows) jobs of the shards still to write."""
    table = read_table(config.shards, "images")
    if config.by == "user":
        order = [("user_id", "ascending"), ("created_at", "ascending"), ("key", "ascending")]
    else:
        order = [("shard", "ascending"), ("offset", "ascending"), ("key", "ascending")]
    table = table.take(pc.sort_indices(table, order))
    jobs, start = [], 0
    for shard_id, n in enumerate(group_sizes(table.column("user_id").to_pylist(), config.by, config.shard_size)):
        name = shard_name(config.prefix, shard_id)
        if not is_complete(Path(config.out), name):
            jobs.append((name, table.slice(start, n)))
        start += n
    return table, jobs


def restore_row(row: dict, source: Path, config: RebuildConfig) -> tuple[dict, bytes | None]:
    """One row's image read back by offset (checked against its sha1) and re-resized if asked."""
    if row["status"] != OK:
        return row, None
    with open(source / row["shard"], "rb") as f:
        f.seek(row["offset"])
        data = f.read(row["size"])
    if sha1(data).hexdigest() != row["sha1"]:
        return {**row, "status": "corrupt_source", "error": f"bytes at {row['shard']}:{row['offset']} "
                                                           "do not match the row's sha1"}, None
    if config.size is None or min(row["width"], row["height"]) <= config.size:
        return row, data
    resized = resize_image(data, ResizeConfig(**{**asdict(config.resize), "size": config.size, "min_size": 1}))
    if resized.data is None:
        return {**row, "status": resized.status, "error": resized.error}, None
    return {**row, "width": resized.width, "height": resized.height, "sha1": sha1(resized.data).hexdigest()}, resized.data


class RebuildWorker:
    """A Ray actor that writes whole new shards from the old ones."""

    def __init__(self, config: RebuildConfig):
        self.config = config

    def rebuild(self, job: tuple[str, pa.Table]) -> dict:
        name, rows = job
        try:
            results = (restore_row(r, Path(self.config.shards), self.config) for r in rows.to_pylist())
            return write_shard(Path(self.config.out), name, results)
        except Exception as exc:  # reported by name; the driver fails the run after the others finish
            return {"name": name, "rows": rows.num_rows, "ok": 0, "error": f"{type(exc).__name__}: {exc}"}


def validate(config: RebuildConfig) -> None:
    if config.by not in GROUPINGS:
        raise UserError(f"--by must be one of {', '.join(GROUPINGS)}")
    if config.shard_size < 1 or config.workers < 1 or (config.size is not None and config.size < 16):
        raise UserError("--shard-size and --workers must be ≥ 1 and --size ≥ 16")
    check_resize(config.resize)
    check_out(config.out)
    source, out = Path(config.shards).resolve(), Path(config.out).resolve()
    if not (source / "manifest.json").exists():
        raise UserError(f"{config.shards}: not a shards folder (no manifest.json)")
    if out == source or source in out.parents:
        raise UserError(f"--out {config.out} must not be the shards folder or inside it")


def rebuild_shards(config: RebuildConfig) -> dict:
    """Write the new shards (resuming a killed rebuild), then their manifest; return it."""
    validate(config)
    table, jobs = plan_rebuild(config)
    settings = {"command": "rebuild", "by": config.by, "size": config.size, "source": str(Path(config.shards).resolve())}
    prepare_out(Path(config.out), config.prefix, table.column("key").to_pylist(), config.shard_size, settings,
                asdict(config))
    log.info("%d rows, %d shards to write", table.num_rows, len(jobs))
    results = run_shard_jobs(RebuildWorker, config, "rebuild", jobs)
    failed = [r for r in results if "error" in r]
    resize = asdict(config.resize) | {"size": config.size} if config.size else _source_resize(config.shards)
    manifest = write_manifest(Path(config.out), config.prefix, {"resize": resize, "shard_size": config.shard_size,
                                                                "by": config.by, "rebuilt_from": str(config.shards)},
                              known=entries(results))
    raise_if_failed(failed)
    return manifest


def _source_resize(shards: Path) -> dict | None:
    import json

    return json.loads((Path(shards) / "manifest.json").read_text()).get("resize")
