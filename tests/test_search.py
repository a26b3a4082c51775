"""`iipa ingest search` through the real tweepy client, the X API replayed at the HTTP layer.

The pages are real recorded v2 responses (python-twitter-v2); the recordings left out the
`includes.media` objects, so each original tweet gets one photo attachment added, as a search
with `has:images` returns. A `requests` transport adapter mounted on `client.session` replays
them, a 429 in the middle (with and without `x-rate-limit-reset`), and records every request.
"""
from __future__ import annotations

import json
import logging
import time
import urllib.parse

import pytest
import requests
import tweepy
from requests.structures import CaseInsensitiveDict

from ingest.archive import ArchiveConfig, ingest_archive
from ingest.search import SearchConfig, SearchError, build_query, search_tweets
from ingest.trends import TrendsConfig, fetch_trends, search_trending, trends_to_search
from shards.console import UserError
from shards.schema import read_table
from tests.conftest import run_iipa

TOKEN = "AAAAAAAAAAAAAAAAAAAAAsecret-bearer-1234567890"
V2 = "python-twitter-v2"


class Interrupted(BaseException):
    """Stands for the process being killed in the middle of a search."""


class Replay(requests.adapters.BaseAdapter):
    """Answers each request with `handler(params, n)` → (status, headers, body) or raises."""

    def __init__(self, handler):
        super().__init__()
        self.handler, self.seen = handler, []

    def send(self, request, **kwargs):
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.url).query))
        self.seen.append((request, params))
        status, headers, body = self.handler(params, len(self.seen))
        response = requests.Response()
        response.status_code, response.url, response.request = status, request.url, request
        response.headers = CaseInsensitiveDict({"content-type": "application/json", **headers})
        response.reason = {200: "OK", 401: "Unauthorized", 429: "Too Many Requests"}.get(status, "Error")
        response._content, response._content_consumed, response.encoding = json.dumps(body).encode(), True, "utf-8"
        return response

    def close(self):
        pass


def with_photos(page: dict) -> dict:
    """A recorded page as a `has:images` search returns it: originals carry one photo each."""
    page = json.loads(json.dumps(page))
    media = []
    for tweet in page["data"]:
        if "retweeted" not in {r["type"] for r in tweet.get("referenced_tweets", [])}:
            key = f"3_{tweet['id']}"
            tweet["attachments"] = {"media_keys": [key]}
            media.append({"media_key": key, "type": "photo", "url": f"https://pbs.twimg.com/media/{key}.jpg"})
    page.setdefault("includes", {})["media"] = media
    return page


@pytest.fixture(scope="module")
def pages(realdata):
    load = lambda name: with_photos(json.loads((realdata / V2 / name).read_text()))
    first, second, third = (load("apis__searches__search_tweets_for_nyc.json"),
                            load("apis__tweet__tweet_quote_tweets_resp.json"),
                            load("apis__searches__search_tweets_query.json"))
    assert "next_token" not in third["meta"]
    return [first, second, third]


def api(pages, interrupt_at=None, rate_limited=True):
    """The search endpoint: page by next_token, two 429s before the second page."""
    tokens = {None: 0, pages[0]["meta"]["next_token"]: 1, pages[1]["meta"]["next_token"]: 2}
    limited = []

    def handler(params, n):
        index = tokens[params.get("next_token")]
        if index == interrupt_at:
            raise Interrupted()
        if index == 1 and rate_limited and len(limited) < 2:
            limited.append(n)
            headers = {"x-rate-limit-reset": str(int(time.time()) + 30)} if len(limited) == 1 else {}
            return 429, headers, {"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank",
                                  "status": 429}
        return 200, {"x-rate-limit-remaining": "449"}, pages[index]

    return handler


def client_for(handler) -> tuple[tweepy.Client, Replay]:
    client = tweepy.Client(bearer_token=TOKEN)
    replay = Replay(handler)
    client.session.mount("https://", replay)
    return client, replay


def config(tmp_path, **kw) -> SearchConfig:
    return SearchConfig(out=tmp_path / "raw.jsonl", hashtags=["NYC", "#photo"], wait_scale=0.001, **kw)


