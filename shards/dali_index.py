"""DALI index files for the shards: `{name}.idx` beside each tar, for `fn.readers.webdataset`.

The format is DALI's v1.2 (what its `wds2idx` tool writes): a header line `v1.2 SAMPLES`, then
one line per sample listing, for each of its members, `ext offset size name`, where offset is
where the member's data starts inside the tar. We read the tar headers ourselves instead of
calling `wds2idx`, which shells out to GNU tar twice per shard.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
import tarfile
from pathlib import Path

from shards.atomic import atomic_path
from shards.console import UserError, progress

VERSION = "v1.2"


def tar_members(tar_path: Path) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of the regular files of a tar, in order; a tar that does not
    parse, or whose last member runs past its end (a truncated copy), is a UserError."""
    try:
        with tarfile.open(tar_path, "r:") as tar:
            members = [(m.name, m.offset_data, m.size) for m in tar.getmembers() if m.isreg()]
    except tarfile.TarError as exc:
        raise UserError(f"{tar_path}: not a readable tar ({exc}); run `iipa shards verify`") from None
    end = max((offset + size for _, offset, size in members), default=0)
    if end > tar_path.stat().st_size:
        raise UserError(f"{tar_path}: truncated ({tar_path.stat().st_size} bytes, its members need {end}); "
                        "rebuild it with `iipa shards build` or `rebuild`")
    return members


def index_text(members: list[tuple[str, int, int]]) -> str:
    """The v1.2 index of a tar's members, grouped into samples by key (the name before the
    first dot of its last path component), as WebDataset and DALI group them."""
    samples: list[list[str]] = []
    last = None
    for name, offset, size in members:
        base = name.rsplit("/", 1)[-1]
        stem, _, ext = base.partition(".")
        if not stem:  # hidden files are not samples
            continue
        key = name[: len(name) - len(base)] + stem
        if key != last:
            samples.append([])
            last = key
        samples[-1].append(f"{ext} {offset} {size} {name}")
    return f"{VERSION} {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)


def write_index(tar_path: Path) -> Path:
    """Write (or write again) one tar's `{name}.idx`, atomically."""
    idx = tar_path.with_suffix(".idx")
    with atomic_path(idx) as tmp:
        tmp.write_text(index_text(tar_members(tar_path)))
    return idx


def index_shards(shards_dir: str | os.PathLike) -> list[Path]:
    """DALI index files for every tar of a shards folder; return their paths.

    All or nothing: every index is written under a temporary name first and the set is renamed
    into place only once every tar has been read, so a bad tar leaves no partial set behind."""
    folder = Path(shards_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such shards folder")
    tars = sorted(p for p in folder.glob("*.tar") if not p.name.startswith("."))
    if not tars:
        raise UserError(f"{folder}: no shards (.tar files) here")
    written: list[Path] = []
    with ExitStack() as pending:  # renames every index on success, removes every temporary on error
        for tar in progress(tars, desc="index", unit="shard"):
            idx = tar.with_suffix(".idx")
            pending.enter_context(atomic_path(idx)).write_text(index_text(tar_members(tar)))
            written.append(idx)
    return written
