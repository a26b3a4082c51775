"""Shards: the on-disk data contracts (schemas), image shards, and the PDIP pair-index builder.

This package imports nothing else of iipa; every other stage builds on it.
"""
from shards.build import BuildConfig, build_shards
from shards.dali_index import index_shards
from shards.locate import ShardIndex
from shards.pairs import PairsConfig, build_pairs
from shards.rebuild import RebuildConfig, rebuild_shards
from shards.schema import IMAGES, PAIRS, SCHEMA_VERSION, read_table, write_table
from shards.verify import shard_stats, verify_shards

__all__ = ["BuildConfig", "build_shards", "index_shards", "ShardIndex", "PairsConfig", "build_pairs",
           "RebuildConfig", "rebuild_shards", "IMAGES", "PAIRS", "SCHEMA_VERSION", "read_table", "write_table",
           "shard_stats", "verify_shards"]