def test_query_asks_for_original_photo_tweets():
    assert build_query(SearchConfig("x", hashtags=["cats", "#Dogs"])) == "(#cats OR #Dogs) -is:retweet has:images"
    assert build_query(SearchConfig("x", query="from:nasa has:images")) == "from:nasa has:images -is:retweet"


def test_paginated_search_waits_out_rate_limits_and_resumes(pages, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    client, replay = client_for(api(pages, interrupt_at=2))
    with pytest.raises(Interrupted):
        search_tweets(config(tmp_path), client)
    raw = tmp_path / "raw.jsonl"
    saved = [json.loads(line) for line in raw.read_text().splitlines()]
    assert [p["meta"] for p in saved] == [pages[0]["meta"], pages[1]["meta"]]  # raw pages, as sent
    assert all(p["__twarc"]["retrieved_at"] and "api.twitter.com/2/tweets/search/recent" in p["__twarc"]["url"]
               for p in saved)
    params = [p for _, p in replay.seen]
    assert params[0]["query"] == "(#NYC OR #photo) -is:retweet has:images"
    assert "attachments.media_keys" in params[0]["expansions"] and "public_metrics" in params[0]["tweet.fields"]
    # two 429s, then the second page, then the interruption: 5 requests, the last three for page 2 or 3
    assert [p.get("next_token") for p in params] == [None, *[pages[0]["meta"]["next_token"]] * 3,
                                                      pages[1]["meta"]["next_token"]]

    client, replay = client_for(api(pages))
    summary = search_tweets(config(tmp_path), client)
    assert summary["resumed"] and summary["finished"] and summary["pages"] == 1
    assert [p.get("next_token") for _, p in replay.seen] == [pages[1]["meta"]["next_token"]]
    assert summary["tweets"] == sum(len(p["data"]) for p in pages)
    lines = raw.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["meta"] == pages[2]["meta"]

    # the token never reaches a file or a log line, even with tweepy logging at DEBUG
    for path in tmp_path.iterdir():
        assert TOKEN not in path.read_text()
    assert TOKEN not in caplog.text

    result = ingest_archive(ArchiveConfig([raw], tmp_path / "images.parquet"))
    table = read_table(tmp_path / "images.parquet", "images")
    originals = [t for p in pages for t in p["data"] if "attachments" in t]
    assert result["images"] == table.num_rows == len(originals) == 3 + 15 + 4
    row = table.to_pylist()[[r["tweet_id"] for r in table.to_pylist()].index("1495979553889697792")]
    assert row["user_id"] == "29757971" and row["likes"] == pages[1]["data"][0]["public_metrics"]["like_count"]
    assert row["collected_at"].isoformat()[:10] == saved[1]["__twarc"]["retrieved_at"][:10]


def test_rate_limit_waits_follow_the_reset_header(pages, tmp_path):
    client, _ = client_for(api(pages))
    start = time.monotonic()
    summary = search_tweets(config(tmp_path), client)
    waits = summary["rate_limit_waits"]
    assert len(waits) == 2 and 28 <= waits[0] <= 32  # x-rate-limit-reset 30 s ahead, plus 1 s
    assert waits[1] == 900.0  # no header: a whole 15-minute window
    assert time.monotonic() - start < 30  # wait_scale shortened both
    assert summary["finished"] and summary["tweets"] == 29


def test_stops_cleanly_at_max_tweets_and_continues_later(pages, tmp_path):
    client, replay = client_for(api(pages, rate_limited=False))
    summary = search_tweets(config(tmp_path, max_tweets=12), client)
    assert [int(p["max_results"]) for _, p in replay.seen] == [12, 10]  # never below the API's minimum of 10
    assert summary["tweets"] == 25 and not summary["finished"]
    assert summary["next_token"] == pages[1]["meta"]["next_token"]
    client, replay = client_for(api(pages, rate_limited=False))
    summary = search_tweets(config(tmp_path, max_tweets=100), client)
    assert len(replay.seen) == 1 and summary["finished"] and summary["tweets"] == 29


def test_another_query_into_the_same_output_is_refused(pages, tmp_path):
    client, _ = client_for(api(pages, rate_limited=False))
    search_tweets(config(tmp_path, max_tweets=10), client)
    with pytest.raises(UserError, match="another search"):
        search_tweets(SearchConfig(out=tmp_path / "raw.jsonl", hashtags=["cats"]), client)


def test_rejected_token_is_one_clear_error(tmp_path):
    body = {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
    client, _ = client_for(lambda params, n: (401, {}, body))
    with pytest.raises(SearchError, match="rejected the bearer token") as info:
        search_tweets(config(tmp_path), client)
    assert TOKEN not in str(info.value)
    assert not (tmp_path / "raw.jsonl").exists() or (tmp_path / "raw.jsonl").read_text() == ""


def test_cli_without_a_token_says_so(tmp_path):
    result = run_iipa("ingest", "search", "--hashtags", "cats", "--out", str(tmp_path / "raw.jsonl"),
                      env={"X_BEARER_TOKEN": ""})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = "iipa ingest: error: X_BEARER_TOKEN is not set: export the bearer token of your X app"
    assert result.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "raw.jsonl").exists()


# ---- trends: GET /2/trends/by/woeid/:woeid through the same client, then one search per trend ----

TRENDS = "x-api-v2-trends/trends_by_woeid_26062.json"


@pytest.fixture(scope="module")
def trends_body(realdata):
    return json.loads((realdata / TRENDS).read_text())


def test_trends_keep_names_and_counts_and_filter(trends_body, tmp_path):
    calls = []

    def handler(params, n):
        calls.append(n)
        if n == 1:  # one rate limit first, with its reset header
            return 429, {"x-rate-limit-reset": str(int(time.time()) + 5)}, {"title": "Too Many Requests"}
        return 200, {}, trends_body

    client, replay = client_for(handler)
    result = fetch_trends(TrendsConfig(26062, tmp_path / "trends.json", top=3, wait_scale=0.001), client)
    request, params = replay.seen[-1]
    assert urllib.parse.urlsplit(request.url).path == "/2/trends/by/woeid/26062"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}" and params["trend.fields"] == "trend_name,tweet_count"
    assert len(calls) == 2 and len(result["rate_limit_waits"]) == 1
    saved = json.loads((tmp_path / "trends.json").read_text())
    assert saved["trends"] == trends_body["data"][:3]  # X's order, names with their counts
    assert saved["received"] == 8 and saved["dropped"]["beyond_top"] == 5
    assert TOKEN not in (tmp_path / "trends.json").read_text()

    # the documented example holds no hashtag at all: --hashtags-only keeps nothing, and says why
    client, _ = client_for(lambda params, n: (200, {}, trends_body))
    result = fetch_trends(TrendsConfig(26062, hashtags_only=True), client)
    assert result["trends"] == [] and result["dropped"]["not_hashtag"] == 8


