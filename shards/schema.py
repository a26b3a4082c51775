"""The data contracts of iipa: versioned pyarrow schemas for the images table and pair manifests.

Every writer validates against these schemas and every reader checks the version stamped in the
Parquet metadata, so a file written by an incompatible version fails loudly instead of quietly
misreading columns. Every images table written or read also has its sample keys checked, as they
become tar member names.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shards.atomic import atomic_path

SCHEMA_VERSION = 1
VERSION_KEY = b"iipa.schema"

_ts = pa.timestamp("us", tz="UTC")
_words = pa.list_(pa.string())

IMAGES = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("tweet_id", pa.string(), nullable=False),
        pa.field("media_key", pa.string()),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("created_at", _ts, nullable=False),
        pa.field("collected_at", _ts),
        pa.field("text", pa.string()),
        pa.field("hashtags", _words),
        pa.field("mentions", _words),
        pa.field("caption_words", _words),
        pa.field("retweets", pa.int64()),
        pa.field("likes", pa.int64()),
        pa.field("replies", pa.int64()),
        pa.field("quotes", pa.int64()),
        pa.field("media_count", pa.int32()),
        pa.field("url", pa.string()),
        pa.field("variant", pa.string()),  # which of X's size variants (`name=`) was fetched
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("offset", pa.int64()),
        pa.field("size", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("orig_width", pa.int32()),
        pa.field("orig_height", pa.int32()),
        pa.field("sha1", pa.string()),
    ]
)

PAIRS = pa.schema(
    [
        pa.field("hi_key", pa.string(), nullable=False),
        pa.field("lo_key", pa.string(), nullable=False),
        pa.field("hi_pop", pa.float64(), nullable=False),
        pa.field("lo_pop", pa.float64(), nullable=False),
        pa.field("prob", pa.float64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("days_apart", pa.float64(), nullable=False),
    ]
)

SCHEMAS = {"images": IMAGES, "pairs": PAIRS}

# Row statuses: an image is pending until fetched, then ok or one of the error codes of `fetch`.
PENDING = "pending"
OK = "ok"


class SchemaError(ValueError):
    """A table does not match its contract (a user's file, or a bug in a writer)."""


# A photo's key is its tweet's id and its place among the tweet's photos, joined by KEY_JOIN
# ("1234567890_0"): derived from the data, so the same on every ingest.
KEY_JOIN = "_"


def image_key(tweet_id: str, index: int) -> str:
    """The key of the `index`-th photo of tweet `tweet_id`."""
    return f"{tweet_id}{KEY_JOIN}{index}"


# A sample key becomes the tar member names `{key}.jpg` and `{key}.json`: no `/`, `..`, newline
# or absolute path may reach tar -x or tarfile.extractall, no dot (WebDataset splits a member
# name at its first dot), and at most 95 characters (a USTAR name holds 100 bytes).
KEY_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,94}"
KEY_RULE = "letters, digits, '_' and '-' only, at most 95 characters, not starting with '-'"


def check_key(key: str) -> str:
    """`key` if it is a safe sample key, else ValueError (a writer's last line of defence)."""
    if not isinstance(key, str) or not re.fullmatch(KEY_PATTERN, key):
        raise ValueError(f"unsafe sample key {key!r}: {KEY_RULE}")
    return key


# Fewer keys than this are checked one by one in Python: a build's actors check each shard's
# slice, and importing pyarrow.compute would cost each of them 50 ms of CPU, where a thousand
# keys take 0.5 ms. Larger tables (a whole images table) are checked vectorised.
VECTORISED_KEY_CHECK = 10_000


def check_keys(keys: pa.ChunkedArray | pa.Array, name: str) -> None:
    """Refuse a table with any unsafe key, naming the first and how many."""
    if len(keys) < VECTORISED_KEY_CHECK:
        bad = [key for key in keys.to_pylist() if key is not None and not re.fullmatch(KEY_PATTERN, key)]
        count, first = len(bad), bad[0] if bad else None
    else:
        import pyarrow.compute as pc

        mask = pc.invert(pc.match_substring_regex(keys, f"^{KEY_PATTERN}$"))
        count = pc.sum(mask).as_py() or 0
        first = keys.filter(mask)[0].as_py() if count else None
    if count:
        raise SchemaError(f"{name}: unsafe sample key {first!r} ({count} in all): keys become tar member "
                          f"names, so {KEY_RULE}")


def conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Return `table` with exactly `schema`'s columns, order and types, or raise SchemaError.

    Missing nullable columns are added as nulls; integer widths and timestamp units are cast;
    anything else (a missing required column, a string where a number belongs, nulls in a
    required column) is an error naming the column.
    """
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise SchemaError(f"{name}: missing required column {field.name!r}")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"{name}: column {field.name!r} is {col.type}, expected {field.type}"
                ) from exc
        if not field.nullable and col.null_count:
            raise SchemaError(f"{name}: column {field.name!r} has {col.null_count} null values")
        columns.append(col)
    if schema is IMAGES:
        check_keys(columns[schema.get_field_index("key")], name)
    metadata = {VERSION_KEY: str(SCHEMA_VERSION).encode()}
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(metadata))


def write_table(table: pa.Table, path: str | os.PathLike, kind: str) -> Path:
    """Validate `table` against the `kind` contract and write it atomically (tmp, then rename)."""
    table = conform(table, SCHEMAS[kind], kind)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def parquet_files(path: str | os.PathLike) -> list[Path]:
    """A Parquet file, or the sorted Parquet files of a folder (hidden temporaries skipped)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise SchemaError(f"{path}: no Parquet files in this folder")
        return files
    if not path.exists():
        raise SchemaError(f"{path}: no such file or folder")
    return [path]


def check_version(metadata: dict | None, file) -> None:
    """Refuse a file written under another schema version (files without a stamp are accepted)."""
    version = (metadata or {}).get(VERSION_KEY)
    if version is not None and int(version) != SCHEMA_VERSION:
        raise SchemaError(f"{file}: schema version {int(version)}, this iipa reads version {SCHEMA_VERSION}")


def read_table(path: str | os.PathLike, kind: str) -> pa.Table:
    """Read a `kind` table from a Parquet file or folder, checking the schema version."""
    tables = []
    for file in parquet_files(path):
        try:
            table = pq.read_table(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(f"{file}: not a readable Parquet file ({exc})") from exc
        check_version(table.schema.metadata, file)
        tables.append(conform(table, SCHEMAS[kind], f"{file}"))
    return pa.concat_tables(tables)


def write_json(obj, path: str | os.PathLike) -> Path:
    """Write JSON atomically, so a reader never sees half a manifest."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path


def read_columns(path: str | os.PathLike, kind: str, columns: list[str], dictionary: tuple[str, ...] = ()) -> pa.Table:
    """Read only `columns` of a `kind` table (a file or folder), checking the schema version.

    What a large reader needs when it must not pay for the columns it ignores (captions and word
    lists are most of an images table's bytes); the columns are validated as `read_table` would.
    Columns in `dictionary` stay dictionary-encoded as Parquet stores them (a shard name repeated
    per row costs nothing to read that way).
    """
    schema = pa.schema([SCHEMAS[kind].field(c) if c not in dictionary else
                        SCHEMAS[kind].field(c).with_type(pa.dictionary(pa.int32(), SCHEMAS[kind].field(c).type))
                        for c in columns])
    tables = []
    for file in parquet_files(path):
        try:
            parquet = pq.ParquetFile(file, read_dictionary=list(dictionary))
            check_version(parquet.schema_arrow.metadata, file)
            present = [c for c in columns if c in parquet.schema_arrow.names]
            table = parquet.read(columns=present)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(f"{file}: not a readable Parquet file ({exc})") from exc
        except KeyError as exc:  # a dictionary column the file lacks
            name = exc.args[0].decode() if isinstance(exc.args[0], bytes) else exc.args[0]
            raise SchemaError(f"{file}: missing required column {name!r}") from None
        tables.append(conform(table, schema, f"{file}"))
    return pa.concat_tables(tables)
