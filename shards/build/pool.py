"""What `shards build` and `shards rebuild` share: the Ray actor pool, resume checks, the manifest.

The pool hands whole shard jobs to actors and collects one summary per shard. An actor that
dies (a crash inside a native decoder, a lost node) is replaced and its shard retried; a shard
that kills its actor every time is written with every row marked `worker_died`, so nothing is
lost silently and the rest of the pool carries on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pyarrow as pa

from shards.console import UserError, progress
from shards.locate import write_locate_file
from shards.schema import SCHEMA_VERSION, read_table, write_json
from shards.build.writer import ShardWriter, remove_stale, summarise

log = logging.getLogger("iipa.shards")
PLAN_FILE = "plan.json"
# One job in flight per actor, so that when an actor dies we know which shard killed it (a
# queued job would die with it, and a reply still being sent can be lost with the process).
# The gap between two shards is one round trip, against seconds of work per shard.
JOBS_PER_ACTOR = 1


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a Ray cluster, or start a local instance (once per process)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)


def run_pool(actor_cls, actor_args: tuple, method: str, jobs: list[tuple[str, pa.Table]], workers: int,
             cpus: float, retries: int, on_dead: Callable[[tuple, str], dict],
             on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run `actor.method(job)` for every job on a pool of `workers` actors; return the summaries.

    A job whose actor died is retried on a fresh actor up to `retries` times, then handed to
    `on_dead(job, error)`, whose summary stands in for the job's. `on_result` sees each summary
    as it arrives.
    """
    import ray
    from ray.exceptions import RayActorError, WorkerCrashedError

    remote = ray.remote(num_cpus=cpus, max_restarts=0)(actor_cls)
    actors = [remote.remote(*actor_args) for _ in range(max(1, min(workers, len(jobs))))]
    queue = [(job, 0) for job in reversed(jobs)]
    inflight: dict = {}

    def submit(slot: int) -> None:
        job, attempt = queue.pop()
        inflight[getattr(actors[slot], method).remote(job)] = (slot, job, attempt)

    for slot in range(len(actors)):
        for _ in range(JOBS_PER_ACTOR):
            if queue:
                submit(slot)
    results = []
    try:
        with progress(total=sum(rows.num_rows for _, rows in jobs), desc="images", unit="img") as bar:
            while inflight:
                [ref], _ = ray.wait(list(inflight), num_returns=1)
                slot, job, attempt = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except (RayActorError, WorkerCrashedError) as exc:
                    result = None
                    actors[slot] = _replace(actors[slot], remote, actor_args)
                    error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                    log.warning("actor died on shard %s (attempt %d): %s", job[0], attempt + 1, error)
                    if attempt < retries:
                        queue.append((job, attempt + 1))
                    else:
                        result = on_dead(job, error)
                if result is not None:
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
                    bar.update(result["rows"])
                    if "error" in result:
                        log.error("shard %s failed: %s", result["name"], result["error"])
                while queue and sum(s == slot for s, _, _ in inflight.values()) < JOBS_PER_ACTOR:
                    submit(slot)
    finally:
        # Give the pool's CPUs back now. Once an actor has died, the error ray.get raised sits in
        # a reference cycle with ray.get's frames, which keeps this frame, and so the handles,
        # alive until Python's collector runs: the actors would keep their CPUs, and a second
        # pool in the same process (`--retry-failed` after the build) could wait for them.
        for actor in actors:
            _kill(actor)
    return results


def _replace(actor, remote, actor_args):
    """A fresh actor in place of one that died (its other queued calls fail and are retried)."""
    _kill(actor)
    return remote.remote(*actor_args)


def _kill(actor) -> None:
    import ray

    try:
        ray.kill(actor)
    except Exception:  # already gone, or Ray itself is
        pass


def fail_shard(out: Path, job: tuple[str, pa.Table], status: str, error: str) -> dict:
    """Write a complete shard whose every row carries `status`: its tar is empty."""
    name, rows = job
    failed = rows.drop_columns([c for c in ("status", "error", "shard", "offset", "size", "width", "height", "sha1")
                                if c in rows.column_names])
    failed = failed.append_column("status", pa.array([status] * rows.num_rows, pa.string()))
    failed = failed.append_column("error", pa.array([error] * rows.num_rows, pa.string()))
    return {"name": name, "rows": rows.num_rows, "ok": 0, "entry": ShardWriter(out, name).finish(failed)}


