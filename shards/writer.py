"""Writing one shard: a WebDataset tar plus its Parquet slice of the images table.

The tar is written under a temporary name and renamed when complete; the Parquet slice is
written last and marks the shard complete, so resume skips exactly the shards that have one.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa

from shards.schema import write_table


def shard_name(prefix: str, shard_id: int) -> str:
    return f"{prefix}-{shard_id:06d}"


def is_complete(out: Path, name: str) -> bool:
    return (out / f"{name}.parquet").exists() and (out / f"{name}.tar").exists()


class ShardWriter:
    """Appends `{key}.jpg` and `{key}.json` members and remembers where each JPEG's bytes sit."""

    def __init__(self, out: Path, name: str):
        self.out, self.name = Path(out), name
        self.tmp = self.out / f".{name}.tar.tmp"
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)

    def _add(self, member: str, data: bytes) -> int:
        """Add one member; return the offset of its data inside the tar."""
        info = tarfile.TarInfo(member)
        info.size, info.mode, info.mtime = len(data), 0o444, 0
        header = info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
        offset = self.tar.offset + len(header)
        self.tar.addfile(info, io.BytesIO(data))
        return offset

    def add(self, key: str, jpeg: bytes, meta: dict) -> tuple[int, int]:
        """Write one sample; return (offset, size) of its JPEG inside the tar."""
        offset = self._add(f"{key}.jpg", jpeg)
        self._add(f"{key}.json", json.dumps(meta, default=str).encode())
        return offset, len(jpeg)

    def finish(self, rows: pa.Table) -> Path:
        """Close the tar, rename it into place, then write the slice that marks it complete."""
        self.tar.close()
        os.replace(self.tmp, self.out / f"{self.name}.tar")
        return write_table(rows, self.out / f"{self.name}.parquet", "images")

    def abort(self) -> None:
        self.tar.close()
        self.tmp.unlink(missing_ok=True)
