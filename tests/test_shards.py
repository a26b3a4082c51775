import hashlib
import io
import json
import os
import tarfile
from datetime import datetime, timezone

import pyarrow as pa
import pytest
import webdataset as wds
from PIL import Image

from shards import BuildConfig, build_shards
from shards.build.fetch import FetchConfig
from shards.locate import ShardIndex
from shards.build.resize import ResizeConfig
from shards.build.writer import ShardWriter
from shards.schema import read_table, write_table

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def images_table(urls: dict[str, str]) -> pa.Table:
    return pa.Table.from_pylist([
        {"key": key, "tweet_id": key, "user_id": f"u{i % 2}", "created_at": T0, "status": "pending", "url": url}
        for i, (key, url) in enumerate(urls.items())])


@pytest.fixture()
def served(http_server, photos, tmp_path):
    base, routes, hits = http_server
    for name, data in photos.items():
        routes[f"/{name}.jpg"] = (200, {"Content-Type": "image/jpeg"}, data)
    routes["/page.html"] = (200, {"Content-Type": "image/jpeg"}, b"<html>not an image</html>")
    routes["/empty.jpg"] = (200, {}, b"")
    routes["/flaky.jpg"] = lambda h, n: (500, {}, b"") if n == 1 else (200, {}, photos["coffee"])
    routes["/away.jpg"] = (302, {"Location": "http://localhost.invalid/x.jpg"}, b"")
    local = tmp_path / "local.jpg"
    local.write_bytes(photos["rocket"])
    urls = {f"ok_{n}": f"{base}/{n}.jpg" for n in photos}
    urls.update({"missing": f"{base}/nope.jpg", "html": f"{base}/page.html", "empty": f"{base}/empty.jpg",
                 "flaky": f"{base}/flaky.jpg", "away": f"{base}/away.jpg", "local": local.as_uri(),
                 "nofile": (tmp_path / "absent.jpg").as_uri()})
    write_table(images_table(urls), tmp_path / "images.parquet", "images")
    return tmp_path, hits


EXPECTED = {"ok_astronaut": "ok", "ok_coffee": "ok", "ok_chelsea": "ok", "ok_rocket": "ok", "missing": "http_404",
            "html": "not_image", "empty": "empty", "flaky": "ok", "away": "host_not_allowed", "local": "ok",
            "nofile": "not_found"}


def config(tmp_path, **kw) -> BuildConfig:
    return BuildConfig(images=tmp_path / "images.parquet", out=tmp_path / "shards", shard_size=4, workers=2,
                       fetch=FetchConfig(allow_hosts=("127.0.0.1",), allow_local=(tmp_path,), retries=2, backoff=0.01,
                                         timeout=5),
                       resize=ResizeConfig(size=64), **kw)


def summaries_read_back(shards) -> list[dict]:
    from shards.build.pool import shard_summary

    return [shard_summary(p) for p in sorted(shards.glob("shard-*.parquet"))]


def test_build_records_every_row_and_shards_read_back(ray_local, served):
    tmp_path, hits = served
    manifest = build_shards(config(tmp_path))
    rows = read_table(tmp_path / "shards", "images").to_pylist()
    assert {r["key"]: r["status"] for r in rows} == EXPECTED
    assert hits["/flaky.jpg"] == 2 and manifest["rows"] == len(EXPECTED) and manifest["ok"] == 6
    # The actors' summaries of what they wrote are what the slices say when read back.
    assert manifest["shards"] == summaries_read_back(tmp_path / "shards")
    ok = {r["key"]: r for r in rows if r["status"] == "ok"}
    for r in ok.values():
        assert min(r["width"], r["height"]) == 64 and r["orig_width"] >= 64
    # WebDataset reads the tars as written; every Parquet offset points at its member's bytes.
    tars = sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert {s["__key__"] for s in samples} == set(ok)
    index = ShardIndex(tmp_path / "shards")
    for s in samples:
        data = index.read(s["__key__"])
        assert data == s["jpg"] and hashlib.sha1(data).hexdigest() == ok[s["__key__"]]["sha1"]
        assert Image.open(io.BytesIO(data)).mode == "RGB"


