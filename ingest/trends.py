"""Trending topics as search terms: `iipa ingest trends` and `iipa ingest search --trending`.

The seed chose what to collect by what was trending. `fetch_trends` asks X API v2
`GET /2/trends/by/woeid/:woeid` (app-only bearer token, 75 requests per 15 minutes) through the
tweepy Client's own request path (tweepy has no method for it, but its `request` gives the same
session, errors and token handling as search), and keeps each trend's name and `tweet_count`.
Trends need not be hashtags ("St James"): `search_trending` searches a hashtag as `#tag` and
any other trend as a quoted phrase, one resumable search per trend, each into its own file of
the output folder, so a rerun continues every trend where it stopped.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from ingest.search import SearchConfig, api_error, make_client, prepared, search_tweets, with_retries
from shards.console import UserError
from shards.schema import write_json

log = logging.getLogger("iipa.ingest")
ROUTE = "/2/trends/by/woeid/{woeid}"
MAX_TRENDS = 50  # the endpoint's maximum: ask for all, so --hashtags-only has enough to keep
HASHTAG_RE = re.compile(r"[#＃]\w+")
TRENDS_FILE = "trends.json"


@dataclass
class TrendsConfig:
    """Options of `iipa ingest trends`."""

    woeid: int
    """Where: a Yahoo! Where On Earth ID (1 = worldwide, 23424977 = United States, …)."""
    out: Path | None = None
    """JSON file that receives the kept trends with their counts."""
    top: int | None = None
    """Keep the first N trends (in X's order) after the other filters."""
    hashtags_only: bool = False
    """Keep only trends that are hashtags (start with `#`)."""
    wait_scale: float = 1.0
    """Multiplies every wait (rate-limit resets, retries); tests shorten them with it."""
    missing_reset_wait_s: float = 900.0
    """Wait after a 429 without `x-rate-limit-reset`: a whole 15-minute rate-limit window."""
    max_retries: int = 5
    """Consecutive server or connection errors tolerated (with backoff) before giving up."""


def check(config: TrendsConfig) -> None:
    if config.woeid < 1:
        raise UserError("--woeid must be a positive Where On Earth ID (1 = worldwide)")
    if config.top is not None and config.top < 1:
        raise UserError("--top must be ≥ 1")


def select(trends: list[dict], top: int | None, hashtags_only: bool) -> tuple[list[dict], dict]:
    """The trends kept (names stripped, first of each name case-insensitively) and the others counted by reason."""
    kept, seen = [], set()
    dropped = {"empty": 0, "duplicate": 0, "not_hashtag": 0, "beyond_top": 0}
    for trend in trends:
        name = str(trend.get("trend_name") or "").strip()
        reason = ("empty" if not name.strip("#＃\"") else "duplicate" if name.lower() in seen
                  else "not_hashtag" if hashtags_only and not is_hashtag(name)
                  else "beyond_top" if top is not None and len(kept) >= top else None)
        if reason:
            dropped[reason] += 1
            continue
        seen.add(name.lower())
        kept.append({"trend_name": name, "tweet_count": trend.get("tweet_count")})
    return kept, dropped


def is_hashtag(name: str) -> bool:
    """A whole hashtag, as a search's `#` operator takes it (`#Toon`, not `#St James`)."""
    return HASHTAG_RE.fullmatch(name) is not None


def fetch_trends(config: TrendsConfig, client=None) -> dict:
    """The trends of `config.woeid`, filtered; written to `config.out` when given."""
    import tweepy

    check(config)
    client, token = prepared(client or make_client())
    params = {"max_trends": MAX_TRENDS, "trend.fields": "trend_name,tweet_count"}
    try:
        response, waits = with_retries(lambda: client.request("GET", ROUTE.format(woeid=config.woeid), params),
                                       config)
    except tweepy.HTTPException as exc:
        raise api_error(exc, token, "trends request") from None
    trends = response.json().get("data") or []
    kept, dropped = select(trends, config.top, config.hashtags_only)
    result = {"woeid": config.woeid, "retrieved_at": datetime.now(UTC).isoformat(), "url": response.url,
              "received": len(trends), "trends": kept, "dropped": dropped, "rate_limit_waits": waits}
    if config.out:
        write_json(result, config.out)
    log.info("trends: kept %d of %d for WOEID %d", len(kept), len(trends), config.woeid)
    return result


def load_trends(path: Path) -> dict:
    """A trends file written by `iipa ingest trends`, or a raw response of the endpoint (`data`)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--trending: {path}: no such file") from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"--trending: {path} is not JSON") from None
    trends = obj.get("trends", obj.get("data")) if isinstance(obj, dict) else None
    if not isinstance(trends, list) or not all(isinstance(t, dict) for t in trends):
        raise UserError(f"--trending: {path} holds no list of trends (`trends` or `data` with trend_name)")
    return {**obj, "trends": trends}


def term_config(config: SearchConfig, trend: str, out: Path) -> SearchConfig:
    """The search of one trend: a hashtag as `#tag`, anything else as a quoted phrase."""
    if is_hashtag(trend):
        return replace(config, out=out, hashtags=[trend[1:]], images=None)
    phrase = '"' + trend.replace('"', " ").strip() + '"'
    return replace(config, out=out, hashtags=[], query=f"({config.query}) {phrase}" if config.query else phrase,
                   images=None)


def slug(index: int, trend: str) -> str:
    """A file name for a trend: its rank (names may collide once cleaned) and its readable part."""
    return f"{index:02d}-{re.sub(r'[^0-9A-Za-z]+', '-', trend).strip('-').lower()[:60] or 'trend'}.jsonl"


def anchored_trends(folder: Path, trends: dict) -> list[dict]:
    """The trends a folder searches: the ones it was started with, so a rerun resumes the same terms."""
    saved = folder / TRENDS_FILE
    if saved.exists():
        earlier = load_trends(saved)
        names = lambda t: [x.get("trend_name") for x in t["trends"]]
        if trends is not None and names(earlier) != names(trends):
            raise UserError(f"{folder} holds a search of other trends ({', '.join(names(earlier)[:3])}, …); "
                            "choose another --out")
        return earlier["trends"]
    if trends is None:
        raise UserError("give --trending FILE or --woeid N")
    write_json(trends, saved)
    return trends["trends"]


def search_trending(config: SearchConfig, trends: dict | None, client=None) -> dict:
    """Search every trend into `config.out` (a folder), one resumable search each; return a summary.

    `trends` is a loaded trends file, or None to continue the folder's own `trends.json`.
    """
    folder = Path(config.out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder}: with trends, --out is a folder (one JSONL file per trend)")
    folder.mkdir(parents=True, exist_ok=True)
    terms = anchored_trends(folder, trends)
    if not terms:
        raise UserError("no trends to search (the trends file is empty after its filters)")
    client = client or make_client()
    results = []
    for i, trend in enumerate(terms):
        name = trend["trend_name"]
        summary = search_tweets(term_config(config, name, folder / slug(i, name)), client)
        results.append({"trend": name, "tweet_count": trend.get("tweet_count"), **summary})
    summary = {"out": str(folder), "trends": results, "tweets": sum(r["tweets"] for r in results),
               "finished": all(r["finished"] for r in results)}
    if config.images:
        from ingest.archive import ArchiveConfig, ingest_archive

        summary["images"] = ingest_archive(ArchiveConfig([Path(r["out"]) for r in results], config.images,
                                                         format="twarc2"))
    return summary


def trends_to_search(folder: Path, trending: Path | None, trends: TrendsConfig, client=None) -> dict | None:
    """The trends `search --trending FILE` or `--woeid N` asks for, filtered by --top/--hashtags-only;
    None when the folder already holds the trends of that WOEID (a rerun resumes them, never refetches)."""
    if Path(folder).exists() and not Path(folder).is_dir():
        raise UserError(f"--out {folder}: with trends, --out is a folder (one JSONL file per trend)")
    if trending is not None:
        check(trends)
        loaded = load_trends(trending)
        kept, dropped = select(loaded["trends"], trends.top, trends.hashtags_only)
        return {**loaded, "trends": kept, "dropped": dropped, "source": str(trending)}
    saved = Path(folder) / TRENDS_FILE
    if saved.exists():
        woeid = load_trends(saved).get("woeid")
        if woeid != trends.woeid:
            raise UserError(f"{folder} holds a search of the trends of WOEID {woeid}; choose another --out")
        return None
    return fetch_trends(trends, client)
