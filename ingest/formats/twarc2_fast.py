"""The vectorised path for twarc2 JSONL: blocks of pages parsed by Arrow's JSON reader into rows.

Parsing tweets one dict at a time in Python costs more than `json.loads` alone; here a block of
lines is parsed in C++ into columns (only the fields the images table needs), and retweets,
media joins, captions and times are computed on whole columns. A block that is not clean (a
malformed line, a missing field, a type the schema does not expect) goes through the reference
reader `ingest.formats.twarc2.read_twarc2` instead, line by line, so the rows, and the malformed
lines reported, are the same either way; tests check that both paths agree.
"""
from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ingest.formats.rows import (
    MENTION_RE,
    TAG_RE,
    URL_RE,
    WORD_RE,
    Malformed,
    add_to,
    caption_words,
    file_time,
    loads,
    record_rows,
    skipped_totals,
    tally,
)
from ingest.formats.twarc2 import twarc2_page_rows
from shards.schema import KEY_JOIN, PENDING

BLOCK_BYTES = 8 << 20
TS = pa.timestamp("us", tz="UTC")
SPLIT_WORDS_RE = re.compile(WORD_RE.pattern + "|\x01")  # words, and the separators between texts

_TWEET = pa.struct([
    ("id", pa.string()), ("author_id", pa.string()), ("created_at", pa.string()), ("text", pa.string()),
    ("referenced_tweets", pa.list_(pa.struct([("type", pa.string()), ("id", pa.string())]))),
    ("entities", pa.struct([("hashtags", pa.list_(pa.struct([("tag", pa.string())]))),
                            ("mentions", pa.list_(pa.struct([("username", pa.string())])))])),
    ("public_metrics", pa.struct([(n, pa.int64()) for n in ("retweet_count", "like_count", "reply_count", "quote_count")])),
    ("attachments", pa.struct([("media_keys", pa.list_(pa.string()))])),
])
_MEDIA = pa.struct([("media_key", pa.string()), ("type", pa.string()), ("url", pa.string()),
                    ("preview_image_url", pa.string()), ("width", pa.int64()), ("height", pa.int64())])
PAGE = pa.schema([
    ("data", pa.list_(_TWEET)),
    ("includes", pa.struct([("media", pa.list_(_MEDIA)), ("tweets", pa.list_(_TWEET))])),
    ("__twarc", pa.struct([("retrieved_at", pa.string())])),
])


class NotClean(Exception):
    """This block needs the reference reader (a record the vectorised path does not handle)."""


def lower(values: pa.Array) -> pa.Array:
    """Lower-case strings exactly as Python's str.lower (ASCII in C++, the rest in Python)."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    ascii_mask = pc.fill_null(pc.string_is_ascii(values), True)
    out = pc.ascii_lower(values)
    if pc.all(ascii_mask).as_py():
        return out
    others = pc.invert(ascii_mask)
    lowered = [v.lower() for v in values.filter(others).to_pylist()]
    return pc.replace_with_mask(out, others, pa.array(lowered, pa.string()))


def _words(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(words per text, all words in order) by the reference regexes run once over the joined texts.

    A line break on each side of a \\x01 between texts keeps URLs, hashtags and words from
    running across; the \\x01s found among the words split the result back per text.
    """
    joined = "\n\x01\n".join(texts)
    if joined.count("\x01") != max(0, len(texts) - 1):  # a text holding the separator itself
        per_text = [caption_words(t) for t in texts]
        return np.array([len(w) for w in per_text]), np.array([w for ws in per_text for w in ws], dtype=object)
    joined = MENTION_RE.sub(" ", TAG_RE.sub(" ", URL_RE.sub(" ", joined)))
    tokens = np.array(SPLIT_WORDS_RE.findall(joined), dtype=object)
    sep = tokens == "\x01"
    return np.bincount(np.cumsum(sep)[~sep], minlength=len(texts)), tokens[~sep]


