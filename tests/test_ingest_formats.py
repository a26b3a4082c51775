"""Every archive format on real recorded API data: v1.1 (tweepy's cassettes), v2 pages and
flattened tweets, the account archive, CSV/Parquet tables; and the two twarc2 paths agree."""
from __future__ import annotations

import base64
import csv
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import archive
from ingest.archive import ArchiveConfig, ingest_archive
from ingest.formats import detect_format
from ingest.formats.rows import FormatError, Malformed, Skipped, caption_words
from ingest.formats.table import parse_columns
from ingest.formats.twarc2 import read_twarc2
from ingest.formats.twarc2_fast import caption_words_arrow, read_twarc2_fast
from ingest.synthetic import SyntheticConfig, generate
from shards.schema import read_table
from tests.conftest import run_iipa

V1 = "tweepy-v1.1"
V2 = "python-twitter-v2"


def cassette_bodies(path) -> list:
    """The JSON bodies of a vcrpy cassette (JSON or YAML; plain or gzip+base64 `!!binary`)."""
    text = path.read_text()
    cassette = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    bodies = []
    for interaction in cassette["interactions"]:
        body = interaction["response"]["body"]["string"]
        if isinstance(body, str) and path.suffix == ".json" and interaction["response"].get("headers", {}).get(
                "content-encoding") == ["gzip"]:
            body = base64.b64decode(body)
        if isinstance(body, bytes):
            body = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
            body = body.decode()
        bodies.append(json.loads(body))
    return bodies


def skips_of(items) -> dict:
    """A reader's `Skipped` totals as {reason: count}."""
    return {i.reason: i.count for i in items if isinstance(i, Skipped)}


def rows_of(tmp_path, name, *paths, **kw):
    out = tmp_path / f"{name}.parquet"
    summary = ingest_archive(ArchiveConfig(list(paths), out, **kw))
    return summary, {r["key"]: r for r in read_table(out, "images").to_pylist()}


@pytest.fixture(scope="module")
def twitter_timeline(realdata):
    """@Twitter's real user timeline of December 2020 (v1.1), as the API sent it."""
    bodies = cassette_bodies(realdata / V1 / "testusertimeline.json")
    return next(b for b in bodies if b and b[0]["user"]["screen_name"] == "Twitter")


def photo_originals(tweets):
    return [t for t in tweets if "retweeted_status" not in t
            and any(m["type"] == "photo" for m in t.get("extended_entities", {}).get("media", []))]


def test_v1_json_array_real_timeline(twitter_timeline, tmp_path):
    path = tmp_path / "timeline.json"
    path.write_text(json.dumps(twitter_timeline, indent=1))
    assert detect_format(path) == "v1"
    summary, rows = rows_of(tmp_path, "v1", path, format="v1", collected_at="2020-12-29T08:33:16Z")
    expected = photo_originals(twitter_timeline)
    assert summary["images"] == len(rows) == sum(len(t["extended_entities"]["media"]) for t in expected) == 14
    assert summary["users"] == 1 and {r["user_id"] for r in rows.values()} == {"783214"}
    row = rows["1341161863103488003_0"]
    assert (row["retweets"], row["likes"], row["replies"]) == (3435, 19855, None)
    tweet = next(t for t in twitter_timeline if t["id_str"] == "1341161863103488003")
    assert row["created_at"] == datetime.strptime(tweet["created_at"], "%a %b %d %H:%M:%S %z %Y")
    assert row["url"] == tweet["extended_entities"]["media"][0]["media_url_https"]
    assert row["media_key"] == "3_" + tweet["extended_entities"]["media"][0]["id_str"]
    assert row["collected_at"] == datetime(2020, 12, 29, 8, 33, 16, tzinfo=UTC)
    assert min(r["retweets"] for r in rows.values()) == 3 and max(r["likes"] for r in rows.values()) == 19855
    assert all(r["media_count"] == 1 and r["status"] == "pending" for r in rows.values())


