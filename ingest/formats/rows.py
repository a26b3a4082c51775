"""Readers: tweets from archive files into rows of the images table (one row per photo).

Each format is a generator over one file that yields row dicts (the columns of
`shards.schema.IMAGES` that metadata can fill), `pyarrow.Table` batches of such rows (from a
vectorised fast path), or `Malformed` markers for records it could not use, so one bad record is
counted and reported without stopping the run; at its end, `Skipped` totals for the records that
were read but gave no row (`SKIP_REASONS` says why each can be) and `Counted` totals for rows
worth a word. Readers stream: memory does not grow with the file.

Formats (the keys of `READERS`): `twarc2` (raw API v2 response pages, one per line), `v2`
(twarc2 *flattened* tweets, one per line, expansions inlined), `v1` (API v1.1 tweets as JSONL or
JSON arrays), `account` (the archive X lets a user download) and `table` (CSV or Parquet).
"""
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
# v1.1 media ids become v2-style media keys (type prefix + id), so both APIs name a photo alike.
MEDIA_KEY_PREFIX = {"photo": "3", "video": "7", "animated_gif": "16"}
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


def _count(metrics: dict, name: str) -> int | None:
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


# ---- API v2 (twarc2 pages and flattened tweets) -------------------------------------------


def v2_tweet_rows(tweet: dict, media_by_key: dict, collected_at, media_types, skipped: dict[str, int]) -> list[dict]:
    """Rows for one API v2 tweet object: one per photo (or other asked-for media type)."""
    if not isinstance(tweet, dict) or "id" not in tweet:
        skipped["not_a_tweet"] += 1
        return []
    refs = {r.get("type") for r in tweet.get("referenced_tweets") or []}
    if "retweeted" in refs:
        skipped["retweet"] += 1
        return []
    attachments = tweet.get("attachments") or {}
    if media_by_key is None:  # flattened: the media objects sit inside the tweet
        media_by_key = {m["media_key"]: m for m in attachments.get("media") or []}
    keys = attachments.get("media_keys") or []
    media = [media_by_key[k] for k in keys if k in media_by_key and media_by_key[k].get("type") in media_types]
    if not media:
        skipped["no_photo" if any(k in media_by_key for k in keys) or not keys else "media_not_included"] += 1
        return []
    entities = tweet.get("entities") or {}
    metrics = tweet.get("public_metrics") or {}
    text = tweet.get("text") or ""
    base = {
        "tweet_id": str(tweet["id"]),
        "user_id": str(tweet["author_id"]),
        "created_at": parse_time(tweet["created_at"]),
        "collected_at": collected_at,
        "text": text,
        "hashtags": [h["tag"].lower() for h in entities.get("hashtags", [])],
        "mentions": [m["username"].lower() for m in entities.get("mentions", [])],
        "caption_words": caption_words(text),
        "retweets": _count(metrics, "retweet_count"),
        "likes": _count(metrics, "like_count"),
        "replies": _count(metrics, "reply_count"),
        "quotes": _count(metrics, "quote_count"),
    }
    return photo_rows(base, [Medium(m.get("media_key"), m.get("url") or m.get("preview_image_url"),
                                    m.get("width"), m.get("height")) for m in media], skipped)


def retweeted_originals(tweet: dict, by_id: dict) -> list[dict]:
    """The original tweets a v2 retweet points at, where the page or line carries them."""
    return [by_id[r["id"]] for r in tweet.get("referenced_tweets") or []
            if r.get("type") == "retweeted" and r.get("id") in by_id]


def twarc2_page_rows(page: dict, collected_at, media_types, originals: bool, skipped: dict[str, int]) -> list[dict]:
    """Rows of one raw v2 response page (`data`, `includes`, optional `__twarc`)."""
    # A search's last page may hold no tweets at all, only its `meta`.
    data = page["data"] if "data" in page or "meta" not in page else []
    tweets = data if isinstance(data, list) else [data]
    includes = page.get("includes") or {}
    media = {m["media_key"]: m for m in includes.get("media", [])}
    when = parse_time((page.get("__twarc") or {}).get("retrieved_at")) or collected_at
    rows = [r for t in tweets for r in v2_tweet_rows(t, media, when, media_types, skipped)]
    if originals:
        by_id = {str(t.get("id")): t for t in includes.get("tweets", [])}
        for tweet in tweets:
            for original in retweeted_originals(tweet, by_id):
                rows += original_rows(v2_tweet_rows, skipped, original, media, when, media_types)
    return rows


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


def _per_line(path: Path, rows_of) -> Iterator[dict | Malformed | Skipped]:
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


def read_twarc2(path: Path, collected_at=None, media_types=frozenset({"photo"}), originals: bool = True,
                **_) -> Iterator[dict | Malformed]:
    """twarc2 JSONL: one raw API v2 response page per line (`data`, `includes.media`, `__twarc`).

    This is the reference implementation; `ingest.fastpath.read_twarc2_fast` gives the same rows.
    """
    fallback = collected_at or file_time(path)
    yield from _per_line(Path(path), lambda page, skipped: twarc2_page_rows(page, fallback, media_types, originals,
                                                                            skipped))


