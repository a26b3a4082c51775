"""`shards build --retry-failed`: rows of finished shards that failed for a reason that may pass
are fetched again, their shards written anew with every other sample where it was; a kill during
the retry leaves every slice true to its tar, and a rerun finishes the work."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from shards import BuildConfig, build_shards
from shards.console import UserError
from shards.dali_index import index_shards, index_text, tar_members
from shards.build.fetch import FetchConfig
from shards.build.resize import ResizeConfig
from shards.build.retry import status_patterns, to_retry
from shards.schema import read_table, write_table
from shards.verify import verify_shard, verify_shards
from tests.conftest import REPO

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
N, SHARD = 24, 5


def flaky_images(tmp: Path, base: str, routes: dict, photos: dict, fail_first: set[int], always: dict[int, int]):
    """N pending rows; image i answers 503 to its first request when in `fail_first`, always
    `always[i]` when listed, else a real photograph."""
    names = sorted(photos)

    def route(i):
        def answer(handler, hit):
            if i in always:
                return always[i], {}, b"no"
            if i in fail_first and hit == 1:
                return 503, {}, b"busy"
            return 200, {}, photos[names[i % len(names)]]
        return answer

    rows = []
    for i in range(N):
        routes[f"/img{i}.jpg"] = route(i)
        rows.append({"key": f"k{i:03d}", "tweet_id": str(i), "user_id": f"u{i % 4}", "created_at": T0,
                     "status": "pending", "url": f"{base}/img{i}.jpg"})
    write_table(pa.Table.from_pylist(rows), tmp / "images.parquet", "images")


def config(tmp: Path, **extra) -> BuildConfig:
    return BuildConfig(images=tmp / "images.parquet", out=tmp / "shards", shard_size=SHARD, workers=2, threads=2,
                       fetch=FetchConfig(allow_hosts=("127.0.0.1",), retries=0), resize=ResizeConfig(size=48), **extra)


def by_key(shards: Path) -> dict[str, dict]:
    return {r["key"]: r for r in read_table(shards, "images").to_pylist()}


def test_statuses_are_patterns_and_ok_is_never_retried():
    patterns = status_patterns(("timeout", "http_5xx"))
    status = pa.chunked_array([["ok", "http_503", "http_500", "http_404", "timeout", "http_5xx", None]])
    assert list(to_retry(status, patterns)) == [False, True, True, False, True, True, False]
    with pytest.raises(UserError):
        status_patterns(())


def test_retry_recovers_transient_failures_and_keeps_every_other_sample(ray_local, http_server, photos, tmp_path):
    base, routes, hits = http_server
    flaky = {1, 7, 8, 20}
    flaky_images(tmp_path, base, routes, photos, flaky, always={3: 404, 12: 500})
    build_shards(config(tmp_path))
    shards = tmp_path / "shards"
    before = by_key(shards)
    assert {k for k, r in before.items() if r["status"] == "http_503"} == {f"k{i:03d}" for i in flaky}
    tars = {p.name: p.read_bytes() for p in shards.glob("*.tar")}
    index_shards(shards)  # DALI indexes made before the retry must follow it

    retryable = {f"k{i:03d}" for i in flaky | {12}}
    with_retries = [p for p in shards.glob("*.parquet") if retryable & set(read_table(p, "images").column("key").to_pylist())]

    result = build_shards(config(tmp_path, retry_failed=True))
    after = by_key(shards)
    # k012 (a 500) is retried and still fails; k003 (a 404) is not retried.
    assert result["retry"] == {"shards": len(with_retries), "rows": 5, "recovered": 4}
    # Only the retryable rows are fetched again: not a 404, not the images already there.
    assert all(hits[f"/img{i}.jpg"] == (2 if i in flaky | {12} else 1) for i in range(N))
    assert after["k003"]["status"] == "http_404" and after["k012"]["status"] == "http_500"
    for key, row in after.items():
        if before[key]["status"] == "ok":  # the samples that were there stay byte for byte where they were
            assert (row["shard"], row["offset"], row["size"], row["sha1"]) == \
                   (before[key]["shard"], before[key]["offset"], before[key]["size"], before[key]["sha1"])
            assert tars[row["shard"]][row["offset"]:row["offset"] + row["size"]] == \
                   (shards / row["shard"]).read_bytes()[row["offset"]:row["offset"] + row["size"]]
        elif key in {f"k{i:03d}" for i in flaky}:
            data = (shards / row["shard"]).read_bytes()[row["offset"]:row["offset"] + row["size"]]
            assert row["status"] == "ok" and hashlib.sha1(data).hexdigest() == row["sha1"]
    report = verify_shards(shards)
    assert report["ok"] and report["images"] == N - 2, report["problems"]
    for tar in shards.glob("*.tar"):
        assert tar.with_suffix(".idx").read_text() == index_text(tar_members(tar))
    assert result["ok"] == N - 2 and len(after) == N  # every key once, the manifest counts them


def build_cmd(tmp: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cluster", "shards", "build", "--images", str(tmp / "images.parquet"),
            "--out", str(tmp / "shards"), "--shard-size", str(SHARD), "--workers", "1", "--threads", "1",
            "--size", "48", "--allow-hosts", "127.0.0.1", "--fetch-retries", "0", "--ray-address", address, *extra]


def test_a_kill_during_a_retry_leaves_every_slice_true_and_a_rerun_finishes(ray_local, http_server, photos, tmp_path):
    base, routes, hits = http_server
    flaky = set(range(0, N, 2))  # every shard has rows to retry
    flaky_images(tmp_path, base, routes, photos, flaky, always={})
    address = ray_local.get_runtime_context().gcs_address
    assert subprocess.run(build_cmd(tmp_path, address), cwd=REPO, capture_output=True, timeout=300).returncode == 0
    shards = tmp_path / "shards"
    names = sorted(routes)

    def slow_second_try(path):
        served = routes[path]

        def answer(handler, hit):
            if hit >= 2:
                time.sleep(0.4)  # the retry is slow: the kill lands while shards are being retried
            return served(handler, hit)
        return answer

    for path in names:
        routes[path] = slow_second_try(path)
    proc = subprocess.Popen(build_cmd(tmp_path, address, "--retry-failed"), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while sum(hits.get(p, 0) >= 2 for p in names) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for slice_path in sorted(shards.glob("shard-*.parquet")):
        assert verify_shard(slice_path)["problems"] == [], slice_path.name
    assert sorted(by_key(shards)) == [f"k{i:03d}" for i in range(N)]
    assert any(r["status"] != "ok" for r in by_key(shards).values()), "the kill should land before the retry ends"

    deadline = time.monotonic() + 60  # the killed driver's actors are reaped before the rerun counts
    while ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = subprocess.run(build_cmd(tmp_path, address, "--retry-failed"), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = verify_shards(shards)
    assert report["ok"] and report["images"] == N, report["problems"]
    assert all(r["status"] == "ok" for r in by_key(shards).values())


def test_statuses_without_any_is_one_line(tmp_path):
    write_table(pa.Table.from_pylist([{"key": "a", "tweet_id": "1", "user_id": "u", "created_at": T0,
                                       "status": "pending", "url": "http://127.0.0.1:9/a.jpg"}]),
                tmp_path / "images.parquet", "images")
    done = subprocess.run([sys.executable, "-m", "cluster", "shards", "build", "--images", str(tmp_path / "images.parquet"),
                           "--out", str(tmp_path / "s"), "--retry-failed", "--statuses", ","],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "--statuses" in done.stderr
