"""Readers: tweets from archive files into rows of the images table (one row per photo).

Each format is a generator over one file that yields row dicts (the columns of
`shards.schema.IMAGES` that metadata can fill) or `Malformed` markers for lines it could not
use, so one bad line is counted and reported without stopping the run.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from shards.schema import PENDING

URL_RE = re.compile(r"https?://\S+")
TAG_RE = re.compile(r"[#＃]\w+")
MENTION_RE = re.compile(r"[@＠]\w+")
WORD_RE = re.compile(r"\w+(?:'\w+)?")


@dataclass
class Malformed:
    """A line of an input file that could not be parsed."""

    path: str
    line: int
    reason: str


class FormatError(ValueError):
    """A whole file is unreadable or of no known format (a user's mistake: exit status 2)."""


def caption_words(text: str) -> list[str]:
    """Lower-cased words of a caption once URLs, hashtags and mentions are removed."""
    text = MENTION_RE.sub(" ", TAG_RE.sub(" ", URL_RE.sub(" ", text or "")))
    return [w.lower() for w in WORD_RE.findall(text)]


def parse_time(value) -> datetime | None:
    """An ISO-8601 (v2) or `Mon Dec 21 17:00:02 +0000 2020` (v1.1) time as an aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        parsed = datetime.strptime(text, "%a %b %d %H:%M:%S %z %Y")
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _count(metrics: dict, name: str) -> int | None:
    value = metrics.get(name)
    return None if value is None else int(value)


def v2_tweet_rows(tweet: dict, media_by_key: dict, collected_at, media_types: set[str]) -> list[dict]:
    """Rows for one API v2 tweet object: one per photo (or other asked-for media type)."""
    refs = {r.get("type") for r in tweet.get("referenced_tweets") or []}
    if "retweeted" in refs:
        return []
    media = [media_by_key[k] for k in (tweet.get("attachments") or {}).get("media_keys", [])
             if k in media_by_key and media_by_key[k].get("type") in media_types]
    if not media:
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
        "media_count": len(media),
        "status": PENDING,
    }
    return [
        {**base, "key": f"{base['tweet_id']}_{i}", "media_key": m.get("media_key"),
         "url": m.get("url") or m.get("preview_image_url")}
        for i, m in enumerate(media)
    ]


def read_twarc2(path: Path, collected_at=None, media_types=frozenset({"photo"})) -> Iterator[dict | Malformed]:
    """twarc2 JSONL: one raw API v2 response page per line (`data`, `includes.media`, `__twarc`)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                page = json.loads(line)
                data = page["data"]
                tweets = data if isinstance(data, list) else [data]
                media = {m["media_key"]: m for m in (page.get("includes") or {}).get("media", [])}
                when = collected_at or parse_time((page.get("__twarc") or {}).get("retrieved_at"))
                rows = [r for t in tweets for r in v2_tweet_rows(t, media, when, media_types)]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                yield Malformed(str(path), number, f"{type(exc).__name__}: {exc}")
                continue
            yield from rows


READERS = {"twarc2": read_twarc2}


def detect_format(path: Path) -> str:
    """Guess an archive's format from its first non-empty line."""
    try:
        with open(path, "rb") as f:
            first = next((line for line in f if line.strip()), b"")
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        obj = json.loads(first)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and "data" in obj:
        return "twarc2"
    raise FormatError(f"{path}: unrecognised archive format (expected twarc2 JSONL pages)")
