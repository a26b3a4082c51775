"""`iipa bench ingest-parse`: archive parsing, file to Parquet, in tweets per second per core.

One generated archive of realistic tweets (entities with indices, public metrics, media and
user expansions, some retweets and videos, a fifth of the captions non-ASCII) is written in every
archive format; each format then goes the whole way through `ingest_archive` (file → images
table) in a fresh process, timed by its CPU seconds, so "per core" holds whatever threads Arrow
uses. The baseline, measured in the same run and the same way, is `json.loads` of every line of
the twarc2 file into a list of dicts: parsing alone, nothing kept or written. Peak memory is
reported per format, and for twarc2 at several sizes (the first pages of the same archive), with
`memory_growth`, the peak at the largest size over the peak at the smallest: near 1 when memory
is flat in the archive's size.
"""
from __future__ import annotations

import csv
import json
import random
import resource
import time
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

from cluster.bench import BenchConfig, peak_rss_mb, run_isolated
from shards.atomic import atomic_path

FORMATS = ("twarc2", "v2", "v1", "account", "table")
PAGE = 100
GENERATOR_VERSION = 1
WORDS = ["what", "a", "view", "today", "love", "this", "one", "more", "time", "finally", "here", "look", "at", "that", "light", "so", "much", "color", "never", "gets", "old", "morning", "walk", "best", "day", "ever", "new", "favourite", "spot", "just", "another", "lovely", "evening", "with", "my", "little", "friend"]
NON_ASCII = ["café", "naïve", "Straße", "😀", "🌅", "日本", "ΣΟΦΙΑ", "¡olé!", "İstanbul", "mañana"]
TAGS = ["photography", "sunset", "travel", "nature", "art", "food", "cats", "dogs", "city", "beach", "mountains", "flowers", "streetart"]
START = datetime(2026, 1, 1, tzinfo=UTC)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_tweet(rng: random.Random, n: int, users: int) -> tuple[dict, list[dict]]:
    """One v2 tweet (the n-th) and its media objects."""
    tweet_id = str(1_800_000_000_000_000_000 + n * 7919)
    author = rng.randrange(users)
    tags = rng.sample(TAGS, rng.randrange(4))
    words = rng.choices(WORDS, k=rng.randrange(3, 16))
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), rng.choice(NON_ASCII))
    mention = f"user{rng.randrange(users):06d}" if rng.random() < 0.3 else None
    kind = rng.random()
    n_media = 0 if kind < 0.05 else rng.choice([1, 1, 1, 1, 2, 3])
    text = (f"@{mention} " if mention else "") + " ".join(words) + "".join(f" #{t}" for t in tags)
    entities = {"hashtags": [], "mentions": [], "urls": []}
    for t in tags:
        start = text.index(f"#{t}")
        entities["hashtags"].append({"start": start, "end": start + len(t) + 1, "tag": t})
    if mention:
        entities["mentions"].append({"start": 0, "end": len(mention) + 1, "username": mention, "id": str(10_000 + author)})
    media = []
    for i in range(n_media):
        key = f"{'7' if kind > 0.95 else '3'}_{tweet_id[:-1]}{i}"
        media.append({"media_key": key, "type": "video" if kind > 0.95 else "photo", "width": 1200, "height": 900,
                      **({"preview_image_url": f"https://pbs.twimg.com/ext_tw_video_thumb/{key}.jpg"} if kind > 0.95
                         else {"url": f"https://pbs.twimg.com/media/F{key}Xq.jpg"})})
        url = f"https://t.co/{key[-10:]}"
        entities["urls"].append({"start": len(text) + 1, "end": len(text) + 24, "url": url, "media_key": key,
                                 "expanded_url": f"https://x.com/user{author:06d}/status/{tweet_id}/photo/{i + 1}",
                                 "display_url": "pic.x.com/" + key[-10:]})
        text += " " + url
    likes = int(rng.lognormvariate(3, 1.5))
    tweet = {
        "id": tweet_id, "text": text, "author_id": str(10_000 + author), "conversation_id": tweet_id,
        "created_at": (START + timedelta(seconds=n * 13)).strftime("%Y-%m-%dT%H:%M:%S.000Z"), "lang": "en",
        "possibly_sensitive": False, "edit_history_tweet_ids": [tweet_id],
        "entities": {k: v for k, v in entities.items() if v},
        "public_metrics": {"retweet_count": likes // 7, "reply_count": likes // 30, "like_count": likes,
                           "quote_count": likes // 90, "bookmark_count": likes // 50, "impression_count": likes * 40},
    }
    if media:
        tweet["attachments"] = {"media_keys": [m["media_key"] for m in media]}
    if kind < 0.05:  # a retweet: its own row is dropped
        tweet["referenced_tweets"] = [{"type": "retweeted", "id": str(int(tweet_id) - 1)}]
        tweet["text"] = "RT @someone: " + tweet["text"]
    return tweet, media


def user(uid: str) -> dict:
    return {"id": uid, "username": f"user{int(uid) - 10_000:06d}", "name": "A User", "verified": False,
            "created_at": "2015-03-01T10:00:00.000Z",
            "public_metrics": {"followers_count": 120, "following_count": 80, "tweet_count": 900, "listed_count": 2}}


def as_v1(tweet: dict, media: list[dict]) -> dict:
    """The same tweet as API v1.1 sends it."""
    when = datetime.strptime(tweet["created_at"], "%Y-%m-%dT%H:%M:%S.000Z").strftime("%a %b %d %H:%M:%S +0000 %Y")
    ents = tweet.get("entities", {})
    out = {"created_at": when, "id": int(tweet["id"]), "id_str": tweet["id"], "full_text": tweet["text"],
           "truncated": False, "display_text_range": [0, len(tweet["text"])],
           "entities": {"hashtags": [{"text": h["tag"], "indices": [h["start"], h["end"]]} for h in ents.get("hashtags", [])],
                        "user_mentions": [{"screen_name": m["username"], "id_str": m["id"], "indices": [m["start"], m["end"]]}
                                          for m in ents.get("mentions", [])], "urls": [], "symbols": []},
           "user": {"id": int(tweet["author_id"]), "id_str": tweet["author_id"], "screen_name": "u" + tweet["author_id"]},
           "retweet_count": tweet["public_metrics"]["retweet_count"],
           "favorite_count": tweet["public_metrics"]["like_count"], "lang": "en"}
    if media:
        out["extended_entities"] = {"media": [
            {"id_str": m["media_key"].split("_")[1], "type": m["type"],
             "media_url_https": m.get("url") or m.get("preview_image_url")} for m in media]}
    if "referenced_tweets" in tweet:
        out["retweeted_status"] = {"id_str": tweet["referenced_tweets"][0]["id"], "full_text": "x",
                                   "created_at": when, "user": out["user"], "retweet_count": 1, "favorite_count": 1}
    return out


def generate(folder: Path, tweets: int, seed: int = 0) -> dict[str, Path]:
    """Write the archive in every format (once: kept for later runs); return format → path."""
    paths = {"twarc2": folder / "twarc2.jsonl", "v2": folder / "flat.jsonl", "v1": folder / "v1.jsonl",
             "account": folder / "account" / "data" / "tweets.js", "table": folder / "table.csv"}
    done = folder / f"done-{tweets}-v{GENERATOR_VERSION}"
    if done.exists():
        return paths
    paths["account"].parent.mkdir(parents=True, exist_ok=True)
    (paths["account"].parent / "account.js").write_text(
        'window.YTD.account.part0 = [{"account": {"accountId": "10001", "username": "user000001"}}]')
    rng = random.Random(seed)
    users = max(10, tweets // 50)
    retrieved = "2026-03-01T00:00:00+00:00"
    with open(paths["twarc2"], "w") as t2, open(paths["v2"], "w") as flat, open(paths["v1"], "w") as v1, \
            open(paths["account"], "w") as acct, open(paths["table"], "w", newline="") as table:
        rows = csv.writer(table)
        rows.writerow(["tweet_id", "user_id", "created_at", "text", "retweets", "likes", "url"])
        acct.write("window.YTD.tweets.part0 = [")
        for start in range(0, tweets, PAGE):
            made = [make_tweet(rng, n, users) for n in range(start, min(start + PAGE, tweets))]
            data = [t for t, _ in made]
            media = [m for _, ms in made for m in ms]
            stamp = {"url": "https://api.x.com/2/tweets/search/all", "version": "2.14", "retrieved_at": retrieved}
            t2.write(json.dumps({"data": data, "includes": {"media": media, "users": [user(u) for u in
                                                                                    sorted({t["author_id"] for t in data})]},
                                 "meta": {"result_count": len(data), "next_token": f"tok{start}"}, "__twarc": stamp}) + "\n")
            for tweet, ms in made:
                flat.write(json.dumps({**tweet, "attachments": {**tweet.get("attachments", {}), "media": ms},
                                       "author": user(tweet["author_id"]), "__twarc": stamp}) + "\n")
                old = as_v1(tweet, ms)
                v1.write(json.dumps(old) + "\n")
                acct.write(("," if start or tweet is not data[0] else "") + json.dumps({"tweet": {
                    **old, "id": old["id_str"], "retweet_count": str(old["retweet_count"]),
                    "favorite_count": str(old["favorite_count"])}}))
                photos = [m["url"] for m in ms if m["type"] == "photo"]
                if photos and "referenced_tweets" not in tweet:
                    rows.writerow([tweet["id"], tweet["author_id"], tweet["created_at"], tweet["text"],
                                   tweet["public_metrics"]["retweet_count"], tweet["public_metrics"]["like_count"],
                                   " ".join(photos)])
        acct.write("]\n")
    done.write_text(json.dumps({"tweets": tweets}))
    return paths


def first_pages(archive: Path, out: Path, tweets: int) -> Path:
    """A smaller twarc2 archive: the first pages of `archive`, holding `tweets` tweets."""
    if not out.exists():
        with atomic_path(out) as tmp, open(archive, "rb") as src, open(tmp, "wb") as dst:
            dst.writelines(islice(src, tweets // PAGE))
    return out


def baseline_parse(path: str) -> dict:
    """The baseline: `json.loads` of every line into a list of dicts (run in its own process)."""
    cpu = cpu_seconds()
    with open(path, "rb") as f:
        pages = [json.loads(line) for line in f]
    tweets = sum(len(p["data"]) for p in pages)
    return {"cpu_seconds": max(cpu_seconds() - cpu, 1e-6), "tweets": tweets}


def ingest_one(path: str, fmt: str, out: str) -> dict:
    """The whole way from an archive to the images table (run in its own process)."""
    from ingest.archive import (  # imported before the clock starts
        ArchiveConfig,
        ingest_archive,
    )

    cpu = cpu_seconds()
    summary = ingest_archive(ArchiveConfig([Path(path)], Path(out), format=fmt, collected_at="2026-03-01T00:00:00Z"))
    return {"cpu_seconds": max(cpu_seconds() - cpu, 1e-6), "images": summary["images"], "malformed": summary["malformed"]}


def call(target: str, isolated: bool, **kwargs) -> dict:
    """Run a measured function in a fresh process (a measurement), or here (a quick smoke run)."""
    if isolated:
        return run_isolated(f"cluster.benches.parse:{target}", **kwargs)
    start = time.perf_counter()
    result = globals()[target](**kwargs)
    return {**result, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def measure(fmt: str, path: Path, out: Path, tweets: int, isolated: bool) -> dict:
    result = call("ingest_one", isolated, path=str(path), fmt=fmt, out=str(out))
    return {"tweets_per_s_per_core": round(tweets / result["cpu_seconds"]), "tweets_per_s": round(tweets / result["seconds"]),
            "cores_used": round(result["cpu_seconds"] / result["seconds"], 2), "seconds": round(result["seconds"], 2),
            "peak_rss_mb": round(result["peak_rss_mb"]), "images": result["images"]}


def memory_by_size(work: Path, archive: Path, smaller: tuple[int, ...], peaks: dict[int, float],
                   isolated: bool) -> dict:
    """Peak memory of the twarc2 ingest at smaller sizes, beside `peaks` (the main run's, measured already)."""
    peaks = dict(peaks)
    for n in smaller:
        part = first_pages(archive, archive.parent / f"twarc2-first-{n}-v{GENERATOR_VERSION}.jsonl", n)
        peaks[n] = measure("twarc2", part, work / "out" / f"twarc2-{n}.parquet", n, isolated)["peak_rss_mb"]
    return {"twarc2_peak_rss_mb": {str(n): peaks[n] for n in sorted(peaks)},
            "memory_growth": round(peaks[max(peaks)] / peaks[min(peaks)], 3)}


def run(config: BenchConfig) -> dict:
    tweets = config.pick(2_000, 100_000, 1_000_000)
    # Smaller archives whose peak memory is compared with the main run's; the smallest is large
    # enough to fill every buffer of the ingest (blocks of lines, spill batches, row groups).
    smaller = config.pick((500,), (50_000,), (100_000, 300_000))
    work = Path(config.workdir)
    start = time.perf_counter()
    paths = generate(work / f"archive-{tweets}", tweets)
    generated_s = time.perf_counter() - start
    isolated = not config.quick
    base = call("baseline_parse", isolated, path=str(paths["twarc2"]))
    baseline = tweets / base["cpu_seconds"]
    formats = {fmt: measure(fmt, paths[fmt].parent.parent if fmt == "account" else paths[fmt],
                            work / "out" / f"{fmt}.parquet", tweets, isolated) for fmt in FORMATS}
    memory = memory_by_size(work, paths["twarc2"], smaller, {tweets: formats["twarc2"]["peak_rss_mb"]}, isolated)
    value = formats["twarc2"]["tweets_per_s_per_core"]
    return {
        "stage": "ingest-parse", "unit": "tweets/s/core (twarc2 JSONL → Parquet)", "value": value,
        "baseline": "json.loads per line into a list of dicts (parsing only)", "baseline_value": round(baseline),
        "ratio": round(value / baseline, 3), "tweets": tweets,
        "baseline_peak_rss_mb": round(base["peak_rss_mb"]),
        "formats": {fmt: {**r, "ratio": round(r["tweets_per_s_per_core"] / baseline, 3)} for fmt, r in formats.items()},
        "memory_growth": memory["memory_growth"],
        "memory_flat": {"twarc2_peak_rss_mb": memory["twarc2_peak_rss_mb"]},
        "generate_seconds": round(generated_s, 1),
    }