def caption_words_arrow(texts: pa.Array) -> pa.ListArray:
    """`rows.caption_words` of every text of an array, computed on the whole column.

    ASCII texts are joined apart from the others: a string with one emoji in it is stored with
    four bytes a character, which would slow the regexes over all of them.
    """
    texts = pc.fill_null(texts, "")
    is_ascii = pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
    groups = [np.flatnonzero(is_ascii), np.flatnonzero(~is_ascii)]
    counts = np.zeros(len(texts), dtype=np.int64)
    starts = np.zeros(len(texts), dtype=np.int64)
    values, base = [], 0
    for idx in groups:
        n, words = _words(texts.take(pa.array(idx, pa.int64())).to_pylist())
        counts[idx] = n
        starts[idx] = base + np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
        values.append(words)
        base += len(words)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    gather = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
    flat = pa.array(np.concatenate(values), pa.string()).take(pa.array(gather, pa.int64()))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), lower(flat))


def relist(lists: pa.ListArray, values: pa.Array) -> pa.ListArray:
    """Lists of the same lengths as `lists` (nulls as empty) holding `values` (its flattened items, mapped)."""
    offsets = np.asarray(lists.offsets)
    return pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), values)


def lower_lists(lists: pa.ListArray) -> pa.ListArray:
    return relist(lists, lower(lists.flatten()))


def _field(array, *names):
    for name in names:
        array = pc.struct_field(array, name)
    return array


