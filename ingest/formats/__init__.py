"""Which reader reads a file: the format guessed from its name and first record, and the
readers by format. The package's face, above the readers: they share `ingest.formats.rows`'s row
helpers and none of them imports this dispatcher."""
from __future__ import annotations

import json
from pathlib import Path

from ingest.formats.account import read_account, tweet_files
from ingest.formats.rows import (
    DETECT_LINES,
    MAX_RECORD_CHARS,
    Counted,
    FormatError,
    Malformed,
    Skipped,
    read_twarc2,
    read_v1,
    read_v2,
)
from ingest.formats.table import read_table_file
from ingest.formats.twarc2_fast import read_twarc2_fast

__all__ = ["READERS", "Counted", "FormatError", "Malformed", "Skipped", "detect_format", "first_record", "read_account",
           "read_table_file", "read_twarc2", "read_twarc2_fast", "read_v1", "read_v2"]


def first_record(lines, tries: int = DETECT_LINES):
    """The first line among the first `tries` non-empty ones that parses as JSON (a bad first line
    is one malformed record, which the reader counts, not a file of unknown format), or None."""
    for line in lines:
        if not line.strip():
            continue
        try:
            return json.loads(line)
        except ValueError:
            tries -= 1
            if not tries:
                return None
    return None


def detect_format(path: Path) -> str:
    """Guess an archive's format from its name and first record; a file of no known format is an error."""
    path = Path(path)
    if path.is_dir():
        if tweet_files(path):
            return "account"
        raise FormatError(f"{path}: a folder, but not an X account archive (no data/tweets.js)")
    if path.suffix.lower() in (".csv", ".tsv", ".parquet", ".pq"):
        return "table"
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            f.seek(0)
            obj = first_record(iter(lambda: f.readline(MAX_RECORD_CHARS), b""))
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror})") from exc
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"window.YTD."):
        return "account"
    if stripped.startswith(b"["):
        return "v1"  # v1.1 timelines and exports are JSON arrays; v2 pages never are
    if isinstance(obj, dict):
        if "data" in obj:
            return "twarc2"
        if "id_str" in obj or "statuses" in obj or "retweeted_status" in obj or "full_text" in obj:
            return "v1"
        if "id" in obj and ("author_id" in obj or "author" in obj or "__twarc" in obj or "edit_history_tweet_ids" in obj):
            return "v2"
    raise FormatError(f"{path}: unrecognised archive format (expected twarc2 JSONL pages, flattened v2 tweets, "
                      "v1.1 tweets, an account archive, or a .csv/.parquet table)")


READERS = {"twarc2": read_twarc2_fast, "v2": read_v2, "v1": read_v1, "account": read_account, "table": read_table_file}
