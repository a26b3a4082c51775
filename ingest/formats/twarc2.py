"""twarc2 JSONL, the reference reader: one raw API v2 response page per line (`data`,
`includes`, `__twarc`), read a record at a time; `ingest.formats.twarc2_fast` gives the same rows
faster and falls back to this one."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingest.formats.rows import Malformed, file_time, original_rows, parse_time, per_line
from ingest.formats.v2 import v2_tweet_rows


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


def read_twarc2(path: Path, collected_at=None, media_types=frozenset({"photo"}), originals: bool = True,
                **_) -> Iterator[dict | Malformed]:
    """twarc2 JSONL: one raw API v2 response page per line (`data`, `includes.media`, `__twarc`).

    This is the reference implementation; `twarc2_fast.read_twarc2_fast` gives the same rows.
    """
    fallback = collected_at or file_time(path)
    yield from per_line(Path(path), lambda page, skipped: twarc2_page_rows(page, fallback, media_types, originals,
                                                                           skipped))
