"""The archive X lets a user download: `data/tweets.js` and friends, read as tweets.

Layout: `data/tweets.js` (or `tweets-part1.js`…, `tweet.js` in older archives) holds
`window.YTD.tweets.part0 = [{"tweet": {...}}, ...]` with v1.1-like tweets whose counts are
strings and which carry no author (the owner is in `data/account.js`); the photos themselves are
in `data/tweets_media/{tweet_id}-{file name}` and become the rows' (local) image sources, and
`data/manifest.js` says when the archive was generated (when its counts were read).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from ingest.formats.rows import (
    FormatError,
    Malformed,
    Skipped,
    file_time,
    json_array_items,
    parse_time,
    per_item,
)
from ingest.formats.v1 import v1_tweet_rows

TWEET_FILE_RE = re.compile(r"^tweets?(-part\d+)?\.js$")


def data_dir(path: Path) -> Path:
    """The `data/` folder of an archive given as its root, its `data/` folder or a tweets file."""
    path = Path(path)
    if path.is_file():
        return path.parent
    return path / "data" if (path / "data").is_dir() else path


def tweet_files(path: Path) -> list[Path]:
    """The tweets files of an account archive (one file if PATH names one)."""
    path = Path(path)
    if path.is_file():
        return [path]
    folder = data_dir(path)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if TWEET_FILE_RE.match(p.name))


def read_js(path: Path):
    """The JSON value assigned in a `window.… = VALUE` file of the archive."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        return json.loads(text[text.index("=") + 1:])
    except ValueError as exc:
        raise FormatError(f"{path}: not a readable account-archive file ({exc})") from exc


def owner_id(folder: Path) -> str:
    """The account's id, from `account.js` (or `manifest.js` where that is missing)."""
    account = folder / "account.js"
    if account.is_file():
        for item in read_js(account):
            if "accountId" in (item.get("account") or {}):
                return str(item["account"]["accountId"])
    manifest = folder / "manifest.js"
    if manifest.is_file():
        user = (read_js(manifest).get("userInfo") or {})
        if user.get("accountId"):
            return str(user["accountId"])
    raise FormatError(f"{folder}: no account.js with the owner's accountId beside the tweets")


def generated_at(folder: Path):
    """When X generated the archive (its counts were read then), if `manifest.js` says."""
    manifest = folder / "manifest.js"
    if not manifest.is_file():
        return None
    return parse_time((read_js(manifest).get("archiveInfo") or {}).get("generationDate"))


def local_media_finder(folder: Path):
    """A function (tweet_id, media) → file URI of the photo in `tweets_media/`, or None."""
    media_dir = next((folder / n for n in ("tweets_media", "tweet_media") if (folder / n).is_dir()), None)
    names = {p.name for p in media_dir.iterdir()} if media_dir else set()

    def find(tweet_id: str, media: dict) -> str | None:
        remote = media.get("media_url_https") or media.get("media_url") or ""
        name = f"{tweet_id}-{remote.rsplit('/', 1)[-1]}"
        return (media_dir / name).resolve().as_uri() if remote and name in names else None

    return find


def read_account(path: Path, collected_at=None, media_types=frozenset({"photo"}),
                 **_) -> Iterator[dict | Malformed | Skipped]:
    """Rows of an account archive (its root, its `data/` folder or one of its tweets files)."""
    folder = data_dir(path)
    files = tweet_files(path)
    if not files:
        raise FormatError(f"{path}: no data/tweets.js in this account archive")
    owner = owner_id(folder)
    when = generated_at(folder) or collected_at or file_time(files[0])
    local = local_media_finder(folder)

    def rows_of(item, skipped) -> list[dict]:
        tweet = item.get("tweet", item) if isinstance(item, dict) else item
        return v1_tweet_rows(tweet, when, media_types, False, skipped, user_id=owner, local_media=local)

    for file in files:
        yield from per_item(file, json_array_items(file, skip_prefix=True), rows_of)