def test_v1_jsonl_drops_retweets_keeps_photo_originals_and_skips_video(realdata, tmp_path):
    timeline = cassette_bodies(realdata / V1 / "testhometimeline.json")[0]
    path = tmp_path / "home.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in timeline))
    assert detect_format(path) == "v1"
    _, photos = rows_of(tmp_path, "photos", path)
    retweet_ids = {t["id_str"] for t in timeline if "retweeted_status" in t}
    assert not {r["tweet_id"] for r in photos.values()} & retweet_ids
    assert {r["tweet_id"] for r in photos.values()} == {t["id_str"] for t in photo_originals(timeline)}
    _, media = rows_of(tmp_path, "media", path, media=["photo", "video"])
    video = media["1144340785246146561_0"]  # the original of a retweet, as that retweet embeds it
    assert video["media_key"].startswith("7_") and (video["retweets"], video["likes"]) == (101312, 324576)
    assert len(media) == len(photos) + 1


def test_v1_gzipped_yaml_cassette_and_search_pages(realdata, tmp_path):
    home = cassette_bodies(realdata / V1 / "testcachedresult.yaml")[2]
    search = cassette_bodies(realdata / V1 / "testsearchtweets.json")[0]
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(search) + "\n" + "".join(json.dumps(t) + "\n" for t in home))
    _, rows = rows_of(tmp_path, "all", path)
    assert {r["tweet_id"] for r in rows.values()} == {"1359176378466381826", "1358469332972494848",
                                                      "1149788838430224391"}
    assert rows["1358469332972494848_0"]["retweets"] == 1955
    _, none = rows_of(tmp_path, "none", path, originals=False)
    assert {r["tweet_id"] for r in none.values()} == {"1149788838430224391"}  # ErikDePay's own photo
    assert none["1149788838430224391_0"]["likes"] == 6


def flatten(page: dict) -> list[dict]:
    """A v2 page as `twarc2 flatten` writes it: one tweet per line, expansions inlined."""
    media = {m["media_key"]: m for m in page["includes"].get("media", [])}
    users = {u["id"]: u for u in page["includes"].get("users", [])}
    tweets = []
    for tweet in page["data"]:
        tweet = json.loads(json.dumps(tweet))
        if "attachments" in tweet:
            tweet["attachments"]["media"] = [media[k] for k in tweet["attachments"]["media_keys"] if k in media]
        tweet["author"] = users.get(tweet["author_id"], {"id": tweet["author_id"]})
        del tweet["author_id"]
        tweet["__twarc"] = page["__twarc"]
        tweets.append(tweet)
    return tweets


@pytest.fixture(scope="module")
def v2_page(realdata):
    page = json.loads((realdata / V2 / "apis__searches__search_tweets_query.json").read_text())
    page["includes"]["media"] = [{"media_key": k, "type": "photo", "url": f"https://pbs.twimg.com/media/{k}.jpg"}
                                 for t in page["data"] for k in (t.get("attachments") or {}).get("media_keys", [])]
    page["__twarc"] = {"url": "https://api.twitter.com/2/tweets/search/recent", "version": "2.14",
                       "retrieved_at": "2020-06-26T10:00:00+00:00"}
    return page


def test_v2_flattened_gives_the_same_rows_as_pages(v2_page, tmp_path):
    pages, flat = tmp_path / "pages.jsonl", tmp_path / "flat.jsonl"
    pages.write_text(json.dumps(v2_page) + "\n")
    flat.write_text("".join(json.dumps(t) + "\n" for t in flatten(v2_page)))
    assert detect_format(pages) == "twarc2" and detect_format(flat) == "v2"
    _, a = rows_of(tmp_path, "a", pages)
    _, b = rows_of(tmp_path, "b", flat)
    assert a == b and sorted(a) == ["1275763727908798470_0", "1276035977375477760_0"]
    assert a["1275763727908798470_0"]["collected_at"] == datetime(2020, 6, 26, 10, tzinfo=UTC)


