"""Pairs from the real v1.1 user timeline of @Twitter (tweepy's recorded cassette), checked by hand.

The cassette's second response holds 20 tweets by @Twitter, 14 of them with one photo each,
posted 2020-12-21 22:10 to 2020-12-23 17:12, none with a hashtag. The first response holds
4 photo tweets by @TweepyDev with zero counts (equal scores, so never a pair). Score
S = ln(1 + 0.7·RT + 0.3·likes); a pair needs S_hi − S_lo ≥ √2·0.3·Φ⁻¹(0.95) = 0.6979.
The photo tweets of @Twitter (time on 2020-12-21 or 22/23, RT, likes, S):

    144046  21 22:10:32     3     23  2.303   @AyySheree 👀
    145506  21 22:16:20    28    206  4.412   @BunAndLeggings 👀
    157247  21 23:02:59     3     40  2.715   @emilybern 👀
    159280  21 23:11:04    11     75  3.440   @HElbanadi 👀
    161853  21 23:21:18   889   8733  8.084   🗣 @_aanittangele
    161857  21 23:21:19  1646  14550  8.616   🗣 @rynfitz
    161863  21 23:21:20  3435  19855  9.031   🗣 @_major_williams
    163570  21 23:28:07    24     88  3.789   @_major_williams 👀
    166905  21 23:41:22    14    101  3.716   @_aanittangele 👀
    477335  22 20:14:54   125   2904  6.867   @ziloow_ it's not too late
    513102  22 22:37:02   219   4040  7.220   @chunkyfila 👀
    513367  22 22:38:05   497   7585  7.873   @blackprints 👀
    536025  23 00:08:07    55   1420  6.143   @callme_kamikaze 👀
    793727  23 17:12:08   100   1043  5.950   @TreyNKennedy 👀

(ids shortened to their last six digits; the full ids start with 1341.)
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from shards.pairs import PairsConfig, build_pairs
from shards.schema import read_table, write_table


def full(short: str) -> str:
    ids = {"144046": "1341144046450962432", "145506": "1341145506743943168", "157247": "1341157247574028291",
           "159280": "1341159280104398857", "161853": "1341161853343334401", "161857": "1341161857931874304",
           "161863": "1341161863103488003", "163570": "1341163570873044992", "166905": "1341166905508286465"}
    return ids[short]


# twitter rules with the hashtag rule off (no tweet has one), window 0.01 days = 864 s, no retweet rule.
# Within 864 s of each other: 144046–145506 (348 s), 157247–159280 (485 s), 159280–1618xx (614..616 s),
# 161853–161857–161863 (1..2 s), 1618xx–163570 (407..409 s), 163570–166905 (795 s); all other
# neighbours are more than 864 s apart. Caption lengths are 0 words for all of these (emoji and
# mentions are not words), so the caption rule passes. Then the score gap decides:
WINDOW_PAIRS = {
    ("145506", "144046"): "gap 4.412 − 2.303 = 2.109",
    ("159280", "157247"): "gap 3.440 − 2.715 = 0.725 ≥ 0.698 (P = 0.956), barely",
    ("161853", "159280"): "gap 4.644",
    ("161857", "159280"): "gap 5.176",
    ("161863", "159280"): "gap 5.591",
    ("161863", "161853"): "gap 0.947 (161857–161853: 0.532 and 161863–161857: 0.415 are too close)",
    ("161853", "163570"): "gap 4.295",
    ("161857", "163570"): "gap 4.827",
    ("161863", "163570"): "gap 5.242",
    # 163570–166905: gap 0.073, too close; 513102–513367 (63 s): gap 0.653 < 0.698 (P = 0.938).
}
# With the retweet rule on every pair (counts differ, one above 20 retweets), 159280 (11 RT) vs
# 157247 (3 RT) fails: neither has more than 20. Every other pair has a side with ≥ 24 retweets.
RETWEET_RULE_FAILS = {("159280", "157247")}
# ding: both posts ≥ 30 days old, ≤ 10 days apart, identical hashtags (none) and mentions,
# ≤ 6 caption words, one photo, ≥ 50 likes. Same mentions only for @_major_williams
# (161863, 163570) and @_aanittangele (161853, 166905); likes 19855/88 and 8733/101 pass.
DING_PAIRS = {("161863", "163570"): "mention _major_williams, gap 5.242",
              ("161853", "166905"): "mention _aanittangele, gap 4.368"}


def cassette_tweets(realdata) -> list[dict]:
    cassette = json.loads((realdata / "tweepy-v1.1" / "testusertimeline.json").read_text())
    return [t for i in cassette["interactions"] for t in json.loads(i["response"]["body"]["string"])]


def table_from_cassette(realdata, collected_at: datetime) -> pa.Table:
    """The images table written straight from the tweets (independent of ingest's v1 reader)."""
    rows = []
    for t in cassette_tweets(realdata):
        media = (t.get("extended_entities") or t["entities"]).get("media", [])
        for n, m in enumerate(media):
            text = t.get("full_text") or t.get("text")
            rows.append({
                "key": f"{t['id_str']}_{n}", "tweet_id": t["id_str"], "media_key": f"3_{m['id_str']}",
                "user_id": t["user"]["id_str"],
                "created_at": datetime.strptime(t["created_at"], "%a %b %d %H:%M:%S %z %Y"),
                "collected_at": collected_at, "text": text,
                "hashtags": [h["text"].lower() for h in t["entities"]["hashtags"]],
                "mentions": [u["screen_name"].lower() for u in t["entities"]["user_mentions"]],
                "caption_words": [w for w in text.split() if w.isalnum() or "'" in w],
                "retweets": t["retweet_count"], "likes": t["favorite_count"], "media_count": len(media),
                "url": m["media_url_https"], "status": "pending"})
    return pa.Table.from_pylist(rows)


def pairs_of(out) -> dict[tuple[str, str], str]:
    table = pa.concat_tables(read_table(out / f"{s}.parquet", "pairs") for s in ("train", "val", "test"))
    return {(h.split("_")[0], lo.split("_")[0]): rule for h, lo, rule in
            zip(table.column("hi_key").to_pylist(), table.column("lo_key").to_pylist(), table.column("rule").to_pylist())}


def expected(short_pairs) -> set[tuple[str, str]]:
    return {(full(a), full(b)) for a, b in short_pairs}


def check_rules(images, tmp_path):
    base = dict(images=images, all_candidates=True, plot=False)
    build_pairs(PairsConfig(out=tmp_path / "twitter", **base))
    assert pairs_of(tmp_path / "twitter") == {}, "no tweet has a hashtag, so the twitter preset pairs nothing"

    build_pairs(PairsConfig(out=tmp_path / "w0", min_common_hashtags=0, max_days=0.01, extra_share=0.0, **base))
    got = pairs_of(tmp_path / "w0")
    assert set(got) == expected(WINDOW_PAIRS) and set(got.values()) == {"base"}

    build_pairs(PairsConfig(out=tmp_path / "w1", min_common_hashtags=0, max_days=0.01, extra_share=1.0, **base))
    got = pairs_of(tmp_path / "w1")  # at a share of 1 every pair that passes the retweet rule carries it
    assert set(got) == expected(WINDOW_PAIRS)
    assert {p for p, rule in got.items() if rule == "retweets"} == expected(set(WINDOW_PAIRS) - RETWEET_RULE_FAILS)

    ding = PairsConfig.preset_defaults("ding")
    stats = build_pairs(PairsConfig(out=tmp_path / "ding", preset="ding", **ding, **base))
    assert set(pairs_of(tmp_path / "ding")) == expected(DING_PAIRS)
    assert stats["all"]["share_no_hashtag"] == 1.0 and stats["all"]["share_no_caption"] == 1.0


def test_pairs_from_the_cassette_match_the_hand_checked_list(realdata, tmp_path):
    table = table_from_cassette(realdata, datetime(2021, 2, 1, tzinfo=timezone.utc))
    assert table.num_rows == 18  # 14 photo tweets by @Twitter, 4 by @TweepyDev
    write_table(table, tmp_path / "images.parquet", "images")
    check_rules(tmp_path / "images.parquet", tmp_path)


def test_ding_needs_posts_thirty_days_old(realdata, tmp_path):
    # Counted eight to ten days after posting: every post is too young for IIPA's 30-day rule.
    write_table(table_from_cassette(realdata, datetime(2020, 12, 31, tzinfo=timezone.utc)), tmp_path / "i.parquet",
                "images")
    ding = PairsConfig.preset_defaults("ding")
    stats = build_pairs(PairsConfig(images=tmp_path / "i.parquet", out=tmp_path / "p", preset="ding", plot=False,
                                    all_candidates=True, **ding))
    assert stats["usable_rows"] == 18 and stats["skipped_rows"] == {"status": 0, "no_counts": 0, "multi_photo": 0,
                                                                    "no_collected_at": 0}
    assert stats["candidates"]["rules"] == 0 and stats["pairs"] == 0


def test_pairs_through_the_v1_reader(realdata, tmp_path):
    from ingest.formats import READERS

    if "v1" not in READERS:
        pytest.skip("ingest.formats.READERS has no v1 reader yet")
    from ingest.archive import ArchiveConfig, ingest_archive

    timeline = tmp_path / "timeline.json"
    timeline.write_text(json.dumps(cassette_tweets(realdata)))
    ingest_archive(ArchiveConfig([timeline], tmp_path / "images.parquet", format="v1",
                                 collected_at="2021-02-01T00:00:00Z"))
    assert read_table(tmp_path / "images.parquet", "images").num_rows == 18
    check_rules(tmp_path / "images.parquet", tmp_path)
