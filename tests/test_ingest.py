import json
from datetime import datetime, timezone

import pyarrow.compute as pc
import pytest

from ingest.archive import ArchiveConfig, ingest_archive
from ingest.reader import FormatError, Skipped, caption_words, read_twarc2
from ingest.synthetic import SyntheticConfig, generate
from shards.schema import read_table


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    summary = generate(SyntheticConfig(out, users=5, tweets_per_user=8, image_size=48, seed=3))
    return out, summary


def test_caption_words_drop_urls_tags_and_mentions():
    text = "@Bob What a VIEW today! #Sunset https://t.co/abc it's #nature"
    assert caption_words(text) == ["what", "a", "view", "today", "it's"]


def test_synthetic_archive_becomes_one_row_per_photo(synthetic, tmp_path):
    out, summary = synthetic
    result = ingest_archive(ArchiveConfig([out / "archive.jsonl"], tmp_path / "images.parquet"))
    table = read_table(tmp_path / "images.parquet", "images")
    assert result["images"] == table.num_rows == summary["images"]
    assert result["tweets"] == summary["tweets"] and result["users"] == 5
    assert set(table.column("status").to_pylist()) == {"pending"}
    assert all(k.count(".") == 0 for k in table.column("key").to_pylist())
    first = json.loads((out / "archive.jsonl").read_text().splitlines()[0])["data"][0]
    row = table.filter(pc.equal(table.column("tweet_id"), first["id"])).to_pylist()[0]
    assert row["likes"] == first["public_metrics"]["like_count"]
    assert row["retweets"] == first["public_metrics"]["retweet_count"]
    assert row["hashtags"] == [h["tag"].lower() for h in first["entities"]["hashtags"]]
    assert row["media_count"] == len(first["attachments"]["media_keys"])
    assert row["url"].startswith("file://") and row["collected_at"].year == 2026


def test_same_tweet_twice_keeps_latest_counts(synthetic, tmp_path):
    out, _ = synthetic
    page = json.loads((out / "archive.jsonl").read_text().splitlines()[0])
    later = json.loads(json.dumps(page))
    later["__twarc"]["retrieved_at"] = "2027-01-01T00:00:00+00:00"
    later["data"][0]["public_metrics"]["like_count"] = 123456
    path = tmp_path / "twice.jsonl"
    path.write_text(json.dumps(later) + "\n" + json.dumps(page) + "\n")
    ingest_archive(ArchiveConfig([path], tmp_path / "images.parquet"))
    table = read_table(tmp_path / "images.parquet", "images")
    tweet = table.filter(pc.equal(table.column("tweet_id"), page["data"][0]["id"]))
    assert set(tweet.column("likes").to_pylist()) == {123456}
    assert table.num_rows == len(set(table.column("key").to_pylist()))


def test_malformed_lines_are_counted_with_line_numbers(synthetic, tmp_path):
    out, summary = synthetic
    lines = (out / "archive.jsonl").read_text().splitlines()
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([lines[0], "{not json", json.dumps({"data": [{"id": 1, "attachments": {"media_keys": ["m"]}}],
                                                           "includes": {"media": [{"media_key": "m", "type": "photo"}]}}), *lines[1:]]) + "\n")
    result = ingest_archive(ArchiveConfig([path], tmp_path / "images.parquet"))
    assert result["malformed"] == 2 and result["malformed_lines"] == [f"{path}:2", f"{path}:3"]
    assert result["images"] == summary["images"]


def test_real_v2_search_page(realdata, tmp_path):
    """Real tweet objects of a recorded v2 search; their photos are added to `includes`, which
    the recording left out, so every other field is as the API sent it."""
    page = json.loads((realdata / "python-twitter-v2" / "apis__searches__search_tweets_query.json").read_text())
    path = tmp_path / "search.jsonl"
    path.write_text(json.dumps(page) + "\n")
    # media keys with no media object: nothing to fetch, and said so
    assert list(read_twarc2(path)) == [Skipped("media_not_included", 2), Skipped("no_photo", 2)]
    page["includes"]["media"] = [{"media_key": k, "type": "photo", "url": f"https://pbs.twimg.com/media/{k}.jpg"}
                                 for t in page["data"] for k in (t.get("attachments") or {}).get("media_keys", [])]
    path.write_text(json.dumps(page) + "\n")
    rows = [r for r in read_twarc2(path, datetime(2020, 7, 1, tzinfo=timezone.utc)) if isinstance(r, dict)]
    assert [(r["tweet_id"], r["user_id"]) for r in rows] == [
        ("1276035977375477760", "63046977"), ("1275763727908798470", "196883832")]
    assert rows[0]["created_at"] == datetime(2020, 6, 25, 6, 14, 19, tzinfo=timezone.utc)
    assert rows[0]["mentions"] == ["snowman"] and rows[1]["mentions"] == ["snowman", "happycamper"]
    assert rows[0]["caption_words"][:4] == ["ooo", "thanks", "error", "message"]
    assert rows[0]["likes"] is None and rows[0]["key"] == "1276035977375477760_0"


def test_retweets_are_dropped(realdata, tmp_path):
    page = json.loads((realdata / "python-twitter-v2" / "apis__searches__search_tweets_for_nyc.json").read_text())
    for tweet in page["data"]:
        tweet["attachments"] = {"media_keys": ["3_1"]}
    page["includes"] = {"media": [{"media_key": "3_1", "type": "photo", "url": "https://pbs.twimg.com/media/x.jpg"}]}
    path = tmp_path / "nyc.jsonl"
    path.write_text(json.dumps(page) + "\n")
    items = list(read_twarc2(path))
    kept = {r["tweet_id"] for r in items if isinstance(r, dict)}
    originals = {t["id"] for t in page["data"] if "retweeted" not in {r["type"] for r in t.get("referenced_tweets", [])}}
    assert kept == originals and len(originals) == 3
    assert [i for i in items if isinstance(i, Skipped)] == [Skipped("retweet", len(page["data"]) - 3)]


def test_unknown_format_is_a_clear_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("just text\n")
    with pytest.raises(FormatError, match="unrecognised"):
        ingest_archive(ArchiveConfig([path], tmp_path / "o.parquet"))