def trend_api(pages, interrupt=None):
    """Search replies per query: the hashtag trend pages through all three pages, the phrase gets one."""
    tokens = {None: 0, pages[0]["meta"]["next_token"]: 1, pages[1]["meta"]["next_token"]: 2}

    def handler(params, n):
        if interrupt and interrupt(params):
            raise Interrupted()
        if params["query"].startswith("#NYC"):
            return 200, {}, pages[tokens[params.get("next_token")]]
        return 200, {}, pages[2]

    return handler


def test_search_trending_one_resumable_search_per_trend(pages, trends_body, tmp_path):
    # a hashtag trend beside the documented (non-hashtag) ones, in the endpoint's own shape
    body = {"data": [{"trend_name": "#NYC", "tweet_count": 9100}, *trends_body["data"][4:6]]}
    (tmp_path / "trends.json").write_text(json.dumps(body))
    out = tmp_path / "raw"
    second_page = lambda params: params.get("next_token") == pages[1]["meta"]["next_token"]
    client, _ = client_for(trend_api(pages, interrupt=second_page))
    cfg = SearchConfig(out=out, wait_scale=0.001)
    trends = trends_to_search(out, tmp_path / "trends.json", TrendsConfig(1, top=2))
    with pytest.raises(Interrupted):
        search_trending(cfg, trends, client)

    client, replay = client_for(trend_api(pages))
    summary = search_trending(cfg, None, client)  # a rerun continues the folder's own trends
    queries = [(p["query"], p.get("next_token")) for _, p in replay.seen]
    assert queries == [("#NYC -is:retweet has:images", pages[1]["meta"]["next_token"]),
                       ('"St James" -is:retweet has:images', None)]  # a phrase, quoted
    assert [t["trend"] for t in summary["trends"]] == ["#NYC", "St James"] and summary["finished"]
    assert summary["trends"][0]["tweets"] == 29 and summary["trends"][1]["tweets"] == len(pages[2]["data"])
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".jsonl") == ["00-nyc.jsonl", "01-st-james.jsonl"]

    with pytest.raises(UserError, match="other trends"):  # the folder stays with its own trends
        search_trending(cfg, {"trends": [{"trend_name": "#cats"}]}, client)


