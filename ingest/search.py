"""`iipa ingest search`: tweets from the X API v2 search (tweepy's `Client`) saved as twarc2 JSONL.

Every response page is appended to the output, exactly as the API sent it plus twarc2's
`__twarc` stamp (url, version, retrieved_at), before anything else is done with it, so a run can
be re-ingested with `iipa ingest archive` and resumed: a later run with the same query continues
from the last saved `next_token`. Rate limits are waited out (until `x-rate-limit-reset`, or a
whole 15-minute window when the header is missing); the bearer token is read from the
environment and never written or logged.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests

from ingest.formats.rows import parse_time
from shards.console import UserError, progress
from shards.schema import write_json

log = logging.getLogger("iipa.ingest")
TOKEN_ENV = "X_BEARER_TOKEN"
FILTERS = ("-is:retweet", "has:images")
EXPANSIONS = ["author_id", "attachments.media_keys"]
TWEET_FIELDS = ["id", "text", "author_id", "created_at", "entities", "public_metrics", "attachments",
                "referenced_tweets", "lang", "conversation_id", "possibly_sensitive"]
MEDIA_FIELDS = ["media_key", "type", "url", "preview_image_url", "width", "height", "alt_text"]
USER_FIELDS = ["id", "username", "name", "created_at", "public_metrics", "verified"]


class SearchError(UserError):
    """The search cannot go on (token rejected, bad query, API unavailable): one line, exit 2."""


@dataclass
class SearchConfig:
    """Options of `iipa ingest search`."""

    out: Path
    """twarc2 JSONL file that receives the raw response pages (appended to when resuming); when
    searching trends, a folder of one such file per trend."""
    hashtags: list[str] = field(default_factory=list)
    """Hashtags to search for (any of them), with or without `#`."""
    query: str | None = None
    """A raw search query, combined (AND) with the hashtags if both are given."""
    since: str | None = None
    """Earliest creation time (ISO date or time, UTC)."""
    until: str | None = None
    """Latest creation time (exclusive)."""
    max_tweets: int | None = None
    """Stop once this many tweets are saved (counting those of an earlier run that is resumed)."""
    full_archive: bool = False
    """Search the full archive (`search_all_tweets`, academic/pro access) instead of the last 7 days."""
    page_size: int = 100
    """Tweets per request (10..100, or 10..500 for the full archive)."""
    wait_scale: float = 1.0
    """Multiplies every wait (rate-limit resets, pacing, retries); tests shorten them with it."""
    missing_reset_wait_s: float = 900.0
    """Wait after a 429 without `x-rate-limit-reset`: a whole 15-minute rate-limit window."""
    max_retries: int = 5
    """Consecutive server or connection errors tolerated (with backoff) before giving up."""
    images: Path | None = None
    """Also ingest the saved pages into this images table when the search ends."""


def build_query(config: SearchConfig) -> str:
    """The v2 query: hashtags (any) and/or the raw query, originals with images only."""
    tags = [f"#{t.strip().lstrip('#')}" for t in config.hashtags if t.strip().lstrip("#")]
    parts = []
    if config.query:
        parts.append(f"({config.query})" if tags else config.query)
    if tags:
        parts.append(tags[0] if len(tags) == 1 else "(" + " OR ".join(tags) + ")")
    if not parts:
        raise UserError("give --hashtags or --query")
    query = " ".join(parts)
    return " ".join([query, *[f for f in FILTERS if f not in query]])


def scrub(text: str, token: str | None) -> str:
    """A message with the bearer token blotted out, in case an error ever echoes it."""
    return text.replace(token, "***") if token else text


def our_page(line: bytes) -> dict | None:
    """The page a line holds if it is one this command saved (a JSON page with our stamp), else None."""
    try:
        page = json.loads(line)
    except ValueError:
        return None
    stamp = page.get("__twarc") if isinstance(page, dict) else None
    return page if isinstance(stamp, dict) and str(stamp.get("version", "")).startswith("iipa") else None


def read_progress(out: Path) -> tuple[int, str | None, bool]:
    """(tweets saved, last next_token, finished) of an earlier run's output.

    Only our own pages are resumed: the one thing cut off is a torn last line (the process died
    while writing it, so it has no newline and does not parse) after pages of ours. Any other
    content means `--out` names someone else's file, which is refused and left untouched.
    """
    if not out.exists():
        return 0, None, False
    if not out.is_file():
        raise UserError(f"--out {out} is not a file (a search writes one JSONL file)")
    tweets, token, finished, good, number = 0, None, False, 0, 0
    with open(out, "rb") as f:
        for number, line in enumerate(f, 1):
            page = our_page(line) if line.endswith(b"\n") else None
            if page is None:
                if not line.endswith(b"\n") and torn_tail(out, line, good):
                    break
                raise UserError(f"{out}: line {number} is not a search page saved by iipa; this file is not "
                                "a search output of ours, so it is left as it is: choose another --out")
            good += len(line)
            data = page.get("data") or []
            tweets += len(data) if isinstance(data, list) else 1
            token = (page.get("meta") or {}).get("next_token")
            finished = token is None
    if good < out.stat().st_size:
        log.warning("%s: dropping a partly written last page (%d bytes)", out, out.stat().st_size - good)
        with open(out, "r+b") as f:
            f.truncate(good)
    return tweets, token, finished


def torn_tail(out: Path, line: bytes, good: int) -> bool:
    """Whether an unfinished last line is the start of a page of ours: after our pages, or as the
    first line of a file whose search state we wrote (the state is written before any page)."""
    return line.startswith(b"{") and (good > 0 or Path(str(out) + ".search.json").exists())


def rate_limit_wait(headers, default: float) -> float:
    """Seconds until the rate-limit window resets (+1 s), or `default` without the header."""
    reset = headers.get("x-rate-limit-reset")
    if reset is None:
        return default
    return max(0.0, float(reset) - time.time()) + 1.0


def make_client():
    """A tweepy Client with the bearer token of the environment."""
    import tweepy

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UserError(f"{TOKEN_ENV} is not set: export the bearer token of your X app")
    return tweepy.Client(bearer_token=token, wait_on_rate_limit=False)


def prepared(client) -> tuple:
    """(client, its bearer token): raw responses, and tweepy kept from logging the token."""
    client.return_type = requests.Response  # raw pages and their rate-limit headers
    # tweepy logs request headers (the token) at DEBUG: keep its logger above that.
    logging.getLogger("tweepy").setLevel(max(logging.INFO, logging.getLogger("tweepy").level))
    return client, getattr(client, "bearer_token", None)


def check_resume(config: SearchConfig, params: dict) -> Path:
    """The resolved search written beside the output; a resumed run must ask the same thing."""
    state = Path(str(config.out) + ".search.json")
    if state.exists() and Path(config.out).exists():
        earlier = json.loads(state.read_text())
        same = {k: earlier.get(k) for k in ("query", "endpoint", "start_time", "end_time")}
        if same != {k: params[k] for k in same}:
            raise UserError(f"{config.out} holds another search ({earlier.get('query')!r}); choose another --out")
    return state


def with_retries(call, config):
    """`call()` retried through rate limits (waiting for the reset) and server or connection
    errors (with backoff); returns (its result, the rate-limit waits in seconds). `config` gives
    `wait_scale`, `missing_reset_wait_s` and `max_retries`; other API errors propagate."""
    import tweepy

    retries, waits = 0, []
    while True:
        try:
            return call(), waits
        except tweepy.TooManyRequests as exc:
            wait = rate_limit_wait(exc.response.headers, config.missing_reset_wait_s)
            log.warning("rate limit reached: waiting %.0f s for the reset", wait)
            waits.append(round(wait, 1))
            time.sleep(wait * config.wait_scale)
        except (tweepy.TwitterServerError, requests.ConnectionError, requests.Timeout) as exc:
            retries += 1
            if retries > config.max_retries:
                raise SearchError(f"X API unavailable after {config.max_retries} retries ({type(exc).__name__}); "
                                  "run the same command again to resume") from None
            time.sleep(2.0 ** retries * config.wait_scale)


def fetch_page(client, config: SearchConfig, params: dict, next_token: str | None, count: int):
    """One search request, retried through rate limits and server errors; returns the response."""
    method = client.search_all_tweets if config.full_archive else client.search_recent_tweets
    return with_retries(lambda: method(params["query"], max_results=count, next_token=next_token,
                                       start_time=params["start_time"], end_time=params["end_time"],
                                       expansions=EXPANSIONS, tweet_fields=TWEET_FIELDS,
                                       media_fields=MEDIA_FIELDS, user_fields=USER_FIELDS), config)


def api_error(exc, token: str | None, what: str = "search") -> SearchError:
    """One clear line for an error status of the API (never naming the token)."""
    import tweepy

    detail = "; ".join(exc.api_messages) or exc.response.reason
    if isinstance(exc, tweepy.Unauthorized):
        return SearchError(f"the X API rejected the bearer token in {TOKEN_ENV} (401: {detail})")
    if isinstance(exc, tweepy.Forbidden):
        return SearchError(scrub(f"the X API refused this {what} for this token (403: {detail})", token))
    return SearchError(scrub(f"the X API rejected the {what} ({exc.response.status_code}: {detail})", token))


def save_page(f, page: dict, url: str) -> None:
    """Append one raw page with its twarc2 stamp, flushed to disk before anything else happens."""
    import tweepy

    page["__twarc"] = {"url": url, "version": f"iipa (tweepy {tweepy.__version__})",
                       "retrieved_at": datetime.now(UTC).isoformat()}
    f.write(json.dumps(page, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def check_options(config: SearchConfig) -> tuple:
    """Refuse impossible options before anything is written or asked; return (since, until) as times."""
    limit = 500 if config.full_archive else 100
    if not 10 <= config.page_size <= limit:
        raise UserError(f"--page-size must be within 10..{limit}")
    if config.max_tweets is not None and config.max_tweets < 1:
        raise UserError("--max-tweets must be ≥ 1")
    try:
        start, end = (parse_time(t) if t else None for t in (config.since, config.until))
    except ValueError:
        raise UserError(f"--since/--until: {config.since or ''} {config.until or ''} is not an ISO date or time") from None
    if start and end and start >= end:
        raise UserError("--since must be before --until")
    return start, end


def search_tweets(config: SearchConfig, client=None) -> dict:
    """Run (or resume) a search, saving raw pages to `config.out`; return a summary.

    `client` is a `tweepy.Client`; by default one is made with the token of `X_BEARER_TOKEN`.
    """
    import tweepy

    start, end = check_options(config)
    params = {"query": build_query(config), "endpoint": "all" if config.full_archive else "recent",
              "start_time": start.isoformat() if start else None, "end_time": end.isoformat() if end else None}
    client, token = prepared(client or make_client())
    out = Path(config.out)
    state = check_resume(config, params)
    saved, next_token, finished = read_progress(out)
    resumed = saved > 0
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json({**params, "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}}, state)
    pages, waits = 0, []
    bar = progress(total=config.max_tweets, initial=saved, unit=" tweets", desc="search")
    with open(out, "a", encoding="utf-8") as f:
        while not finished and (config.max_tweets is None or saved < config.max_tweets):
            left = config.page_size if config.max_tweets is None else config.max_tweets - saved
            try:
                response, page_waits = fetch_page(client, config, params, next_token, max(10, min(config.page_size, left)))
            except tweepy.HTTPException as exc:
                raise api_error(exc, token) from None
            waits += page_waits
            page = response.json()
            save_page(f, page, response.url)
            pages += 1
            got = len(page.get("data") or [])
            saved += got
            bar.update(got)
            next_token = (page.get("meta") or {}).get("next_token")
            finished = next_token is None
            if str(response.headers.get("x-rate-limit-remaining")) == "0" and not finished:
                wait = rate_limit_wait(response.headers, config.missing_reset_wait_s)
                waits.append(round(wait, 1))
                time.sleep(wait * config.wait_scale)
            elif config.full_archive:
                time.sleep(1.0 * config.wait_scale)  # the full-archive endpoint allows one request a second
    bar.close()
    summary = {"out": str(out), "query": params["query"], "tweets": saved, "pages": pages, "resumed": resumed,
               "finished": finished, "next_token": next_token, "rate_limit_waits": waits}
    if config.images:
        from ingest.archive import ArchiveConfig, ingest_archive

        summary["images"] = ingest_archive(ArchiveConfig([out], config.images, format="twarc2"))
    log.info("search: %d tweets in %s (%s)", saved, out, "complete" if finished else "more to fetch: run again to resume")
    return summary
