import json
from datetime import datetime, timezone

import pyarrow.compute as pc
import pytest

from ingest.archive import ArchiveConfig, ingest_archive
from ingest.formats.rows import FormatError, Skipped, caption_words, tags_in
from ingest.formats.twarc2 import read_twarc2
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


@pytest.mark.parametrize("text, words, tags, mentions", [
    ("look https://t.co/abc?x=1,#not,@me here", ["look", "here"], [], []),  # a URL runs to the next whitespace
    ("http://x.com/#frag #tag.", [], ["tag"], []),
    ("#Dog's day", ["s", "day"], ["dog"], []),  # a tag takes word characters only
    ("#a-b #13 #日本 ＃Full", ["b"], ["a", "13", "日本", "full"], []),
    ("x#y #dog #dog", ["x"], ["y", "dog", "dog"], []),  # a # inside a word counts; repeats stay
    ("mail me@example.com @Bob_1 ＠Ken", ["mail", "me", "com"], [], ["example", "bob_1", "ken"]),
    ("he's don't don’t rock'n'roll", ["he's", "don't", "don", "t", "rock'n", "roll"], [], []),
    ("13/10 would pet, well-known snake_case", ["13", "10", "would", "pet", "well", "known", "snake_case"], [], []),
    ("Fish &amp; chips 😀 ÉCOLE", ["fish", "amp", "chips", "école"], [], []),  # HTML escapes as sent; no emoji
])
def test_hashtags_mentions_and_caption_words_from_text(text, words, tags, mentions):
    """The README's rules, one example each (`tags_in` is what a table without tag columns uses)."""
    assert caption_words(text) == words
    assert tags_in(text) == (tags, mentions)


def test_table_tag_columns_win_over_the_text(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("tweet_id,user_id,created_at,text,likes,url,hashtags,mentions\n"
                     "1,u,2026-01-01T00:00:00Z,#ignored @nobody hi,5,https://x/1.jpg,#Cats|dogs ＃Birds,@Ann\n"
                     "2,u,2026-01-01T00:00:00Z,#Kept @Here hi,5,https://x/2.jpg,,\n")
    summary = ingest_archive(ArchiveConfig([table], tmp_path / "i.parquet", columns={"hashtags": "hashtags"}))
    rows = {r["tweet_id"]: r for r in read_table(tmp_path / "i.parquet", "images").to_pylist()}
    assert summary["images"] == 2
    assert (rows["1"]["hashtags"], rows["1"]["mentions"]) == (["cats", "dogs", "birds"], ["ann"])
    assert (rows["2"]["hashtags"], rows["2"]["mentions"]) == ([], [])  # an empty cell is no tags
    assert rows["1"]["caption_words"] == ["hi"]
    table.write_text("tweet_id,user_id,created_at,text,likes,url\n1,u,2026-01-01T00:00:00Z,#Kept @Here hi,5,x.jpg\n")
    ingest_archive(ArchiveConfig([table], tmp_path / "j.parquet"))
    row = read_table(tmp_path / "j.parquet", "images").to_pylist()[0]
    assert (row["hashtags"], row["mentions"], row["caption_words"]) == (["kept"], ["here"], ["hi"])


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


def test_api_sources_take_tags_from_entities_not_the_text(realdata, tmp_path):
    page = json.loads((realdata / "python-twitter-v2" / "apis__searches__search_tweets_query.json").read_text())
    tweet = next(t for t in page["data"] if t.get("attachments"))
    tweet["text"] += " #InText"
    tweet.setdefault("entities", {})["hashtags"] = [{"start": 0, "end": 4, "tag": "FromX"}, {"tag": "FromX"}]
    page["includes"]["media"] = [{"media_key": k, "type": "photo", "url": f"https://pbs.twimg.com/media/{k}.jpg"}
                                 for k in tweet["attachments"]["media_keys"]]
    path = tmp_path / "page.jsonl"
    path.write_text(json.dumps(page) + "\n")
    row = next(r for r in read_twarc2(path) if isinstance(r, dict) and r["tweet_id"] == tweet["id"])
    assert row["hashtags"] == ["fromx", "fromx"] and "intext" not in row["caption_words"]