def account_archive(root, tweets, owner="783214", media_for=None, photo=None):
    """An X account archive holding these (real) tweets as X writes them: counts as strings."""
    data = root / "data"
    (data / "tweets_media").mkdir(parents=True)
    items = []
    for tweet in tweets:
        t = {k: v for k, v in tweet.items() if k not in ("user", "retweeted_status")}
        for k in ("retweet_count", "favorite_count", "id"):
            t[k] = str(t[k])
        if "retweeted_status" in tweet:
            t["full_text"] = "RT @" + tweet["retweeted_status"]["user"]["screen_name"] + ": " + tweet["text"]
        items.append({"tweet": t})
    (data / "tweets.js").write_text("window.YTD.tweets.part0 = " + json.dumps(items, indent=2))
    (data / "account.js").write_text("window.YTD.account.part0 = " + json.dumps(
        [{"account": {"accountId": owner, "username": "Twitter", "createdAt": "2007-02-20T14:35:54.000Z"}}]))
    (data / "manifest.js").write_text("window.__THAR_CONFIG = " + json.dumps(
        {"userInfo": {"accountId": owner}, "archiveInfo": {"generationDate": "2021-01-05T12:00:00.000Z"}}))
    if media_for:
        name = media_for["extended_entities"]["media"][0]["media_url_https"].rsplit("/", 1)[-1]
        (data / "tweets_media" / f"{media_for['id_str']}-{name}").write_bytes(photo)
    return root


def test_account_archive_with_local_photos(twitter_timeline, photos, tmp_path):
    with_photo = photo_originals(twitter_timeline)[3]
    root = account_archive(tmp_path / "archive", twitter_timeline, media_for=with_photo, photo=photos["coffee"])
    assert detect_format(root) == "account" and detect_format(root / "data" / "tweets.js") == "account"
    summary, rows = rows_of(tmp_path, "account", root)
    assert summary["images"] == 14 and {r["user_id"] for r in rows.values()} == {"783214"}
    row = rows[f"{with_photo['id_str']}_0"]
    assert row["url"].startswith("file://") and row["url"].endswith(".jpg")
    assert Path(row["url"][len("file://"):]).read_bytes() == photos["coffee"]
    assert (row["retweets"], row["likes"]) == (with_photo["retweet_count"], with_photo["favorite_count"])
    assert row["collected_at"] == datetime(2021, 1, 5, 12, tzinfo=UTC)
    others = [r for k, r in rows.items() if k != f"{with_photo['id_str']}_0"]
    assert all(r["url"].startswith("https://pbs.twimg.com/") for r in others)


def test_account_archive_without_owner_is_a_clear_error(twitter_timeline, tmp_path):
    root = account_archive(tmp_path / "archive", twitter_timeline[:2])
    (root / "data" / "account.js").unlink()
    (root / "data" / "manifest.js").unlink()
    result = run_iipa("ingest", "archive", str(root), "--out", str(tmp_path / "o.parquet"))
    assert result.returncode == 2 and "no account.js" in result.stderr and "Traceback" not in result.stderr


def table_records(timeline):
    for t in photo_originals(timeline):
        yield {"id": t["id_str"], "author": t["user"]["id_str"], "posted": t["created_at"], "body": t["text"],
               "rts": t["retweet_count"], "favs": t["favorite_count"],
               "photos": " ".join(m["media_url_https"] for m in t["extended_entities"]["media"])}


COLUMNS = "tweet_id=id,user_id=author,created_at=posted,text=body,retweets=rts,likes=favs,url=photos"