def test_cli_trend_flags_without_trends_and_trends_without_token(tmp_path):
    result = run_iipa("ingest", "search", "--hashtags", "cats", "--top", "3", "--out", str(tmp_path / "raw"))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "iipa ingest: error: --top and --hashtags-only choose among trends: give --trending FILE or --woeid N"]
    result = run_iipa("ingest", "trends", "--woeid", "1", "--out", str(tmp_path / "t.json"), env={"X_BEARER_TOKEN": ""})
    assert result.returncode == 2 and "X_BEARER_TOKEN is not set" in result.stderr and "Traceback" not in result.stderr


# ---- an existing --out: only a torn last page of our own is ever cut off ----


def test_an_output_that_is_not_ours_survives_byte_for_byte(pages, tmp_path):
    client, _ = client_for(api(pages, rate_limited=False))
    raw = tmp_path / "raw.jsonl"
    csv_file = tmp_path / "tweets.csv"
    csv_file.write_bytes(b"tweet_id,user_id,created_at,url\n1,2,2024-01-01,https://x/a.jpg")
    # someone's own pages (no iipa stamp) followed by a line that is not JSON
    foreign = b"".join(json.dumps(p).encode() + b"\n" for p in pages) + b"not json\n"
    raw.write_bytes(foreign)
    for path, before in ((csv_file, csv_file.read_bytes()), (raw, foreign)):
        with pytest.raises(UserError, match="not a search page saved by iipa"):
            search_tweets(SearchConfig(out=path, hashtags=["NYC", "#photo"], wait_scale=0.001), client)
        assert path.read_bytes() == before
        assert not (tmp_path / (path.name + ".search.json")).exists()


def test_our_pages_then_foreign_content_is_refused_untouched(pages, tmp_path):
    client, _ = client_for(api(pages, rate_limited=False))
    raw = tmp_path / "raw.jsonl"
    search_tweets(config(tmp_path, max_tweets=12), client)  # two pages of ours
    with open(raw, "ab") as f:
        f.write(b"id,text\n1,hello\n")  # then something else appended by mistake
    before = raw.read_bytes()
    with pytest.raises(UserError, match="line 3 is not a search page"):
        search_tweets(config(tmp_path, max_tweets=100), client)
    assert raw.read_bytes() == before


def test_a_torn_last_page_of_ours_is_the_only_thing_dropped(pages, tmp_path):
    client, _ = client_for(api(pages, rate_limited=False))
    raw = tmp_path / "raw.jsonl"
    search_tweets(config(tmp_path, max_tweets=12), client)
    whole = raw.read_bytes()
    raw.write_bytes(whole + json.dumps(pages[2]).encode()[:200])  # died while writing page 3
    client, replay = client_for(api(pages, rate_limited=False))
    summary = search_tweets(config(tmp_path, max_tweets=100), client)
    assert summary["finished"] and summary["tweets"] == 29 and len(replay.seen) == 1
    assert raw.read_bytes().startswith(whole) and len(raw.read_bytes().splitlines()) == 3
