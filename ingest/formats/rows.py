"""The row helpers every reader of `ingest.formats` shares: what a reader yields besides rows
(`Malformed`, `Counted`, `Skipped` and the reasons for skipping), captions, tags and times as the
images table holds them, one row per photo of a tweet, and JSON records read one line or one
array item at a time so that one bad record is counted, not fatal."""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from shards.schema import PENDING, image_key

URL_RE = re.compile(r"https?://\S+")
TAG_RE = re.compile(r"[#＃]\w+")
MENTION_RE = re.compile(r"[@＠]\w+")
WORD_RE = re.compile(r"\w+(?:'\w+)?")
ARRAY_CHUNK = 1 << 20
MAX_RECORD_CHARS = 64 << 20  # one JSON record larger than this is malformed, not buffered further
DETECT_LINES = 20  # lines that may fail to parse before a file counts as of no known format
NOT_UTF8_RE = re.compile("[\udc80-\udcff]")  # what `surrogateescape` makes of bytes that are not UTF-8
# An escaped surrogate (\ud800-\udfff) is a character only as a high one followed by a low one.
LONE_ESCAPE_RE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
                            r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F]")
LONE_ESCAPE_BYTES_RE = re.compile(LONE_ESCAPE_RE.pattern.encode())
ESCAPE_RE = re.compile(r"\\u[dD]")  # the quick look first (a literal prefix: re scans for it fast)
ESCAPE_BYTES_RE = re.compile(ESCAPE_RE.pattern.encode())
# What a record's own faults raise while it becomes rows; anything else is a bug and stops the run.
RECORD_ERRORS = (ValueError, KeyError, TypeError, AttributeError)


@dataclass
class Malformed:
    """A line (or record) of an input file that could not be parsed."""

    path: str
    line: int
    reason: str


@dataclass
class Counted:
    """Records of a file that a reader treated in a way worth counting (`reason`, how many):
    summed per file and in all into the summary, and said on stderr."""

    reason: str
    count: int


@dataclass
class Skipped:
    """Records of a file that were read and gave no row, for one of `SKIP_REASONS` (how many)."""

    reason: str
    count: int


SKIP_REASONS = {
    "retweet": "retweets (their embedded originals, where present, are read on their own)",
    "no_photo": "tweets without a photo (or other medium --media asks for)",
    "media_not_included": "tweets whose media keys name no medium of their page",
    "not_a_tweet": "records that are not tweets (a user object, a bare value)",
    "original_incomplete": "embedded retweeted originals without a user, id or time",
    "duplicate_url": "photos whose URL the same tweet already gave",
    "no_url": "table rows without a photo URL",
    "negative_count": "tweets with a negative retweet, like, reply or quote count",
}


def tally() -> dict[str, int]:
    """Skipped records by reason, `tally[reason] += 1` (a defaultdict: as cheap as a dict, which a
    Counter's missing keys are not, once a record)."""
    return defaultdict(int)


def add_to(total: dict[str, int], more: dict[str, int]) -> None:
    """Sum one tally into another (a record's skips into its file's, once the record is read)."""
    for reason, n in more.items():
        total[reason] += n


def skipped_totals(skipped: dict[str, int]) -> Iterator[Skipped]:
    """What a reader yields at the end of its file: one `Skipped` per reason that occurred."""
    for reason, count in sorted(skipped.items()):
        assert reason in SKIP_REASONS, reason  # each reason is documented there (and in the README)
        if count:
            yield Skipped(reason, count)


class FormatError(ValueError):
    """A whole file is unreadable or of no known format (a user's mistake: exit status 2)."""


def caption_words(text: str) -> list[str]:
    """Lower-cased words of a caption once URLs, hashtags and mentions are removed."""
    text = MENTION_RE.sub(" ", TAG_RE.sub(" ", URL_RE.sub(" ", text or "")))
    return [w.lower() for w in WORD_RE.findall(text)]


def tags_in(text: str) -> tuple[list[str], list[str]]:
    """Lower-cased hashtags and mentions written in a caption (for sources without entities)."""
    text = URL_RE.sub(" ", text or "")
    return ([t[1:].lower() for t in TAG_RE.findall(text)], [m[1:].lower() for m in MENTION_RE.findall(text)])


def parse_time(value) -> datetime | None:
    """An ISO-8601 (v2) or `Mon Dec 21 17:00:02 +0000 2020` (v1.1) time as an aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        parsed = datetime.strptime(text, "%a %b %d %H:%M:%S %z %Y")
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def is_naive(value) -> bool:
    """Whether a time as written carries no zone (it is then read as UTC)."""
    if value is None or value == "" or isinstance(value, datetime):
        return isinstance(value, datetime) and value.tzinfo is None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).tzinfo is None
    except ValueError:
        return False


def file_time(path: Path) -> datetime:
    """When a file was last written: the best guess of when its counts were read."""
    return datetime.fromtimestamp(os.stat(path).st_mtime, UTC)


def count_of(metrics: dict, name: str) -> int | None:
    value = metrics.get(name)
    return None if value is None else int(value)


class Medium(NamedTuple):
    """One photo of a tweet as the source gives it; width and height of the original where known
    (shards build then fetches the smallest size variant that still gives its --size)."""

    key: str | None
    url: str | None
    width: int | None = None
    height: int | None = None


def photo_rows(base: dict, media: list[Medium], skipped: dict[str, int]) -> list[dict]:
    """One row per kept medium of a tweet whose shared columns are `base`.

    A URL the tweet gave already is the same photo again: it is counted, not kept twice.
    """
    if len(media) > 1:
        unique, seen = [], set()
        for medium in media:
            if medium.url is None or medium.url not in seen:
                unique.append(medium)
                seen.add(medium.url)
        if len(unique) < len(media):
            skipped["duplicate_url"] += len(media) - len(unique)
            media = unique
    base = {**base, "media_count": len(media), "status": PENDING}
    return [{**base, "key": image_key(base["tweet_id"], i), "media_key": m.key, "url": m.url,
             "orig_width": _dimension(m.width), "orig_height": _dimension(m.height)}
            for i, m in enumerate(media)]


def _dimension(value) -> int | None:
    """A photo side from an API record: a positive whole number, or unknown."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 31 else None


