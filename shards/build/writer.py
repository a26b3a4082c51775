"""Writing one shard: a WebDataset tar plus its Parquet slice of the images table.

The tar is written under a temporary name and renamed when complete; the Parquet slice is
written last and marks the shard complete, so resume skips exactly the shards that have one.

Members are written by hand, not through `tarfile`: every member differs from the others only in
its name, size and checksum, and building a `TarInfo` header and copying the body through a file
object cost 0.096 ms a sample (its two members) where this costs 0.031, on one thread. The bytes
are those `tarfile` writes in USTAR format (tests/test_shards.py compares them).
"""
from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shards.atomic import atomic_path
from shards.schema import IMAGES, OK, check_key, conform


def summarise(table: pa.Table, slice_path: Path) -> dict:
    """A shard's manifest entry from the rows of its Parquet slice (its tar lies beside it)."""
    # Counted in Python: the actors summarise every shard they write, and pyarrow.compute would
    # cost each of them 50 ms of CPU to import (a slice holds a shard's thousand rows).
    status = Counter(table.column("status").to_pylist())
    tar = slice_path.with_suffix(".tar")
    return {"tar": tar.name, "parquet": slice_path.name, "rows": table.num_rows,
            "ok": status[OK], "bytes": tar.stat().st_size,
            "users": len(set(table.column("user_id").to_pylist())), "status": dict(status)}


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


def _template() -> bytes:
    """The USTAR header `tarfile` writes for a read-only member with mtime 0, name and size left
    empty (the fields ustar_header fills in)."""
    info = tarfile.TarInfo("")
    info.mode, info.mtime = 0o444, 0
    return info.tobuf(tarfile.USTAR_FORMAT)


HEADER = _template()
NAME_END, SIZE, CHECKSUM = 100, slice(124, 136), slice(148, 156)


def ustar_header(name: str, size: int) -> bytes:
    """The header of member `name` (ASCII, at most 100 bytes: sample keys are) holding `size` bytes."""
    raw = name.encode("ascii")
    if len(raw) > NAME_END:
        raise ValueError(f"tar member name over {NAME_END} bytes: {name!r}")
    header = bytearray(HEADER)
    header[:len(raw)] = raw
    header[SIZE] = b"%011o\0" % size
    header[CHECKSUM] = b" " * 8  # the checksum is summed with its own field as spaces
    header[CHECKSUM] = b"%06o\0 " % sum(header)
    return bytes(header)


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
        self.file = open(self.tmp, "wb")
        if keep:
            with open(self.out / f"{name}.tar", "rb") as old:
                self.file.write(old.read(keep))
        self.offset = keep

    def _add(self, member: str, data: bytes) -> int:
        """Add one member; return the offset of its data inside the tar."""
        padding = -len(data) % tarfile.BLOCKSIZE
        self.file.write(ustar_header(member, len(data)) + data + bytes(padding))
        self.offset += tarfile.BLOCKSIZE + len(data) + padding
        return self.offset - len(data) - padding

    def add(self, key: str, jpeg: bytes, meta: dict) -> tuple[int, int]:
        # Members are named {key}.jpg / {key}.json with mode 0444 and mtime 0, so a shard's bytes
        # depend only on its samples.
        """Write one sample; return (offset, size) of its JPEG inside the tar."""
        offset = self._add(f"{check_key(key)}.jpg", jpeg)
        self._add(f"{key}.json", json.dumps(meta, default=str).encode())
        return offset, len(jpeg)

    def close(self) -> None:
        """End the archive as tarfile does: two zero blocks, then zeros to a whole record."""
        end = self.offset + 2 * tarfile.BLOCKSIZE
        self.file.write(bytes(2 * tarfile.BLOCKSIZE + -end % tarfile.RECORDSIZE))
        self.file.close()

    def finish(self, rows: pa.Table) -> dict:
        """Close the tar, rename it into place, then write the slice that marks it complete;
        return the shard's manifest entry."""
        self.close()
        os.replace(self.tmp, self.out / f"{self.name}.tar")
        path = self.out / f"{self.name}.parquet"
        table = conform(rows, IMAGES, self.name)
        with atomic_path(path, tag=self.tag) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return summarise(table, path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)