def test_csv_and_parquet_tables_with_column_mapping(twitter_timeline, tmp_path):
    records = list(table_records(twitter_timeline))
    path = tmp_path / "export.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records[:5] + [{**records[5], "posted": "yesterday"}] + records[6:])
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "export.parquet")
    result = run_iipa("ingest", "archive", str(path), "--out", str(tmp_path / "csv.parquet"), "--columns", COLUMNS)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["malformed"] == 1 and summary["malformed_lines"] == [f"{path}:7"]  # header is line 1
    assert summary["images"] == 13
    _, rows = rows_of(tmp_path, "pq", tmp_path / "export.parquet", columns=parse_columns(COLUMNS))
    row = rows["1341161863103488003_0"]
    assert (row["retweets"], row["likes"], row["user_id"]) == (3435, 19855, "783214")
    assert row["mentions"] == [m[1:].lower() for m in row["text"].split() if m.startswith("@")]
    missing = run_iipa("ingest", "archive", str(path), "--out", str(tmp_path / "x.parquet"))
    assert missing.returncode == 2 and "no column for tweet_id" in missing.stderr


def test_twarc2_fast_path_equals_reference(tmp_path, v2_page):
    out = tmp_path / "syn"
    generate(SyntheticConfig(out, users=10, tweets_per_user=30, image_size=16, seed=5))
    lines = (out / "archive.jsonl").read_text().splitlines()
    mixed = tmp_path / "mixed.jsonl"
    # clean blocks, a malformed line, a real page with replies, a page without photos, blank lines
    mixed.write_text("\n".join(lines[:1] + ["{oops", json.dumps(v2_page), ""] + lines[1:] + [json.dumps(
        {"meta": {"result_count": 0}})]) + "\n")
    reference = [r for r in read_twarc2(mixed) if isinstance(r, dict)]
    bad_ref = [(m.line, m.reason) for m in read_twarc2(mixed) if isinstance(m, Malformed)]
    skipped_ref = skips_of(read_twarc2(mixed))
    assert skipped_ref == {"no_photo": 2}  # the real page's two replies without attachments
    for block in (300, 40_000, 1 << 20):
        items = list(read_twarc2_fast(mixed, block_bytes=block))
        tables = [i for i in items if isinstance(i, pa.Table)]
        assert bool(tables) == (block < 1 << 20)  # one block holding the bad line goes line by line
        fast = [r for t in tables for r in t.to_pylist()] + [i for i in items if isinstance(i, dict)]
        assert sorted(fast, key=lambda r: r["key"]) == sorted(reference, key=lambda r: r["key"])
        assert [(m.line, m.reason) for m in items if isinstance(m, Malformed)] == bad_ref == [
            (2, "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")]
        assert skips_of(items) == skipped_ref


def test_fast_path_finds_media_in_the_tweets_own_page_only(tmp_path):
    """Media keys are looked up per page: a key offered only by another page gives no row, a key
    offered twice sends the page to the reference reader, and both paths still agree."""
    def tweet(n, keys):
        return {"id": str(n), "author_id": "9", "created_at": "2026-01-01T00:00:00.000Z", "text": f"t{n}",
                "attachments": {"media_keys": keys}}

    def medium(key, kind="photo"):
        return {"media_key": key, "type": kind, "url": f"https://pbs.twimg.com/media/{key}.jpg"}

    when = {"retrieved_at": "2026-02-01T00:00:00+00:00"}
    pages = [{"data": [tweet(1, ["3_1", "3_2"]), tweet(2, ["3_9"])], "includes": {"media": [medium("3_1"), medium("3_2")]},
              "__twarc": when},
             {"data": [tweet(3, ["3_3", "7_3"])], "includes": {"media": [medium("3_9"), medium("3_3"), medium("7_3", "video")]},
              "__twarc": when},
             {"data": [tweet(4, ["3_4"])], "includes": {"media": [medium("3_4"), medium("3_4")]}, "__twarc": when}]
    path = tmp_path / "pages.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pages))
    reference = sorted((r["key"], r["media_key"]) for r in read_twarc2(path) if isinstance(r, dict))
    assert skips_of(read_twarc2(path)) == {"media_not_included": 1}  # tweet 2: its 3_9 is on page 2
    for block in (10, 1 << 20):  # a page a block, then all pages in one (sent line by line for the repeated key)
        items = list(read_twarc2_fast(path, block_bytes=block))
        tables = [t for t in items if isinstance(t, pa.Table)]
        assert bool(tables) == (block == 10)
        fast = [r for t in tables for r in t.to_pylist()] + [i for i in items if isinstance(i, dict)]
        assert sorted((r["key"], r["media_key"]) for r in fast) == reference
        assert skips_of(items) == {"media_not_included": 1}
    assert reference == [("1_0", "3_1"), ("1_1", "3_2"), ("3_0", "3_3"), ("4_0", "3_4")]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(list("\x00\x01aZ9_' #@＃＠:/.-\n\u3000\u00a0éΣσİß😀ｈ") + ["http://", "https://x"]),
                         max_size=30).map("".join), min_size=1, max_size=40))
