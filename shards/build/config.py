"""The options of `iipa shards build`, in a module of their own: each Ray actor unpickles them, and
importing this costs the actor only what it needs anyway (see shards.build.worker)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shards.build.fetch import FetchConfig
from shards.build.resize import ResizeConfig
from shards.build.retry import TRANSIENT


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
    threads: int = 32
    """Concurrent fetches inside each actor: enough to keep its decoder busy through a CDN's round
    trip (an actor decodes ~500 of X's `small` variants a second: 15 in flight at 30 ms). Against
    a host 30 ms away, 8 gave 2/3 of the speed of 32; on loopback the two are within 2%."""
    cpus_per_worker: float = 0.5
    """Ray CPUs per actor: fractional, as much of the time is spent waiting on I/O."""
    ray_address: str | None = None
    """Address of a running Ray cluster; a local instance is started when unset."""
    prefix: str = "shard"
    """Shard file names are {prefix}-{NNNNNN}.tar."""
    retries: int = 1
    """Times a shard is retried on a fresh actor after its actor died (a crash in a decoder)."""
    retry_failed: bool = False
    """Also fetch again the rows of finished shards whose status is one of the statuses to retry."""
    retry_statuses: tuple[str, ...] = TRANSIENT
    """Statuses worth another try (`http_5xx`: every 5NN)."""
    fetch: FetchConfig = field(default_factory=FetchConfig)
    """How images are downloaded."""
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    """How images are stored."""
