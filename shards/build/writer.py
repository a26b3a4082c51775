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
import pyarrow.parquet as pq

from shards.atomic import atomic_path
from shards.schema import IMAGES, check_key, conform


def shard_name(prefix: str, shard_id: int) -> str:
    return f"{prefix}-{shard_id:06d}"


def is_complete(out: Path, name: str) -> bool:
    """A shard is complete when its Parquet slice, written last, exists beside its tar."""
    return (out / f"{name}.parquet").exists() and (out / f"{name}.tar").exists()


def remove_stale(out: Path, prefix: str) -> list[Path]:
    """Delete the temporaries a killed run left behind (they are never read, only rewritten)."""
    stale = [p for p in out.glob(f".{prefix}-*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class ShardWriter:
    """Appends `{key}.jpg` and `{key}.json` members and remembers where each JPEG's bytes sit."""

    def __init__(self, out: Path, name: str, keep: int = 0):
        """`keep`: start from the first `keep` bytes of the existing tar (whole members), so its
        samples keep their offsets and new ones are appended (a retry of failed rows)."""
        self.out, self.name = Path(out), name
        # A name of its own per writer: an actor of a killed run may still be finishing this
        # shard while the rerun writes it again; each renames its own complete file into place.
        self.tag = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.tmp = self.out / f".{name}.tar.{self.tag}.tmp"
        if keep:
            with open(self.out / f"{name}.tar", "rb") as old, open(self.tmp, "wb") as new:
                new.write(old.read(keep) + bytes(2 * tarfile.BLOCKSIZE))  # the end marker "a" looks for
        self.tar = tarfile.open(self.tmp, "a" if keep else "w", format=tarfile.USTAR_FORMAT)

    def _add(self, member: str, data: bytes) -> int:
        """Add one member; return the offset of its data inside the tar."""
        info = tarfile.TarInfo(member)
        info.size, info.mode, info.mtime = len(data), 0o444, 0
        # A USTAR header is one block (a name that does not fit raises instead), so the data
        # starts one block after the member: no need to build the header twice.
        offset = self.tar.offset + tarfile.BLOCKSIZE
        self.tar.addfile(info, io.BytesIO(data))
        return offset

    def add(self, key: str, jpeg: bytes, meta: dict) -> tuple[int, int]:
        # Members are named {key}.jpg / {key}.json with mode 0444 and mtime 0, so a shard's bytes
        # depend only on its samples.
        """Write one sample; return (offset, size) of its JPEG inside the tar."""
        offset = self._add(f"{check_key(key)}.jpg", jpeg)
        self._add(f"{key}.json", json.dumps(meta, default=str).encode())
        return offset, len(jpeg)

    def finish(self, rows: pa.Table) -> Path:
        """Close the tar, rename it into place, then write the slice that marks it complete."""
        self.tar.close()
        os.replace(self.tmp, self.out / f"{self.name}.tar")
        path = self.out / f"{self.name}.parquet"
        with atomic_path(path, tag=self.tag) as tmp:
            pq.write_table(conform(rows, IMAGES, self.name), tmp, compression="zstd")
        return path

    def abort(self) -> None:
        self.tar.close()
        self.tmp.unlink(missing_ok=True)