def original_rows(fn, skipped: dict[str, int], *args) -> list[dict]:
    """Rows of an embedded original; one that lacks fields is counted (the retweet itself is fine)."""
    mine = tally()
    try:
        rows = fn(*args, mine)
    except RECORD_ERRORS:
        skipped["original_incomplete"] += 1
        return []
    add_to(skipped, mine)
    return rows


LONE_SURROGATE = "a JSON escape that is no character (a lone surrogate)"


def lone_surrogate(raw: bytes | str, obj) -> bool:
    """Whether a record parsed from `raw` holds an escaped lone surrogate (`"\\udc80"`): valid JSON,
    but no character, so no UTF-8 table could store the row."""
    escape, lone = (ESCAPE_BYTES_RE, LONE_ESCAPE_BYTES_RE) if isinstance(raw, bytes) else (ESCAPE_RE, LONE_ESCAPE_RE)
    if not escape.search(raw) or not lone.search(raw):
        return False
    try:  # rare from here on: a hostile escape, or an escaped backslash before a `ud800` of text
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def loads(raw: bytes):
    """`json.loads` of one line, refusing a lone surrogate (a ValueError, as a parse error is)."""
    obj = json.loads(raw)
    if lone_surrogate(raw, obj):
        raise ValueError(LONE_SURROGATE)
    return obj


def json_lines(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON or the exception) for each non-empty line of a file."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, loads(line)
            except ValueError as exc:
                yield number, exc


def per_line(path: Path, rows_of) -> Iterator[dict | Malformed | Skipped]:
    """Apply `rows_of(obj, skipped)` to every JSON line; a line that fails becomes a `Malformed`."""
    return per_item(path, json_lines(path), rows_of)


def record_rows(path: Path, number: int, skipped: dict[str, int], rows_of) -> list[dict] | Malformed:
    """`rows_of(tally)` for one record, or a `Malformed` naming its fault. The record's skips join
    `skipped` only when it gave rows: a failed record is counted once, as malformed."""
    mine = tally()
    try:
        rows = rows_of(mine)
    except RECORD_ERRORS as exc:
        return Malformed(str(path), number, f"{type(exc).__name__}: {exc}")
    add_to(skipped, mine)
    return rows


def _parsed(obj):
    if isinstance(obj, Exception):  # the line did not parse: the record's fault, reported as such
        raise obj
    return obj


def per_item(path: Path, items, rows_of) -> Iterator[dict | Malformed | Skipped]:
    """Apply `rows_of(obj, skipped)` to every (line number, object or parse error); failures become
    `Malformed`, and what the others skipped is totalled at the end."""
    skipped = tally()
    for number, obj in items:
        rows = record_rows(path, number, skipped, lambda mine: rows_of(_parsed(obj), mine))
        if isinstance(rows, Malformed):
            yield rows
        else:
            yield from rows
    yield from skipped_totals(skipped)


def json_array_items(path: Path, skip_prefix: bool = False) -> Iterator[tuple[int, object]]:
    """(line number, item or exception) for each element of a JSON array, read in chunks.

    `skip_prefix` drops everything before the first `[` (the `window.YTD.… =` of account
    archives). A record that cannot be decoded ends the file with one exception item, since an
    array gives no safe point to resynchronise at.
    """
    decoder = json.JSONDecoder()
    # Bytes that are not UTF-8 become lone surrogates, so the one record holding them is malformed.
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        buf, line, eof = f.read(ARRAY_CHUNK), 1, False
        start = buf.find("[")
        if start < 0 or (not skip_prefix and buf[:start].strip()):
            yield 1, ValueError("not a JSON array")
            return
        line += buf.count("\n", 0, start)
        pos = start + 1
        while True:
            while True:  # skip whitespace and the comma between items
                while pos < len(buf) and buf[pos] in " \t\r\n,":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or eof:
                    break
                buf, pos = f.read(ARRAY_CHUNK), 0
                eof = not buf
            if pos >= len(buf) or buf[pos] == "]":
                return
            try:
                item, end = decoder.raw_decode(buf, pos)
            except ValueError as exc:
                if eof or len(buf) - pos > MAX_RECORD_CHARS:
                    yield line, exc
                    return
                more = f.read(ARRAY_CHUNK)
                eof = not more
                buf, pos = buf[pos:] + more, 0
                continue
            # Scanned in place (no copy): a whole chunk is often ASCII, and escapes are rare.
            if not buf.isascii() and NOT_UTF8_RE.search(buf, pos, end):
                item = ValueError("bytes that are not UTF-8 text")
            elif ESCAPE_RE.search(buf, pos, end) and lone_surrogate(buf[pos:end], item):
                item = ValueError(LONE_SURROGATE)
            yield line, item
            line += buf.count("\n", pos, end)
            pos = end