def _position_in_group(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a sorted array of group ids: each element's index within its group, and its group size."""
    n = len(groups)
    starts = np.ones(n, dtype=bool)
    starts[1:] = groups[1:] != groups[:-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    bounds = np.append(np.flatnonzero(starts), n)
    sizes = np.repeat(np.diff(bounds), np.diff(bounds))
    return np.arange(n) - first, sizes


def page_times(pages: pa.Table, fallback) -> pa.Array:
    """Each page's `__twarc.retrieved_at`, or the fallback time where it has none."""
    raw = _field(pages.column("__twarc").combine_chunks(), "retrieved_at")
    try:
        when = pc.cast(raw, TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise NotClean(exc) from exc
    return pc.fill_null(when, pa.scalar(fallback, TS)) if fallback is not None else when


def page_keys(page: np.ndarray, media_keys: pa.Array) -> pa.Array:
    """(page, media key) as one string: a media key names a medium of its own page only."""
    return pc.binary_join_element_wise(pa.array(page.astype(str)), media_keys, "\x00")


def photos(pages: pa.Table, tweets: pa.Array, tweet_page: np.ndarray, media_types) -> tuple[pa.Table, np.ndarray]:
    """(tweet, media_key, url) of every kept medium, in tweet then attachment order, and how many
    of each tweet's media keys name a medium of its page.

    A hash lookup rather than a join: Arrow's joins run on its own threads and allocate from its
    default allocator whatever pool is set, which holds on to tens of MB per thread.
    """
    keys = _field(tweets, "attachments", "media_keys")
    key_tweet = pc.list_parent_indices(keys).to_numpy()
    media_lists = _field(pages.column("includes").combine_chunks(), "media")
    media = pc.list_flatten(media_lists)
    offered = page_keys(pc.list_parent_indices(media_lists).to_numpy(), _field(media, "media_key"))
    if pc.count_distinct(offered).as_py() != len(offered) - offered.null_count:
        raise NotClean("a page lists one media key twice")
    wanted = page_keys(tweet_page[key_tweet], pc.list_flatten(keys))
    at = pc.fill_null(pc.index_in(wanted, value_set=offered, skip_nulls=True), -1).to_numpy()
    found = np.flatnonzero(at >= 0)
    pick = pa.array(at[found], pa.int64())
    url = _field(media, "url")
    url = pc.coalesce(pc.if_else(pc.equal(url, ""), None, url), _field(media, "preview_image_url"))
    kept = pa.table({"tweet": key_tweet[found], "media_key": _field(media, "media_key").take(pick),
                     "type": _field(media, "type").take(pick), "url": url.take(pick),
                     **{f"orig_{side}": dimension(_field(media, side).take(pick)) for side in ("width", "height")}})
    found_per_tweet = np.bincount(key_tweet[found], minlength=len(tweets))
    return kept.filter(pc.is_in(kept.column("type"), pa.array(sorted(media_types), pa.string()))), found_per_tweet


def dimension(values: pa.Array) -> pa.Array:
    """Photo sides as the reference reader keeps them (rows._dimension): positive int32, else null."""
    valid = pc.and_(pc.greater(values, 0), pc.less(values, 1 << 31))
    return pc.if_else(valid, values, pa.scalar(None, values.type)).cast(pa.int32())


def retweets(tweets: pa.Array) -> np.ndarray:
    refs = _field(tweets, "referenced_tweets")
    types = pc.list_flatten(refs)
    hit = pc.fill_null(pc.equal(_field(types, "type"), "retweeted"), False).to_numpy(zero_copy_only=False)
    is_rt = np.zeros(len(tweets), dtype=bool)
    is_rt[pc.list_parent_indices(refs).to_numpy()[hit]] = True
    return is_rt


def skips(tweets: pa.Array, is_rt: np.ndarray, tweet_idx: np.ndarray, found: np.ndarray) -> dict[str, int]:
    """Why the tweets of a block that gave no row gave none (the reference reader's reasons)."""
    n_keys = pc.fill_null(pc.list_value_length(_field(tweets, "attachments", "media_keys")), 0).to_numpy()
    empty = (np.bincount(tweet_idx, minlength=len(tweets)) == 0) & ~is_rt
    not_included = empty & (n_keys > 0) & (found == 0)
    return {"retweet": int(is_rt.sum()), "no_photo": int((empty & ~not_included).sum()),
            "media_not_included": int(not_included.sum())}


def pages_to_rows(pages: pa.Table, fallback, media_types, originals: bool = True) -> tuple[pa.Table, dict[str, int]]:
    """Rows (images-table columns) of a block of twarc2 pages and what was skipped; raises
    NotClean where unsure."""
    data = pages.column("data").combine_chunks()
    if data.null_count:
        raise NotClean("a page without data")
    tweets = pc.list_flatten(data)
    if _field(tweets, "id").null_count:
        raise NotClean("a record without id")
    tweet_page = pc.list_parent_indices(data).to_numpy()
    is_rt = retweets(tweets)
    included = pc.list_value_length(_field(pages.column("includes").combine_chunks(), "tweets"))
    if originals and np.any(pc.fill_null(included, 0).to_numpy()[tweet_page[is_rt]] > 0):
        raise NotClean("retweets whose originals the page includes")
    kept, found = photos(pages, tweets, tweet_page, media_types)
    tweet_idx = kept.column("tweet").to_numpy()
    kept_mask = ~is_rt[tweet_idx]
    kept, tweet_idx = kept.filter(pa.array(kept_mask)), tweet_idx[kept_mask]
    tweet_url = pc.binary_join_element_wise(pa.array(tweet_idx.astype(str)), kept.column("url"), "\x00")
    if pc.count_distinct(tweet_url).as_py() != len(tweet_url) - tweet_url.null_count:
        raise NotClean("a tweet that gives one URL twice")
    index, sizes = _position_in_group(tweet_idx)
    t = tweets.take(pa.array(tweet_idx, pa.int64()))
    ids, authors, created_raw = _field(t, "id"), _field(t, "author_id"), _field(t, "created_at")
    if ids.null_count or authors.null_count or created_raw.null_count:
        raise NotClean("a photo tweet without id, author_id or created_at")
    try:
        created = pc.cast(created_raw, TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise NotClean(exc) from exc
    tags = _field(t, "entities", "hashtags")
    mentions = _field(t, "entities", "mentions")
    tag_text = relist(tags, _field(pc.list_flatten(tags), "tag"))
    mention_text = relist(mentions, _field(pc.list_flatten(mentions), "username"))
    if tag_text.values.null_count or mention_text.values.null_count:
        raise NotClean("a hashtag without tag or a mention without username")
    metrics = _field(t, "public_metrics")
    text = pc.fill_null(_field(t, "text"), "")
    # Captions are computed once per tweet, not once per photo.
    first = np.flatnonzero(index == 0)
    per_tweet = np.repeat(np.arange(len(first)), sizes[first])
    words = caption_words_arrow(text.take(pa.array(first, pa.int64()))).take(pa.array(per_tweet, pa.int64()))
    when = page_times(pages, fallback).take(pa.array(tweet_page[tweet_idx], pa.int64()))
    return pa.table({
        "key": pc.binary_join_element_wise(ids, pa.array(index.astype(str)), KEY_JOIN),  # image_key, vectorised
        "tweet_id": ids, "media_key": kept.column("media_key"), "user_id": authors,
        "created_at": created, "collected_at": when, "text": text,
        "hashtags": lower_lists(tag_text), "mentions": lower_lists(mention_text), "caption_words": words,
        "retweets": _field(metrics, "retweet_count"), "likes": _field(metrics, "like_count"),
        "replies": _field(metrics, "reply_count"), "quotes": _field(metrics, "quote_count"),
        "media_count": pa.array(sizes, pa.int32()), "url": kept.column("url"),
        "orig_width": kept.column("orig_width"), "orig_height": kept.column("orig_height"),
        "status": pa.array(np.full(len(index), PENDING, dtype=object), pa.string()),
    }), skips(tweets, is_rt, tweet_idx, found)


def line_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, bytes]]:
    """(byte offset, bytes) of blocks of whole lines, about `block_bytes` each."""
    offset = 0
    with open(path, "rb") as f:
        rest = b""
        while True:
            chunk = f.read(block_bytes)
            if not chunk:
                if rest:
                    yield offset, rest
                return
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                rest = chunk
                continue
            yield offset, chunk[:cut]
            offset += cut
            rest = chunk[cut:]


class LineCounter:
    """The line number at a byte offset, counted only when asked (only unclean blocks need it)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.line = path, 0, 1

    def at(self, offset: int) -> int:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while self.offset < offset:
                chunk = f.read(min(BLOCK_BYTES, offset - self.offset))
                self.line += chunk.count(b"\n")
                self.offset += len(chunk)
        return self.line


def parse_block(block: bytes) -> pa.Table:
    options = pj.ReadOptions(use_threads=False, block_size=len(block) + 1)
    parse = pj.ParseOptions(explicit_schema=PAGE, unexpected_field_behavior="ignore")
    return pj.read_json(io.BytesIO(block), read_options=options, parse_options=parse)


def _reference(path: Path, first_line: int, block: bytes, fallback, media_types, originals,
               skipped: dict[str, int]) -> Iterator:
    """The reference reader over one block, with the file's own line numbers."""
    for offset, line in enumerate(block.split(b"\n")):
        if not line.strip():
            continue
        rows = record_rows(path, first_line + offset, skipped, lambda mine: twarc2_page_rows(
            loads(line), fallback, media_types, originals, mine))
        if isinstance(rows, Malformed):
            yield rows
        else:
            yield from rows


def read_twarc2_fast(path: Path, collected_at=None, media_types=frozenset({"photo"}), originals: bool = True,
                     block_bytes: int = BLOCK_BYTES, **_) -> Iterator[pa.Table | dict | Malformed]:
    """twarc2 JSONL as Arrow tables of rows, a block at a time; unclean blocks go line by line."""
    path = Path(path)
    fallback = collected_at or file_time(path)
    lines, skipped = LineCounter(path), tally()
    for offset, block in line_blocks(path, block_bytes):
        try:
            rows, block_skips = pages_to_rows(parse_block(block), fallback, frozenset(media_types), originals)
        except (NotClean, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            yield from _reference(path, lines.at(offset), block, fallback, media_types, originals, skipped)
            continue
        add_to(skipped, block_skips)
        if rows.num_rows:
            yield rows
    yield from skipped_totals(skipped)