def test_vectorised_caption_words_equal_the_reference(texts):
    assert caption_words_arrow(pa.array(texts)).to_pylist() == [caption_words(t) for t in texts]


def test_partitions_give_the_same_table_and_keep_latest_counts(tmp_path, monkeypatch):
    out = tmp_path / "syn"
    generate(SyntheticConfig(out, users=4, tweets_per_user=30, image_size=16, seed=9))
    lines = (out / "archive.jsonl").read_text().splitlines()
    later = [json.loads(line) for line in lines]
    for page in later:
        page["__twarc"]["retrieved_at"] = "2027-03-01T00:00:00+00:00"
        for tweet in page["data"]:
            tweet["public_metrics"]["like_count"] += 1000
    (tmp_path / "later.jsonl").write_text("".join(json.dumps(p) + "\n" for p in later))
    paths = [tmp_path / "later.jsonl", out / "archive.jsonl"]
    one = ingest_archive(ArchiveConfig(paths, tmp_path / "one.parquet"))
    monkeypatch.setattr(archive, "PARTITION_BYTES", 5000)
    monkeypatch.setattr(archive, "ROW_GROUP_ROWS", 50)
    many = ingest_archive(ArchiveConfig(paths, tmp_path / "many.parquet"))
    a, b = read_table(tmp_path / "one.parquet", "images"), read_table(tmp_path / "many.parquet", "images")
    assert one["images"] == many["images"] == a.num_rows == b.num_rows and one["duplicates"] == a.num_rows
    assert sorted(a.to_pylist(), key=lambda r: r["key"]) == sorted(b.to_pylist(), key=lambda r: r["key"])
    assert pc.min(b.column("likes")).as_py() >= 1000
    assert pq.ParquetFile(tmp_path / "many.parquet").metadata.num_row_groups > 1


def test_unreadable_and_unknown_inputs_are_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    for args, message in [((str(tmp_path / "missing.jsonl"),), "no such file"),
                          ((str(tmp_path / "notes.txt"),), "unrecognised archive format")]:
        result = run_iipa("ingest", "archive", *args, "--out", str(tmp_path / "o.parquet"))
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(FormatError, match="unrecognised"):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(FormatError, match="unknown field 'bogus'"):
        parse_columns("bogus=x")
    with pytest.raises(FormatError, match="not an ISO time"):
        ingest_archive(ArchiveConfig([tmp_path / "notes.txt"], tmp_path / "o.parquet", collected_at="soon"))
    assert not (tmp_path / "o.parquet").exists()


def test_table_constants_missing_counts_and_file_time_are_said(tmp_path):
    from ingest.archive import ArchiveConfig, ingest_archive
    from ingest.formats import FormatError

    csv_file = tmp_path / "dog_rates.csv"
    csv_file.write_text("tweet_id,created_at,url,likes\n1,2020-01-01 10:00:00,https://x/a.jpg,5\n")
    summary = ingest_archive(ArchiveConfig([csv_file], tmp_path / "i.parquet", constants={"user_id": "dog_rates"}))
    assert summary["images"] == 1 and summary["counted"] == {
        "created_at_without_zone_read_as_utc": 1, "collected_at_from_file_time": 1}
    csv_file.write_text("tweet_id,created_at,url\n1,2020-01-01,https://x/a.jpg\n")
    with pytest.raises(FormatError, match="no count column"):
        ingest_archive(ArchiveConfig([csv_file], tmp_path / "j.parquet", constants={"user_id": "dog_rates"}))


