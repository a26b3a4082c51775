"""Tweets from CSV or Parquet tables (exports of other tools), with `--columns` naming the fields.

Each table row is one tweet; its `url` cell holds the photo URL(s) (a list, or URLs separated by
spaces, commas or `|`). A row without a photo URL, or whose text starts with `RT @`, gives no
rows. Hashtags and mentions come from their own columns where mapped, otherwise from the text.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ingest.formats.rows import (
    Counted,
    FormatError,
    NOT_UTF8_RE,
    Malformed,
    Medium,
    caption_words,
    file_time,
    is_naive,
    parse_time,
    photo_rows,
    record_rows,
    skipped_totals,
    tags_in,
    tally,
)

REQUIRED = ("tweet_id", "user_id", "created_at", "url")
OPTIONAL = ("text", "hashtags", "mentions", "retweets", "likes", "replies", "quotes", "collected_at",
            "media_key", "is_retweet")
FIELDS = REQUIRED + OPTIONAL
SPLIT_RE = re.compile(r"[\s,|]+")
BATCH_ROWS = 20_000


def parse_columns(spec: str | None) -> dict[str, str]:
    """`field=column,...` as a dict; an unknown field is a user's mistake."""
    mapping = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        field, sep, column = part.partition("=")
        if not sep or not column:
            raise FormatError(f"--columns: {part!r} is not field=column")
        if field not in FIELDS:
            raise FormatError(f"--columns: unknown field {field!r}; fields are {', '.join(FIELDS)}")
        mapping[field] = column
    return mapping


def parse_constants(spec: list[str] | None) -> dict[str, str]:
    """`--set field=value` (repeatable) as a dict: a field every row of a table gets as a constant."""
    constants = {}
    for part in spec or []:
        field, sep, value = part.partition("=")
        if not sep or not value or field not in FIELDS:
            raise FormatError(f"--set: {part!r} is not field=value with a field of {', '.join(FIELDS)}")
        constants[field] = value
    return constants


def _header(path: Path) -> list[str]:
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            return pq.ParquetFile(path).schema_arrow.names
        except (pa.ArrowInvalid, OSError) as exc:
            raise FormatError(f"{path}: not a readable Parquet file ({exc})") from exc
    with _open_csv(path) as f:
        try:
            return next(csv.reader(f, delimiter=_delimiter(path)), [])
        except csv.Error as exc:
            raise FormatError(f"{path}: not a readable table ({exc})") from exc


def _open_csv(path: Path):
    """A CSV file as text; bytes that are not UTF-8 become lone surrogates, so the row holding
    them is found and counted as malformed instead of the decoder refusing the whole file."""
    return open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def resolve_columns(path: Path, columns: dict[str, str] | None, constants: dict | None = None) -> dict[str, str]:
    """field → column of this file: the mapping given, else columns named like the fields
    (fields set as constants need none). A table without any count cannot make a pair, so it
    is refused here rather than by `pairs build` later."""
    header, constants = _header(path), constants or {}
    mapping = {f: (columns or {}).get(f, f) for f in FIELDS if f not in constants}
    missing = [f"{f} (column {mapping[f]!r})" for f in REQUIRED if f in mapping and mapping[f] not in header]
    if missing:
        raise FormatError(f"{path}: no column for {', '.join(missing)}; map them with --columns field=column "
                          "or give a constant with --set field=value")
    found = {f: c for f, c in mapping.items() if c in header}
    if not ({"retweets", "likes"} & (set(found) | set(constants))):
        raise FormatError(f"{path}: no count column: neither retweets (column {mapping['retweets']!r}) nor likes "
                          f"(column {mapping['likes']!r}); map one with --columns retweets=...,likes=...")
    return found


def records(path: Path, columns: list[str]) -> Iterator[tuple[int, dict | str]]:
    """(line, record as {column: value}) of every row of the table, or (line, why the row is
    malformed). A CSV row's line is the physical line it starts on (a quoted field may span
    lines); a Parquet row's is its position, from 1."""
    if path.suffix.lower() in (".parquet", ".pq"):
        number = 1
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns):
            for record in batch.to_pylist():
                yield number, record
                number += 1
        return
    with _open_csv(path) as f:
        rows = csv.reader(f, delimiter=_delimiter(path))
        header = next(rows, [])
        where = {c: header.index(c) for c in columns}
        while True:
            start = rows.line_num + 1
            try:
                cells = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field past csv's size limit; the reader goes on after it
                yield start, f"csv: {exc}"
                continue
            if not cells:
                continue  # a blank line
            if len(cells) != len(header):
                yield start, f"{len(cells)} fields where the header has {len(header)}"
                continue
            record = {c: cells[i] for c, i in where.items()}
            if any(NOT_UTF8_RE.search(v) for v in record.values() if not v.isascii()):
                yield start, "bytes that are not UTF-8 text"
                continue
            yield start, record


