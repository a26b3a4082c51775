"""`iipa shards build`: Ray actors fetch, decode, resize and write WebDataset shards.

The driver plans shard jobs (rows sorted by user and time, so a user's images share shards and
most pairs are shard-local), skips jobs whose shard is already complete (resume), and hands the
rest to a pool of actors. Each actor builds whole shards with a thread pool for the I/O and
returns one small summary per shard: results come back in batches, not one Ray call per image.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from hashlib import sha1
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from shards.console import UserError, progress
from shards.fetch import FetchConfig, fetch
from shards.resize import ResizeConfig, resize_image
from shards.schema import IMAGES, OK, SCHEMA_VERSION, conform, read_table, write_json
from shards.writer import ShardWriter, is_complete, shard_name

log = logging.getLogger("iipa.shards")


@dataclass
class BuildConfig:
    """Options of `iipa shards build`."""

    images: Path
    """Images table (Parquet file or folder)."""
    out: Path
    """Folder for the shards and manifest.json."""
    only_paired: Path | None = None
    """A pairs folder: fetch only the images some pair uses."""
    shard_size: int = 1000
    """Rows per shard (failed rows count; the tar holds only successes)."""
    workers: int = 2
    """Actors in the pool."""
    threads: int = 8
    """Concurrent fetches inside each actor."""
    cpus_per_worker: float = 0.5
    """Ray CPUs per actor: fractional, as most of the time is spent waiting on I/O."""
    ray_address: str | None = None
    """Address of a running Ray cluster; a local instance is started when unset."""
    prefix: str = "shard"
    """Shard file names are {prefix}-{NNNNNN}.tar."""
    fetch: FetchConfig = field(default_factory=FetchConfig)
    resize: ResizeConfig = field(default_factory=ResizeConfig)


def select_rows(config: BuildConfig) -> pa.Table:
    """The rows to shard, sorted by user then time so that a user's images share shards."""
    table = read_table(config.images, "images")
    if config.only_paired is not None:
        pairs = read_table(config.only_paired, "pairs")
        used = pa.concat_arrays([pairs.column("hi_key").combine_chunks(), pairs.column("lo_key").combine_chunks()])
        table = table.filter(pc.is_in(table.column("key"), pc.unique(used)))
    if len(pc.unique(table.column("key"))) != table.num_rows:
        raise UserError(f"{config.images}: keys are not unique")
    if pc.any(pc.match_substring(table.column("key"), ".")).as_py():
        raise UserError(f"{config.images}: keys must not contain dots (WebDataset splits on them)")
    return table.take(pc.sort_indices(table, [("user_id", "ascending"), ("created_at", "ascending"), ("key", "ascending")]))


def plan(table: pa.Table, config: BuildConfig) -> list[tuple[str, pa.Table]]:
    """Deterministic shard jobs: (name, rows) per `shard_size` rows, complete shards left out."""
    jobs = []
    for shard_id, start in enumerate(range(0, table.num_rows, config.shard_size)):
        name = shard_name(config.prefix, shard_id)
        if not is_complete(Path(config.out), name):
            jobs.append((name, table.slice(start, config.shard_size)))
    return jobs


def process_row(row: dict, session, config: BuildConfig) -> tuple[dict, bytes | None]:
    """Fetch, decode and resize one row; the row comes back with its status (errors are values)."""
    try:
        fetched = fetch(row["url"], session, config.fetch)
        if fetched.data is None:
            return {**row, "status": fetched.status, "error": fetched.error}, None
        resized = resize_image(fetched.data, config.resize)
    except Exception as exc:  # a bug on one image must not lose the shard: record it on the row
        return {**row, "status": "internal_error", "error": f"{type(exc).__name__}: {exc}"[:200]}, None
    if resized.data is None:
        return {**row, "status": resized.status, "error": resized.error}, None
    return {**row, "status": OK, "error": None, "width": resized.width, "height": resized.height,
            "orig_width": resized.orig_width, "orig_height": resized.orig_height,
            "sha1": sha1(resized.data).hexdigest()}, resized.data