def test_cli_table_without_counts_is_one_line_and_naive_collected_at_counted(tmp_path):
    csv_file = tmp_path / "dog_rates.csv"
    csv_file.write_text("tweet_id,created_at,url,text\n1,2020-01-01,https://x/a.jpg,good dog\n")
    result = run_iipa("ingest", "archive", str(csv_file), "--set", "user_id=dog_rates", "--out",
                      str(tmp_path / "i.parquet"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no count column" in lines[0] and "'retweets'" in lines[0] and "'likes'" in lines[0]
    assert not (tmp_path / "i.parquet").exists()
    csv_file.write_text("tweet_id,created_at,url,favs,seen\n1,2020-01-01T10:00:00Z,https://x/a.jpg,5,2020-02-01 08:00\n")
    result = run_iipa("ingest", "archive", str(csv_file), "--set", "user_id=dog_rates", "--columns",
                      "likes=favs,collected_at=seen", "--out", str(tmp_path / "i.parquet"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counted"] == {"collected_at_without_zone_read_as_utc": 1}
    row = read_table(tmp_path / "i.parquet", "images").to_pylist()[0]
    assert (row["user_id"], row["likes"], row["collected_at"]) == ("dog_rates", 5, datetime(2020, 2, 1, 8, tzinfo=UTC))


def test_nothing_dropped_uncounted_v1(twitter_timeline, tmp_path):
    """A retweet whose original lacks a user, a user object in a v1.1 file, one photo URL twice in
    a tweet: each counted by reason in the summary and on the terminal; a file of no tweet says so."""
    import copy

    photo_tweets = photo_originals(twitter_timeline)
    plain = [t for t in twitter_timeline if "retweeted_status" not in t and "extended_entities" not in t]
    kept, twice = copy.deepcopy(photo_tweets[0]), copy.deepcopy(photo_tweets[1])
    assert len(twice["extended_entities"]["media"]) == 1
    medium = twice["extended_entities"]["media"][0]
    twice["extended_entities"]["media"].append({**medium, "id_str": medium["id_str"] + "9"})  # same URL again
    orphan = copy.deepcopy(photo_tweets[2])
    del orphan["user"]
    retweet = {**copy.deepcopy(plain[0]), "id_str": "1", "retweeted_status": orphan}
    records = [kept, twice, retweet, twitter_timeline[0]["user"], plain[1]]
    tweets, users = tmp_path / "timeline.jsonl", tmp_path / "users.jsonl"
    tweets.write_text("".join(json.dumps(r) + "\n" for r in records))
    users.write_text(json.dumps(twitter_timeline[0]["user"]) + "\n")
    out = tmp_path / "images.parquet"
    result = run_iipa("ingest", "archive", str(tweets), str(users), "--format", "v1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    expected = {"retweet": 1, "original_incomplete": 1, "not_a_tweet": 2, "duplicate_url": 1, "no_photo": 1}
    summary = json.loads((tmp_path / "images.summary.json").read_text())
    assert summary["skipped"] == expected and summary["malformed"] == 0
    assert [f["skipped"] for f in summary["files"]] == [{**expected, "not_a_tweet": 1}, {"not_a_tweet": 1}]
    rows = read_table(out, "images").to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(
        [f"{kept['id_str']}_{i}" for i in range(len(kept["extended_entities"]["media"]))] + [f"{twice['id_str']}_0"])
    assert next(r for r in rows if r["tweet_id"] == twice["id_str"])["media_count"] == 1
    assert f"{users}: no photo tweet in this file (1 not a tweet)" in result.stderr
    assert ("skipped: 1 duplicate url, 1 no photo, 2 not a tweet, 1 original incomplete, 1 retweet"
            in result.stderr), result.stderr


def test_twarc2_retweet_whose_original_lacks_its_author_is_counted(realdata, tmp_path):
    page = json.loads((realdata / V2 / "apis__searches__search_tweets_for_nyc.json").read_text())
    retweets = [t for t in page["data"] if "retweeted" in {r["type"] for r in t.get("referenced_tweets", [])}]
    template = next(t for t in page["data"] if not t.get("referenced_tweets"))
    original = lambda rt, **kw: {**template, "id": next(r["id"] for r in rt["referenced_tweets"]
                                                        if r["type"] == "retweeted"),
                                 "attachments": {"media_keys": ["3_1"]}, **kw}
    complete, orphan = original(retweets[0]), original(retweets[1])
    del orphan["author_id"]
    page["includes"] = {"tweets": [complete, orphan],
                        "media": [{"media_key": "3_1", "type": "photo", "url": "https://pbs.twimg.com/media/x.jpg"}]}
    path = tmp_path / "nyc.jsonl"
    path.write_text(json.dumps(page) + "\n")
    for read in (read_twarc2, read_twarc2_fast):
        items = list(read(path))
        assert [r["tweet_id"] for r in items if isinstance(r, dict)] == [complete["id"]]
        assert skips_of(items) == {"retweet": len(retweets), "original_incomplete": 1,
                                   "no_photo": len(page["data"]) - len(retweets)}


def test_bad_table_rows_are_malformed_at_their_physical_lines_and_the_rest_is_read(tmp_path):
    """A short row, a byte that is not UTF-8, an empty url and a negative count each lose their
    own row only, counted with the line it starts on (a quoted caption spans three lines)."""
    header = b"tweet_id,user_id,created_at,text,retweets,likes,url\n"
    lines = [b'1,u,2026-01-01T00:00:00Z,"a caption\nover three\nlines #dog",30,100,https://x/1.jpg\n',  # lines 2-4
             b"2,u,2026-01-02T00:00:00Z,short row,5\n",  # line 5
             b"3,u,2026-01-03T00:00:00Z,caf\xe9 #dog,40,10,https://x/3.jpg\n",  # line 6: Latin-1, not UTF-8
             b"4,u,2026-01-04T00:00:00Z,no photo,1,1,\n",  # line 7
             b"5,u,2026-01-05T00:00:00Z,negative #dog,-3,20,https://x/5.jpg\n",  # line 8
             b"6,u,2026-01-06T00:00:00Z,the last #dog,0,2,https://x/6.jpg\n"]  # line 9
    table = tmp_path / "export.csv"
    table.write_bytes(header + b"".join(lines))
    out = tmp_path / "images.parquet"
    result = run_iipa("ingest", "archive", str(table), "--out", str(out), "--collected-at", "2026-02-01T00:00:00Z")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    summary = json.loads(result.stdout)
    assert summary["malformed_lines"] == [f"{table}:5", f"{table}:6"]
    assert summary["skipped"] == {"no_url": 1, "negative_count": 1}
    rows = {r["tweet_id"]: r for r in read_table(out, "images").to_pylist()}
    assert sorted(rows) == ["1", "6"] and rows["1"]["text"] == "a caption\nover three\nlines #dog"
    assert "5 fields where the header has 7" in result.stderr and "not UTF-8" in result.stderr
    pairs = run_iipa("pairs", "build", "--images", str(out), "--out", str(tmp_path / "pairs"))
    assert pairs.returncode == 0, pairs.stderr  # no negative count reached it


def test_auto_format_reads_past_a_bad_first_line(tmp_path):
    out = tmp_path / "syn"
    made = generate(SyntheticConfig(out, users=2, tweets_per_user=3, image_size=16, seed=1))
    archive = tmp_path / "archive.jsonl"
    archive.write_text("{not json\n" + (out / "archive.jsonl").read_text())
    assert detect_format(archive) == "twarc2"
    summary, rows = rows_of(tmp_path, "auto", archive)
    assert summary["malformed_lines"] == [f"{archive}:1"] and len(rows) == made["images"]
    archive.write_text("{not json\n" * 25)
    with pytest.raises(FormatError, match="unrecognised"):
        detect_format(archive)


def test_bytes_and_escapes_no_text_can_hold_are_one_malformed_record(twitter_timeline, v2_page, tmp_path):
    """A byte that is not UTF-8 inside a v1.1 JSON array, and a lone-surrogate escape (valid JSON,
    no character) in JSONL and in twarc2 pages: that record is malformed, the rest are read."""
    tweets = photo_originals(twitter_timeline)[:3]
    lines = [json.dumps(t).encode() for t in tweets]
    bad_byte = lines[1].replace(b'"text": "', b'"text": "caf\xe9 ', 1)
    array = tmp_path / "timeline.json"
    array.write_bytes(b"[\n" + b",\n".join([lines[0], bad_byte, lines[2]]) + b"\n]\n")
    escaped = lines[1].replace(b'"text": "', b'"text": "\\udc80 ', 1)
    jsonl = tmp_path / "timeline.jsonl"
    jsonl.write_bytes(b"\n".join([lines[0], escaped, lines[2]]) + b"\n")
    emoji = lines[2].replace(b'"text": "', b'"text": "\\ud83d\\ude00 ', 1)  # an escaped pair is text
    jsonl2 = tmp_path / "emoji.jsonl"
    jsonl2.write_bytes(emoji + b"\n")
    page = json.dumps(v2_page)
    pages = tmp_path / "pages.jsonl"
    pages.write_text(page.replace('"text": "', '"text": "\\udc80 ', 1) + "\n" + page + "\n")
    for path, bad_line, kept in ((array, 3, 2), (jsonl, 2, 2), (jsonl2, None, 1), (pages, 1, 2)):
        summary, rows = rows_of(tmp_path, path.stem, path, collected_at="2021-01-01T00:00:00Z")
        assert summary["malformed_lines"] == ([f"{path}:{bad_line}"] if bad_line else []), path
        assert len({r["tweet_id"] for r in rows.values()}) == kept, path
    assert next(iter(rows_of(tmp_path, "e", jsonl2)[1].values()))["text"].startswith("😀 ")


def test_photo_dimensions_from_the_api_reach_the_table_by_both_readers(tmp_path, v2_page):
    """v2 media carry the original's width and height (what shards build picks a size variant
    from); a missing or nonsensical value is unknown, never a guess."""
    page = json.loads(json.dumps(v2_page))
    dims = [(4032, 3024), (None, None), ("wide", 10), (-5, 700)]
    for medium, (w, h) in zip(page["includes"]["media"], dims * len(page["includes"]["media"])):
        medium.update({k: v for k, v in (("width", w), ("height", h)) if v is not None})
    path = tmp_path / "page.jsonl"
    path.write_text(json.dumps(page) + "\n")
    expected = {m["media_key"]: (m.get("width") if isinstance(m.get("width"), int) and m.get("width") > 0 else None,
                                 m.get("height") if isinstance(m.get("height"), int) and m.get("height") > 0 else None)
                for m in page["includes"]["media"]}
    reference = [r for r in read_twarc2(path) if isinstance(r, dict)]
    assert reference and {r["media_key"]: (r["orig_width"], r["orig_height"]) for r in reference} == \
        {k: v for k, v in expected.items() if k in {r["media_key"] for r in reference}}
    assert (4032, 3024) in {(r["orig_width"], r["orig_height"]) for r in reference}
    items = list(read_twarc2_fast(path, block_bytes=300))
    fast = [r for t in items if isinstance(t, pa.Table) for r in t.to_pylist()] + [i for i in items if isinstance(i, dict)]
    assert sorted(fast, key=lambda r: r["key"]) == sorted(reference, key=lambda r: r["key"])
