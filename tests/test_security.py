"""Hostile inputs (issue 14): a pickle payload in a checkpoint, local files outside the allowed
roots, FIFOs and devices, sample keys that would escape a tar extraction, and options that
used to end in a traceback. Each must be refused in one line or recorded as a row's status."""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import run_iipa
from shards.console import UserError
from shards.build.fetch import FetchConfig, HttpClient, fetch
from shards.schema import SchemaError, read_table, write_table
from shards.build.writer import ShardWriter
from train.checkpoint import load_state, model_meta, read_weights


class Payload:
    """Unpickling this runs `touch MARKER`: what a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


@pytest.fixture()
def train_inputs(tmp_path) -> tuple[Path, Path]:
    """A shards folder and a pairs folder that pass the trainer's checks before any work starts."""
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text("{}")
    for split in ("train", "val"):
        write_table(pa.table({"hi_key": ["a"], "lo_key": ["b"], "hi_pop": [2.0], "lo_pop": [1.0], "prob": [0.99],
                              "user_id": ["u"], "rule": ["base"], "days_apart": [0.0]}),
                    tmp_path / "pairs" / f"{split}.parquet", "pairs")
    return tmp_path / "shards", tmp_path / "pairs"


# ---- 1. checkpoints are loaded weights-only --------------------------------------------------

@pytest.mark.parametrize("launch", [[], ["--nproc-per-node", "1"]], ids=["one-process", "torchrun"])
def test_a_planted_state_pt_is_refused_in_one_line_and_its_payload_never_runs(train_inputs, tmp_path, launch):
    shards, pairs = train_inputs
    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    torch.save({"model": {}, "optimizer": {}, "step": 1, "epoch": 0, "epoch_step": 1, "rng": Payload(marker)},
               run / "state.pt")
    result = run_iipa("train", "--shards", str(shards), "--pairs", str(pairs), "--out", str(run), *launch,
                      timeout=120)
    line = one_error_line(result)
    assert "state.pt: refused" in line and "posix.system" in line
    assert not marker.exists()


def test_weights_files_with_a_payload_or_no_state_dict_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": torch.zeros(1), "x": Payload(marker)}, tmp_path / "payload.pth")
    with pytest.raises(UserError, match="refused"):
        read_weights(tmp_path / "payload.pth")
    assert not marker.exists()
    torch.save([torch.zeros(1)], tmp_path / "list.pth")  # `--init iipa:` a pickled list
    with pytest.raises(UserError, match="not a state_dict"):
        read_weights(tmp_path / "list.pth")
    torch.save({"unrelated": 1}, tmp_path / "state.pt")
    with pytest.raises(UserError, match="not a state.pt"):
        load_state(tmp_path)


def test_a_malformed_model_json_is_one_line(tmp_path):
    torch.save({}, tmp_path / "model.pth")
    for text in ("{not json", '{"arch": "resnet18"}', "[1, 2]"):
        (tmp_path / "model.json").write_text(text)
        with pytest.raises(UserError, match="model.json: not a model.json"):
            model_meta(tmp_path / "model.pth")


@pytest.mark.parametrize("flag", ["--ckpt-every", "--val-every", "--log-every"])
def test_zero_intervals_are_refused_before_training(train_inputs, tmp_path, flag):
    shards, pairs = train_inputs
    result = run_iipa("train", "--shards", str(shards), "--pairs", str(pairs), "--out", str(tmp_path / "run"),
                      flag, "0", timeout=120)
    assert f"{flag} must be ≥ 1" in one_error_line(result)


# ---- 3. local files only under allowed roots, regular files, bytes counted -------------------

def local(url, roots=(), **kw):
    return fetch(url, HttpClient(1), FetchConfig(allow_local=tuple(roots), **kw))