def _int(value) -> int | None:
    if value is None or value == "":
        return None
    return int(float(value)) if isinstance(value, str) and "." in value else int(value)


def _list(value, text_values: list[str]) -> list[str]:
    if value is None:
        return text_values
    items = value if isinstance(value, list) else SPLIT_RE.split(str(value))
    return [str(v).lstrip("#@＃＠").lower() for v in items if v and str(v).strip("#@＃＠")]


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "t", "y")


def table_row(record: dict, fields: dict[str, str], collected_at, constants: dict | None,
              skipped: dict[str, int]) -> list[dict]:
    """Rows of one table record (one tweet)."""
    get = {**{f: record.get(c) for f, c in fields.items()}, **(constants or {})}
    text = get.get("text") or ""
    if text.startswith("RT @") or _truthy(get.get("is_retweet")):
        skipped["retweet"] += 1
        return []
    urls = get["url"] if isinstance(get["url"], list) else SPLIT_RE.split(get["url"] or "")
    urls = [u for u in urls if u]
    if not urls:
        skipped["no_url"] += 1
        return []
    if not get["tweet_id"] or not get["user_id"]:
        raise ValueError("empty tweet_id or user_id")
    tags, mentions = tags_in(text)
    keys = SPLIT_RE.split(get["media_key"]) if isinstance(get.get("media_key"), str) else get.get("media_key")
    created = parse_time(get["created_at"])
    if created is None:
        raise ValueError("empty created_at")
    base = {
        "tweet_id": str(get["tweet_id"]), "user_id": str(get["user_id"]),
        "created_at": created,
        "collected_at": parse_time(get.get("collected_at")) or collected_at,
        "text": text, "hashtags": _list(get.get("hashtags"), tags), "mentions": _list(get.get("mentions"), mentions),
        "caption_words": caption_words(text),
        "retweets": _int(get.get("retweets")), "likes": _int(get.get("likes")),
        "replies": _int(get.get("replies")), "quotes": _int(get.get("quotes")),
    }
    keys = list(keys or [])
    return photo_rows(base, [Medium(keys[i] if i < len(keys) else None, u) for i, u in enumerate(urls)], skipped)


def read_table_file(path: Path, collected_at=None, media_types=frozenset({"photo"}), columns=None,
                    constants=None, **_) -> Iterator[dict | Malformed | Counted]:
    """Rows of a CSV/TSV or Parquet table; `columns` maps fields to the file's column names and
    `constants` gives fields every row shares. Times without a zone (read as UTC) and rows whose
    `collected_at` is the file's time are counted, not silent."""
    path = Path(path)
    fields = resolve_columns(path, columns, constants)
    when = collected_at or file_time(path)
    naive, naive_collected, from_file, skipped = 0, 0, 0, tally()
    try:
        for number, record in records(path, sorted(set(fields.values()))):
            if isinstance(record, str):
                yield Malformed(str(path), number, record)
                continue
            rows = record_rows(path, number, skipped, lambda mine: table_row(record, fields, when, constants, mine))
            if isinstance(rows, Malformed):
                yield rows
                continue
            naive += bool(rows) and is_naive(record.get(fields.get("created_at")))
            naive_collected += bool(rows) and is_naive(record.get(fields.get("collected_at")))
            from_file += len(rows) if collected_at is None and not record.get(fields.get("collected_at")) else 0
            yield from rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise FormatError(f"{path}: not a readable table ({exc})") from exc
    yield from skipped_totals(skipped)
    if naive:
        yield Counted("created_at_without_zone_read_as_utc", naive)
    if naive_collected:
        yield Counted("collected_at_without_zone_read_as_utc", naive_collected)
    if from_file:
        yield Counted("collected_at_from_file_time", from_file)
