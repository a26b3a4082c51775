"""API v1.1 tweets: one tweet into rows (the account archive's tweets too), and the reader of
v1.1 JSONL, search pages (`{"statuses": [...]}`) or JSON arrays."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingest.formats.rows import (
    Malformed,
    Medium,
    caption_words,
    count_of,
    file_time,
    json_array_items,
    json_lines,
    original_rows,
    parse_time,
    per_item,
    photo_rows,
)

# v1.1 media ids become v2-style media keys (type prefix + id), so both APIs name a photo alike.
MEDIA_KEY_PREFIX = {"photo": "3", "video": "7", "animated_gif": "16"}


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
        "retweets": count_of(tweet, "retweet_count"),
        "likes": count_of(tweet, "favorite_count"),
        "replies": count_of(tweet, "reply_count"),
        "quotes": count_of(tweet, "quote_count"),
    }
    photos = []
    for m in media:
        media_id = str(m.get("id_str") or m.get("id") or "")
        key = m.get("media_key") or (f"{MEDIA_KEY_PREFIX.get(m.get('type', 'photo'), '3')}_{media_id}" if media_id else None)
        url = (local_media and local_media(tweet_id, m)) or m.get("media_url_https") or m.get("media_url")
        original = m.get("original_info") if isinstance(m.get("original_info"), dict) else {}
        photos.append(Medium(key, url, original.get("width"), original.get("height")))
    return photo_rows(base, photos, skipped)


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