def test_local_reads_outside_the_allowed_roots_are_refused(tmp_path, photos):
    (tmp_path / "ok.jpg").write_bytes(photos["coffee"])
    (tmp_path / "link.jpg").symlink_to("/etc/passwd")
    assert local((tmp_path / "ok.jpg").as_uri()).status == "local_not_allowed"  # no roots: no local files
    assert local((tmp_path / "ok.jpg").as_uri(), [tmp_path]).data == photos["coffee"]
    for url in ("file:///etc/passwd", "/etc/passwd", "/proc/self/environ", "file:///proc/self/environ",
                (tmp_path / "link.jpg").as_uri(), f"{tmp_path}/sub/../../../etc/passwd"):
        result = local(url, [tmp_path])
        assert result.status == "local_not_allowed" and result.data is None, url
        assert "root:" not in result.error, url  # nothing of the file reaches the error column
    assert local("file://otherhost/etc/passwd", [Path("/")]).status == "bad_url"


def test_a_fifo_is_refused_at_once_instead_of_hanging(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    done = {}
    thread = threading.Thread(target=lambda: done.update(r=local(str(tmp_path / "pipe.jpg"), [tmp_path])),
                              daemon=True)
    thread.start()
    thread.join(5)
    assert "r" in done, "fetch of a FIFO with no writer is still blocked"
    assert done["r"].status == "not_regular_file"


def test_devices_are_refused_and_the_cap_counts_bytes_read(tmp_path):
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    assert local(str(tmp_path / "zero.jpg"), [tmp_path]).status == "local_not_allowed"
    started = time.monotonic()
    assert local("file:///dev/zero", [Path("/dev")], max_bytes=1 << 20).status == "not_regular_file"
    assert time.monotonic() - started < 2
    # /proc files are regular but report size 0: only counting what is read keeps the cap.
    maps = Path("/proc/self/maps")
    assert maps.stat().st_size == 0 and len(maps.read_bytes()) > 200
    assert local(str(maps), [Path("/proc")], max_bytes=200).status == "too_large"


def test_a_local_read_obeys_the_total_timeout(tmp_path):
    (tmp_path / "big.jpg").write_bytes(b"\xff\xd8\xff" + bytes(3 << 20))
    result = local(str(tmp_path / "big.jpg"), [tmp_path], total_timeout=0.0, max_bytes=8 << 20)
    assert result.status == "timeout"


def test_build_records_hostile_local_urls_as_rows_and_refuses_a_missing_root(ray_local, tmp_path, photos):
    media = tmp_path / "media"
    media.mkdir()
    (media / "ok.jpg").write_bytes(photos["rocket"])
    os.mkfifo(media / "pipe.jpg")
    urls = {"ok": (media / "ok.jpg").as_uri(), "passwd": "file:///etc/passwd", "environ": "/proc/self/environ",
            "fifo": str(media / "pipe.jpg"), "zero": "/dev/zero"}
    write_table(pa.table({"key": list(urls), "tweet_id": list(urls), "user_id": ["u"] * len(urls),
                          "created_at": pa.array([0] * len(urls), pa.timestamp("us", tz="UTC")),
                          "status": ["pending"] * len(urls), "url": list(urls.values())}),
                tmp_path / "images.parquet", "images")
    common = ["shards", "build", "--images", str(tmp_path / "images.parquet"), "--allow-hosts", "",
              "--ray-address", ray_local.get_runtime_context().gcs_address]
    result = run_iipa(*common, "--out", str(tmp_path / "shards"), "--allow-local", str(media), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["key"]: r for r in read_table(tmp_path / "shards", "images").to_pylist()}
    assert {k: r["status"] for k, r in rows.items()} == {
        "ok": "ok", "passwd": "local_not_allowed", "environ": "local_not_allowed", "fifo": "not_regular_file",
        "zero": "local_not_allowed"}
    assert not any("root:" in (r["error"] or "") for r in rows.values())
    missing = run_iipa(*common, "--out", str(tmp_path / "other"), "--allow-local", str(tmp_path / "absent"))
    assert "--allow-local" in one_error_line(missing) and "no such folder" in missing.stderr
    assert "unrecognized arguments: --no-local" in one_error_line(run_iipa(*common, "--out", "x", "--no-local"))


# ---- 4. sample keys never become unsafe tar member names -------------------------------------

BAD_KEYS = ["../escape", "/etc/cron.d/x", "a/b", "line\nbreak", "dot.jpg", "-rf", "", "k" * 96]


def images(keys) -> pa.Table:
    n = len(keys)
    return pa.table({"key": keys, "tweet_id": ["t"] * n, "user_id": ["u"] * n,
                     "created_at": pa.array([0] * n, pa.timestamp("us", tz="UTC")), "status": ["pending"] * n})


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_unsafe_keys_are_refused_where_the_images_table_is_written_and_read(tmp_path, key):
    with pytest.raises(SchemaError, match="unsafe sample key"):
        write_table(images(["fine_1", key]), tmp_path / "w.parquet", "images")
    assert not (tmp_path / "w.parquet").exists()
    pq.write_table(images(["fine_1", key]), tmp_path / "r.parquet")  # written by someone else
    with pytest.raises(SchemaError, match=r"unsafe sample key .* \(1 in all\)"):
        read_table(tmp_path / "r.parquet", "images")
    with pytest.raises(ValueError, match="unsafe sample key"):
        ShardWriter(tmp_path, "s").add(key, b"\xff\xd8\xff", {})


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_small_and_large_tables_refuse_the_same_keys(key):
    """A shard's slice is checked key by key, a large table vectorised: both refuse alike."""
    from shards.schema import VECTORISED_KEY_CHECK, check_keys

    for fine in (1, VECTORISED_KEY_CHECK):
        keys = pa.array([f"fine_{i}" for i in range(fine)] + [key, "fine", key])
        with pytest.raises(SchemaError, match=re.escape(f"unsafe sample key {key!r} (2 in all)")):
            check_keys(keys, "t")


def test_ordinary_keys_pass(tmp_path):
    keys = ["1800000000000000000_0", "3_18000000000000000001", "img000001", "ok_astronaut", "k" * 95, "a-b"]
    assert read_table(write_table(images(keys), tmp_path / "ok.parquet", "images"), "images").num_rows == len(keys)
    many = [f"{key}_{i}"[-95:] for i in range(2000) for key in keys]  # checked vectorised
    assert read_table(write_table(images(many), tmp_path / "many.parquet", "images"), "images").num_rows == len(many)


def test_shards_build_on_a_table_with_an_escaping_key_is_one_line_and_writes_nothing(tmp_path):
    pq.write_table(images(["fine_1", "../../outside"]), tmp_path / "images.parquet")
    result = run_iipa("shards", "build", "--images", str(tmp_path / "images.parquet"), "--out", str(tmp_path / "s"))
    assert "unsafe sample key '../../outside'" in one_error_line(result)
    assert not (tmp_path / "s").exists() and not (tmp_path.parent / "outside.jpg").exists()


def test_ingest_of_an_archive_with_a_hostile_tweet_id_is_one_line(tmp_path):
    tweet = {"id": "../../x", "text": "hi #a", "author_id": "1", "created_at": "2026-01-01T00:00:00.000Z",
             "public_metrics": {"retweet_count": 1, "like_count": 1, "reply_count": 0, "quote_count": 0},
             "attachments": {"media_keys": ["3_1"]}}
    page = {"data": [tweet], "includes": {"media": [{"media_key": "3_1", "type": "photo",
                                                      "url": "https://pbs.twimg.com/media/a.jpg"}]}}
    (tmp_path / "archive.jsonl").write_text(json.dumps(page) + "\n")
    result = run_iipa("ingest", "archive", str(tmp_path / "archive.jsonl"), "--out", str(tmp_path / "images.parquet"))
    assert "unsafe sample key '../../x_0'" in one_error_line(result)
    assert not (tmp_path / "images.parquet").exists()