def flat_tweet_rows(tweet: dict, collected_at, media_types, originals: bool, skipped: dict[str, int]) -> list[dict]:
    """Rows of one twarc2-flattened tweet (`author`, `attachments.media`, `__twarc` inlined)."""
    if not isinstance(tweet, dict) or "id" not in tweet:
        skipped["not_a_tweet"] += 1
        return []
    when = parse_time((tweet.get("__twarc") or {}).get("retrieved_at")) or collected_at
    if "author_id" not in tweet and isinstance(tweet.get("author"), dict):
        tweet = {**tweet, "author_id": tweet["author"].get("id")}
    rows = v2_tweet_rows(tweet, None, when, media_types, skipped)
    if originals:
        for ref in tweet.get("referenced_tweets") or []:
            if ref.get("type") == "retweeted" and "attachments" in ref:
                rows += original_rows(flat_tweet_rows, skipped, ref, when, media_types, False)
    return rows


def read_v2(path: Path, collected_at=None, media_types=frozenset({"photo"}), originals: bool = True,
            **_) -> Iterator[dict | Malformed]:
    """twarc2 flattened JSONL: one tweet per line with its expansions inlined."""
    fallback = collected_at or file_time(path)
    yield from _per_line(Path(path), lambda tweet, skipped: flat_tweet_rows(tweet, fallback, media_types, originals,
                                                                             skipped))


# ---- API v1.1 ---------------------------------------------------------------------------


def v1_media(tweet: dict, media_types) -> list[dict]:
    """The media objects of a v1.1 tweet of the asked-for types (`extended_entities` first)."""
    media = (tweet.get("extended_entities") or {}).get("media") or (tweet.get("entities") or {}).get("media") or []
    return [m for m in media if m.get("type", "photo") in media_types]


def is_v1_tweet(record) -> bool:
    """Whether a v1.1 record is a tweet: an id and a text (a user object, say, has no text)."""
    return isinstance(record, dict) and ("id" in record or "id_str" in record) and (
        "text" in record or "full_text" in record)


def v1_tweet_rows(tweet: dict, collected_at, media_types, originals: bool, skipped: dict[str, int],
                  user_id: str | None = None, local_media=None) -> list[dict]:
    """Rows of one v1.1 tweet (or account-archive tweet: counts as strings, owner given).

    A retweet gives no rows of its own; its embedded original (`retweeted_status`) may.
    `local_media(tweet_id, media)` returns a local file URI for a photo where one exists.
    """
    if not is_v1_tweet(tweet):
        skipped["not_a_tweet"] += 1
        return []
    if "retweeted_status" in tweet:
        skipped["retweet"] += 1
        if not originals:
            return []
        return original_rows(v1_tweet_rows, skipped, tweet["retweeted_status"], collected_at, media_types, False)
    text = tweet.get("full_text") or tweet.get("text") or ""
    if user_id is not None and text.startswith("RT @"):
        skipped["retweet"] += 1
        return []  # the account archive marks retweets only by their text
    media = v1_media(tweet, media_types)
    if not media:
        skipped["no_photo"] += 1
        return []
    tweet_id = str(tweet.get("id_str") or tweet["id"])
    entities = tweet.get("entities") or {}
    user = tweet.get("user") or {}
    base = {
        "tweet_id": tweet_id,
        "user_id": str(user_id or user.get("id_str") or user["id"]),
        "created_at": parse_time(tweet["created_at"]),
        "collected_at": collected_at,
        "text": text,
        "hashtags": [h["text"].lower() for h in entities.get("hashtags") or []],
        "mentions": [m["screen_name"].lower() for m in entities.get("user_mentions") or []],
        "caption_words": caption_words(text),
        "retweets": _count(tweet, "retweet_count"),
        "likes": _count(tweet, "favorite_count"),
        "replies": _count(tweet, "reply_count"),
        "quotes": _count(tweet, "quote_count"),
    }
    photos = []
    for m in media:
        media_id = str(m.get("id_str") or m.get("id") or "")
        key = m.get("media_key") or (f"{MEDIA_KEY_PREFIX.get(m.get('type', 'photo'), '3')}_{media_id}" if media_id else None)
        url = (local_media and local_media(tweet_id, m)) or m.get("media_url_https") or m.get("media_url")
        original = m.get("original_info") if isinstance(m.get("original_info"), dict) else {}
        photos.append(Medium(key, url, original.get("width"), original.get("height")))
    return photo_rows(base, photos, skipped)


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


def is_json_array(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def read_v1(path: Path, collected_at=None, media_types=frozenset({"photo"}), originals: bool = True,
            **_) -> Iterator[dict | Malformed]:
    """API v1.1 tweets: JSONL (tweets or `{"statuses": [...]}` search pages) or a JSON array."""
    path = Path(path)
    when = collected_at or file_time(path)

    def rows_of(obj, skipped: dict[str, int]) -> list[dict]:
        if isinstance(obj, dict) and isinstance(obj.get("statuses"), list):
            obj = obj["statuses"]
        if isinstance(obj, list):
            return [r for t in obj for r in v1_tweet_rows(t, when, media_types, originals, skipped)]
        return v1_tweet_rows(obj, when, media_types, originals, skipped)

    items = json_array_items(path) if is_json_array(path) else json_lines(path)
    yield from per_item(path, items, rows_of)