def plan_digest(keys: list[str], shard_size: int, settings: dict) -> str:
    digest = hashlib.sha1(repr((shard_size, sorted(settings.items()))).encode())
    for key in keys:
        digest.update(key.encode() + b"\n")
    return digest.hexdigest()


def check_plan(out: Path, prefix: str, keys: list[str], shard_size: int, settings: dict,
               config: dict | None = None) -> None:
    """Resume only a run with the same plan: the same keys in the same order, shard size and
    settings. Otherwise resuming could write a key into two shards; refuse instead.
    `{prefix}-plan.json` records the plan and the resolved `config` of the run."""
    path = out / f"{prefix}-{PLAN_FILE}"
    digest = plan_digest(keys, shard_size, settings)
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("digest") != digest and any(out.glob(f"{prefix}-*.parquet")):
            raise UserError(f"{out}: holds shards of a different input or settings "
                            f"({old.get('rows')} rows, shard size {old.get('shard_size')}); "
                            "use a new --out, or delete the folder to start again")
    write_json({"digest": digest, "rows": len(keys), "shard_size": shard_size, **settings,
                "config": config or {}}, path)


def prepare_out(out: Path, prefix: str, keys: list[str], shard_size: int, settings: dict, config: dict) -> None:
    """Make the output folder, refuse one planned with other inputs or settings, and clear what a
    killed run left half-written, so the run resumes from its complete shards."""
    out.mkdir(parents=True, exist_ok=True)
    check_plan(out, prefix, keys, shard_size, settings, config)
    remove_stale(out, prefix)


def run_shard_jobs(actor_cls, config, method: str, jobs: list[tuple[str, pa.Table]]) -> list[dict]:
    """Each job's result from `config.workers` Ray actors of `actor_cls(config)` (Ray is started
    only when there is work); a shard whose worker keeps dying is written as failed."""
    if not jobs:
        return []
    start_ray(config.ray_address)
    out = Path(config.out)
    return run_pool(actor_cls, (config,), method, jobs, config.workers, config.cpus_per_worker, config.retries,
                    on_dead=lambda job, err: fail_shard(out, job, "worker_died", err))


def raise_if_failed(failed: list[dict]) -> None:
    """After the manifest is written: a run with failed shards ends in an error naming the first."""
    if failed:
        raise RuntimeError(f"{len(failed)} shard(s) failed; rerun to resume. First: "
                           f"{failed[0]['name']}: {failed[0]['error']}")


def entries(results: list[dict]) -> dict[str, dict]:
    """The manifest entries the actors made of the shards they wrote, by slice name."""
    return {r["entry"]["parquet"]: r["entry"] for r in results if "entry" in r}


def shard_summary(slice_path: Path) -> dict:
    return summarise(read_table(slice_path, "images"), slice_path)


def write_manifest(out: Path, prefix: str, settings: dict, changed: list[str] | None = None,
                   known: dict[str, dict] | None = None) -> dict:
    """manifest.json, summarised from the complete shards' Parquet slices (written last). With
    `changed` (shard names), only those slices are read again and the others' entries kept.
    `known`: entries of slices just written, by slice name, which need not be read back (the
    actors summarise what they wrote: reading every slice again costs 3-6 ms a shard)."""
    slices = [p for p in sorted(out.glob(f"{prefix}-*.parquet")) if p.with_suffix(".tar").exists()]
    known = known or {}
    if changed is not None:
        kept = {s["parquet"]: s for s in json.loads((out / "manifest.json").read_text())["shards"]}
        names = {f"{name}.parquet" for name in changed}
        shards = [kept[p.name] if p.name in kept and p.name not in names else shard_summary(p) for p in slices]
    else:
        shards = [known[p.name] if p.name in known else shard_summary(p) for p in slices]
    by_status: dict[str, int] = {}
    for shard in shards:
        for status, n in shard["status"].items():
            by_status[status] = by_status.get(status, 0) + n
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(),
        "prefix": prefix,
        **settings,
        "shards": shards,
        "rows": sum(s["rows"] for s in shards),
        "ok": sum(s["ok"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "status": dict(sorted(by_status.items())),
    }
    write_json(manifest, out / "manifest.json")
    if changed is None:
        write_locate_file(out)  # after the manifest, whose stat is part of its fingerprint
    return manifest
