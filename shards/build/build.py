"""`iipa shards build`: Ray actors fetch, decode, resize and write WebDataset shards.

The driver plans shard jobs (rows sorted by user and time, so a user's images share shards and
most pairs are shard-local), skips jobs whose shard is already complete (resume), and hands the
rest to a pool of actors (shards.build.worker), which return one small summary per shard: results
come back in batches, not one Ray call per image.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from shards.console import UserError, check_out
from shards.build.config import BuildConfig
from shards.build.pool import (entries, prepare_out, raise_if_failed, run_pool, run_shard_jobs, start_ray,
                               write_manifest)
from shards.build.resize import check_resize
from shards.build.retry import plan_retries, status_patterns
from shards.build.worker import ShardWorker
from shards.schema import read_table
from shards.build.writer import is_complete, shard_name

log = logging.getLogger("iipa.shards")
__all__ = ["BuildConfig", "build_shards", "start_ray"]


def validate(config: BuildConfig) -> None:
    """Refuse options that cannot work before any work starts."""
    if config.shard_size < 1 or config.workers < 1 or config.threads < 1:
        raise UserError("--shard-size, --workers and --threads must be ≥ 1")
    check_resize(config.resize)
    if not 0 < config.fetch.timeout < float("inf") or config.fetch.retries < 0:
        raise UserError("--timeout must be > 0 and --fetch-retries ≥ 0")
    if config.fetch.max_bytes < 1:
        raise UserError(f"--max-bytes must be ≥ 1, got {config.fetch.max_bytes}")
    status_patterns(config.retry_statuses)
    check_out(config.out)
    for root in config.fetch.allow_local:
        if not Path(root).is_dir():
            raise UserError(f"--allow-local {root}: no such folder")


def select_rows(config: BuildConfig) -> pa.Table:
    """The rows to shard, sorted by user then time so that a user's images share shards."""
    table = read_table(config.images, "images")
    if config.only_paired is not None:
        pairs = read_table(config.only_paired, "pairs")
        used = pa.concat_arrays([pairs.column("hi_key").combine_chunks(), pairs.column("lo_key").combine_chunks()])
        table = table.filter(pc.is_in(table.column("key"), pc.unique(used)))
    if len(pc.unique(table.column("key"))) != table.num_rows:
        raise UserError(f"{config.images}: keys are not unique")
    return table.take(pc.sort_indices(table, [("user_id", "ascending"), ("created_at", "ascending"), ("key", "ascending")]))


def plan(table: pa.Table, config: BuildConfig) -> list[tuple[str, pa.Table]]:
    """Deterministic shard jobs: (name, rows) per `shard_size` rows, complete shards left out."""
    jobs = []
    for shard_id, start in enumerate(range(0, table.num_rows, config.shard_size)):
        name = shard_name(config.prefix, shard_id)
        if not is_complete(Path(config.out), name):
            jobs.append((name, table.slice(start, config.shard_size)))
    return jobs



def retry_failed_rows(config: BuildConfig, n_rows: int, just_built: set[str], settings: dict) -> list[dict]:
    """Retry the transient failures of the shards that were complete before this run; the
    manifest follows each retried shard as it is written."""
    out = Path(config.out)
    names = [shard_name(config.prefix, i) for i in range(-(-n_rows // config.shard_size))]
    jobs = plan_retries(out, [n for n in names if n not in just_built], status_patterns(config.retry_statuses))
    log.info("%d shard(s) with rows to retry", len(jobs))
    if not jobs:
        return []
    start_ray(config.ray_address)
    if not (out / "manifest.json").exists():  # a build killed before its manifest: write it first
        write_manifest(out, config.prefix, settings)
    keep = lambda job, err: {"name": job[0], "rows": job[1].num_rows, "ok": 0, "error": f"left as it was: {err}"}
    return run_pool(ShardWorker, (config,), "retry", jobs, config.workers, config.cpus_per_worker, config.retries,
                    on_dead=keep, on_result=lambda r: write_manifest(out, config.prefix, settings, [r["name"]]))


def build_shards(config: BuildConfig) -> dict:
    """Build (or resume building) every shard, then the manifest; return the manifest."""
    validate(config)
    table = select_rows(config)
    prepare_out(Path(config.out), config.prefix, table.column("key").to_pylist(), config.shard_size,
                {"command": "build", "resize": asdict(config.resize)}, asdict(config))
    jobs = plan(table, config)
    log.info("%d rows in %d shards, %d to build", table.num_rows,
             -(-table.num_rows // config.shard_size), len(jobs))
    results = run_shard_jobs(ShardWorker, config, "build", jobs)
    cpu = cpu_per_image(results)
    failed = [r for r in results if "error" in r]
    nodes = {r["node"] for r in results if r.get("node")}
    settings = {"resize": asdict(config.resize), "shard_size": config.shard_size,
                "remote_size": config.fetch.remote_size}
    retried = retry_failed_rows(config, table.num_rows, {name for name, _ in jobs}, settings) if config.retry_failed else []
    failed += [r for r in retried if "error" in r]
    # The shards built now come summarised by their actors (retries touch only older shards).
    manifest = write_manifest(Path(config.out), config.prefix, settings, known=entries(results))
    if config.retry_failed:
        manifest = {**manifest, "retry": {"shards": len(retried), "rows": sum(r.get("retried", 0) for r in retried),
                                          "recovered": sum(r.get("recovered", 0) for r in retried)}}
    raise_if_failed(failed)
    return {**manifest, "built_on_nodes": sorted(nodes), "cpu_ms_per_image": cpu, "working_s": working_seconds(results)}


def working_seconds(results: list[dict]) -> float | None:
    """Wall seconds from the first shard started to the last one finished in this run: the
    build without the pool's start-up and the manifest (wall clocks of the nodes, which on a
    cluster agree to NTP's milliseconds)."""
    timed = [r for r in results if "started" in r]
    if not timed:
        return None
    return round(max(r["finished"] for r in timed) - min(r["started"] for r in timed), 3)


def cpu_per_image(results: list[dict]) -> dict[str, float]:
    """The actors' CPU milliseconds an image, by step, over the shards built in this run:
    fetch, resize (decode, resample, encode), write (tar and slice), and the rest of the
    actors' process time while building (thread hand-offs, row bookkeeping, Ray's own threads)."""
    seconds: Counter = Counter()
    for result in results:
        seconds.update(result.get("cpu_s", {}))
    rows = sum(r["rows"] for r in results if "cpu_s" in r)
    if not rows:
        return {}
    steps = {name: seconds[name] for name in ("fetch", "resize", "write")}
    steps["other"] = max(0.0, seconds["process"] - sum(steps.values()))
    return {name: round(value / rows * 1e3, 3) for name, value in steps.items()}
