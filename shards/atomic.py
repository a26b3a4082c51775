"""Writing a file atomically: a reader sees the old file or the whole new one, never half of it.

It lives in `shards` because that is the one package every stage may import.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, tag: str = "") -> Iterator[Path]:
    """Yield a hidden temporary path beside `path` (`.{name}.tmp`, or `.{name}.{tag}.tmp`) to
    write; rename it onto `path` when the body succeeds, remove it when the body raises.

    `tag`: a name of the writer's own, where two processes may write the same file at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{tag}.tmp" if tag else f".{path.name}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
