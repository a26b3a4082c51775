"""Readers: tweets from archive files into rows of the images table (one row per photo), one
module per format, and the dispatcher: which reader reads a file, from its name and first record.

Each format is a generator over one file that yields row dicts (the columns of
`shards.schema.IMAGES` that metadata can fill), `pyarrow.Table` batches of such rows (from a
vectorised fast path), or `Malformed` markers for records it could not use, so one bad record is
counted and reported without stopping the run; at its end, `Skipped` totals for the records that
were read but gave no row (`SKIP_REASONS` says why each can be) and `Counted` totals for rows
worth a word. Readers stream: memory does not grow with the file.

Formats (the keys of `READERS`): `twarc2` (raw API v2 response pages, one per line), `v2`
(twarc2 *flattened* tweets, one per line, expansions inlined), `v1` (API v1.1 tweets as JSONL or
JSON arrays), `account` (the archive X lets a user download) and `table` (CSV or Parquet).

The readers share the row helpers of `ingest.formats.rows` and import each other where one builds
on another (the fast twarc2 path falls back to the reference one, twarc2 pages hold v2 tweets,
account archives hold v1.1 tweets); none of them imports this dispatcher.
"""
from __future__ import annotations

import json
from pathlib import Path

from ingest.formats.account import read_account, tweet_files
from ingest.formats.rows import DETECT_LINES, MAX_RECORD_CHARS, Counted, FormatError, Malformed, Skipped
from ingest.formats.table import read_table_file
from ingest.formats.twarc2 import read_twarc2
from ingest.formats.twarc2_fast import read_twarc2_fast
from ingest.formats.v1 import read_v1
from ingest.formats.v2 import read_v2

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