def build_shard(name: str, rows: pa.Table, config: BuildConfig, session) -> dict:
    """Build one complete shard from its rows; return its summary."""
    out = Path(config.out)
    writer = ShardWriter(out, name)
    done = []
    try:
        with ThreadPoolExecutor(config.threads) as pool:
            for row, jpeg in pool.map(lambda r: process_row(r, session, config), rows.to_pylist()):
                if jpeg is not None:
                    meta = {k: row[k] for k in ("key", "tweet_id", "user_id", "created_at", "retweets", "likes")}
                    row["offset"], row["size"] = writer.add(row["key"], jpeg, meta)
                    row["shard"] = f"{name}.tar"
                done.append(row)
        writer.finish(conform(pa.Table.from_pylist(done), IMAGES, name))
    except BaseException:
        writer.abort()
        raise
    ok = sum(r["status"] == OK for r in done)
    return {"name": name, "rows": len(done), "ok": ok, "bytes": (out / f"{name}.tar").stat().st_size}


class ShardWorker:
    """A Ray actor that builds whole shards with one pooled HTTP session."""

    def __init__(self, config: BuildConfig):
        import requests
        from requests.adapters import HTTPAdapter

        self.config = config
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=config.threads)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def build(self, job: tuple[str, pa.Table]) -> dict:
        # Errors are caught here: one exception inside ActorPool.map_unordered would silently
        # drop every result after it.
        name, rows = job
        try:
            return build_shard(name, rows, self.config, self.session)
        except Exception as exc:
            return {"name": name, "rows": rows.num_rows, "ok": 0, "error": f"{type(exc).__name__}: {exc}"}


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)


def run_jobs(jobs, config: BuildConfig) -> list[dict]:
    """Build the shards of `jobs` on a pool of Ray actors, showing progress."""
    import ray
    from ray.util import ActorPool

    start_ray(config.ray_address)
    actor = ray.remote(num_cpus=config.cpus_per_worker)(ShardWorker)
    pool = ActorPool([actor.remote(config) for _ in range(max(1, min(config.workers, len(jobs))))])
    results = []
    with progress(total=sum(rows.num_rows for _, rows in jobs), desc="images", unit="img") as bar:
        for result in pool.map_unordered(lambda a, job: a.build.remote(job), jobs):
            results.append(result)
            bar.update(result["rows"])
            if "error" in result:
                log.error("shard %s failed: %s", result["name"], result["error"])
    return results


def write_manifest(config: BuildConfig) -> dict:
    """manifest.json, summarised from the complete shards' Parquet slices."""
    out = Path(config.out)
    shards = []
    for slice_path in sorted(out.glob(f"{config.prefix}-*.parquet")):
        status = read_table(slice_path, "images").column("status")
        counts = pc.value_counts(status).to_pylist()
        tar = slice_path.with_suffix(".tar")
        shards.append({"tar": tar.name, "parquet": slice_path.name, "rows": len(status),
                       "ok": int(pc.sum(pc.equal(status, OK)).as_py() or 0), "bytes": tar.stat().st_size,
                       "status": {c["values"]: c["counts"] for c in counts}})
    by_status: dict[str, int] = {}
    for shard in shards:
        for status, n in shard["status"].items():
            by_status[status] = by_status.get(status, 0) + n
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(),
        "resize": asdict(config.resize),
        "shards": shards,
        "rows": sum(s["rows"] for s in shards),
        "ok": sum(s["ok"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "status": by_status,
    }
    write_json(manifest, out / "manifest.json")
    return manifest


def build_shards(config: BuildConfig) -> dict:
    """Build (or resume building) every shard, then the manifest; return the manifest."""
    if config.shard_size < 1 or config.workers < 1 or config.resize.size < 16:
        raise UserError("--shard-size and --workers must be ≥ 1 and --size ≥ 16")
    table = select_rows(config)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    jobs = plan(table, config)
    log.info("%d rows in %d shards, %d to build", table.num_rows,
             -(-table.num_rows // config.shard_size), len(jobs))
    failed = [r for r in run_jobs(jobs, config) if "error" in r] if jobs else []
    manifest = write_manifest(config)
    manifest["failed_shards"] = failed
    if failed:
        raise RuntimeError(f"{len(failed)} shard(s) failed; rerun to resume: {failed[0]['error']}")
    return manifest
