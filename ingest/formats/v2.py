"""API v2 tweets: one tweet object (its media looked up by key, or inlined) into rows, and the
reader of twarc2 *flattened* JSONL (one tweet per line, expansions inlined)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingest.formats.rows import (
    Malformed,
    Medium,
    caption_words,
    count_of,
    file_time,
    original_rows,
    parse_time,
    per_line,
    photo_rows,
)


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
        "retweets": count_of(metrics, "retweet_count"),
        "likes": count_of(metrics, "like_count"),
        "replies": count_of(metrics, "reply_count"),
        "quotes": count_of(metrics, "quote_count"),
    }
    return photo_rows(base, [Medium(m.get("media_key"), m.get("url") or m.get("preview_image_url"),
                                    m.get("width"), m.get("height")) for m in media], skipped)


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
    yield from per_line(Path(path), lambda tweet, skipped: flat_tweet_rows(tweet, fallback, media_types, originals,
                                                                            skipped))