def test_resume_rebuilds_only_incomplete_shards(ray_local, served):
    tmp_path, hits = served
    build_shards(config(tmp_path))
    shards = tmp_path / "shards"
    kept = shards / "shard-000000.tar"
    stamp = kept.stat().st_mtime_ns
    os.remove(shards / "shard-000001.parquet")  # as if killed before this shard completed
    before = dict(hits)
    manifest = build_shards(config(tmp_path))
    assert kept.stat().st_mtime_ns == stamp
    assert manifest["shards"] == summaries_read_back(shards)  # the kept shards read, the rebuilt one summarised
    rows = read_table(shards, "images").to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(EXPECTED)
    assert sum(hits.values()) - sum(before.values()) <= 5  # only the rebuilt shard's rows were fetched again


# What a build's actor runs: a job and its config unpickled, the shard's rows fetched and decoded,
# the shard written. The driver's modules and pyarrow.compute cost an actor 0.08 s of CPU to import.
ACTOR_RUN = """
import json, pickle, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
config, (name, rows) = pickle.loads(Path(sys.argv[1]).read_bytes())
from shards.build.fetch import HttpClient
from shards.build.worker import CpuClock, processed, write_shard
with ThreadPoolExecutor(config.threads) as pool:
    results = processed(rows.to_pylist(), pool, HttpClient(config.threads), config, CpuClock())
    print(json.dumps({"summary": write_shard(Path(config.out), name, results, clock=CpuClock()),
                      "modules": sorted(sys.modules)}))
"""
DRIVER_ONLY = ("pyarrow.compute", "pyarrow.dataset", "shards.build.build", "shards.build.pool", "shards.locate")


def test_an_actor_imports_only_what_it_runs(served):
    import pickle
    import subprocess
    import sys

    from shards.build.build import select_rows
    from tests.conftest import REPO

    tmp_path, _ = served
    build = config(tmp_path)
    build.out.mkdir()
    (tmp_path / "job.pkl").write_bytes(pickle.dumps((build, ("shard-000000", select_rows(build)))))
    done = subprocess.run([sys.executable, "-c", ACTOR_RUN, str(tmp_path / "job.pkl")], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["summary"]["rows"] == len(EXPECTED) and result["summary"]["ok"] == 6
    assert {r["key"]: r["status"] for r in read_table(build.out, "images").to_pylist()} == EXPECTED
    assert [m for m in DRIVER_ONLY if m in result["modules"]] == []


def tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """What the standard library writes for these members (USTAR, read-only, mtime 0)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_shard_writer_writes_the_bytes_tarfile_writes(photos, tmp_path):
    samples = [(name, data, {"key": name, "likes": i}) for i, (name, data) in enumerate(photos.items())]
    samples.append(("k" * 95, b"", {}))  # the longest key, an empty body
    members = [m for key, jpeg, meta in samples for m in ((f"{key}.jpg", jpeg), (f"{key}.json", json.dumps(meta).encode()))]
    writer = ShardWriter(tmp_path, "s-000000")
    offsets = [writer.add(key, jpeg, meta) for key, jpeg, meta in samples]
    writer.close()
    data = writer.tmp.read_bytes()
    assert data == tarfile_bytes(members)
    assert [data[o:o + n] for o, n in offsets] == [jpeg for _, jpeg, _ in samples]
    # A retry starts from the first sample's bytes and appends the rest: the same archive again.
    writer.tmp.rename(tmp_path / "s-000000.tar")
    again = ShardWriter(tmp_path, "s-000000", keep=offsets[1][0] - tarfile.BLOCKSIZE)
    assert [again.add(key, jpeg, meta) for key, jpeg, meta in samples[1:]] == offsets[1:]
    again.close()
    assert again.tmp.read_bytes() == data
