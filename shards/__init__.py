"""Shards: the on-disk data contracts (schemas), image shards, and the PDIP pair-index builder.

This package imports nothing else of iipa; every other stage builds on it.
"""
from importlib import import_module

# Each public name and its module, imported on first use: every command line imports
# shards.console, and its --help must not wait for the download pipeline and the pair builder.
_HOMES = {"BuildConfig": "shards.build.config", "build_shards": "shards.build.build", "index_shards": "shards.dali_index",
          "ShardIndex": "shards.locate", "PairsConfig": "shards.pairs", "build_pairs": "shards.pairs",
          "RebuildConfig": "shards.rebuild", "rebuild_shards": "shards.rebuild", "IMAGES": "shards.schema",
          "PAIRS": "shards.schema", "SCHEMA_VERSION": "shards.schema", "read_table": "shards.schema",
          "write_table": "shards.schema", "shard_stats": "shards.verify", "verify_shards": "shards.verify"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'shards' has no attribute {name!r}")
