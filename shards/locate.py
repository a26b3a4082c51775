"""Finding a sample's encoded bytes: key → (tar, offset, size) from the shards' Parquet slices.

Pair manifests name keys only; this is where keys become bytes. Whole shards are read
sequentially (as WebDataset intends) and sliced in memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from shards.console import UserError
from shards.schema import OK, read_table


@dataclass(frozen=True)
class Location:
    shard: str
    offset: int
    size: int


class ShardIndex:
    """Where every `ok` sample of a shards folder sits."""

    def __init__(self, shards_dir: str | Path):
        self.dir = Path(shards_dir)
        if not (self.dir / "manifest.json").exists():
            raise UserError(f"{self.dir}: not a shards folder (no manifest.json)")
        table = read_table(self.dir, "images")
        table = table.filter(pc.equal(table.column("status"), OK))
        self.keys = table.column("key").to_numpy(zero_copy_only=False)
        self.shards = table.column("shard").to_numpy(zero_copy_only=False)
        self.offsets = table.column("offset").to_numpy()
        self.sizes = table.column("size").to_numpy()
        self.row = {k: i for i, k in enumerate(self.keys)}

    def __contains__(self, key: str) -> bool:
        return key in self.row

    def both_present(self, hi, lo) -> np.ndarray:
        """Mask of the pairs (hi[i], lo[i]) whose two images were sharded successfully."""
        return np.fromiter((a in self.row and b in self.row for a, b in zip(hi, lo)), dtype=bool, count=len(hi))

    def locate(self, key: str) -> Location:
        i = self.row[key]
        return Location(self.shards[i], int(self.offsets[i]), int(self.sizes[i]))

    def shard_of(self, keys) -> np.ndarray:
        return self.shards[[self.row[k] for k in keys]]

    def read_shard(self, shard: str) -> bytes:
        return (self.dir / shard).read_bytes()

    def read(self, key: str) -> bytes:
        """One sample's bytes by offset (no whole-shard read)."""
        loc = self.locate(key)
        with open(self.dir / loc.shard, "rb") as f:
            f.seek(loc.offset)
            return f.read(loc.size)
