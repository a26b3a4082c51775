"""Images table → shards on Ray: fetch (downloads and local reads), resize (decode and store),
writer (one tar and its Parquet slice), pool (the Ray actor pool, resume checks, the manifest),
retry (finished shards' transient failures again) and build (the `shards build` job)."""
from shards.build.build import BuildConfig, build_shards

__all__ = ["BuildConfig", "build_shards"]
