"""A `shards build` killed with SIGKILL mid-way, then rerun, yields every key exactly once."""
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pyarrow as pa

from tests.conftest import REPO
from shards.schema import read_table, write_table
from shards.verify import verify_shards

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
N, SHARD = 48, 4


def build_cmd(tmp, address: str) -> list[str]:
    return [sys.executable, "-m", "cluster", "shards", "build", "--images", str(tmp / "images.parquet"),
            "--out", str(tmp / "shards"), "--shard-size", str(SHARD), "--workers", "2", "--threads", "2",
            "--size", "64", "--allow-hosts", "127.0.0.1", "--ray-address", address]


def test_sigkill_mid_build_then_resume(ray_local, http_server, photos, tmp_path):
    base, routes, hits = http_server
    names = sorted(photos)

    def slow(handler, n):  # slow enough that the build is still running when it is killed
        time.sleep(0.15)
        return 200, {}, photos[names[int(handler.path.strip("/").split(".")[0][3:]) % len(names)]]

    rows = []
    for i in range(N):
        routes[f"/img{i}.jpg"] = slow
        rows.append({"key": f"k{i:03d}", "tweet_id": str(i), "user_id": f"u{i % 5}", "created_at": T0,
                     "status": "pending", "url": f"{base}/img{i}.jpg"})
    rows.append({"key": "gone", "tweet_id": "x", "user_id": "u0", "created_at": T0, "status": "pending",
                 "url": f"{base}/gone.jpg"})
    write_table(pa.Table.from_pylist(rows), tmp_path / "images.parquet", "images")
    address = ray_local.get_runtime_context().gcs_address
    shards = tmp_path / "shards"

    proc = subprocess.Popen(build_cmd(tmp_path, address), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(shards.glob("shard-*.parquet"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.parquet")}
    total = -(-(N + 1) // SHARD)
    assert 2 <= len(finished) < total, "the kill should land mid-way"
    assert not (shards / "manifest.json").exists()

    # Ray reaps the killed driver's actors once it notices: their CPUs come back, then no stray
    # fetch of theirs can be counted as the rerun's.
    deadline = time.monotonic() + 60
    while ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the killed build's actors were never released"
        time.sleep(0.05)
    before = sum(hits.values())
    done = subprocess.run(build_cmd(tmp_path, address), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, stamp in finished.items():  # finished shards are kept as they were
        assert (shards / name).stat().st_mtime_ns == stamp
    keys = read_table(shards, "images").column("key").to_pylist()
    assert sorted(keys) == sorted(r["key"] for r in rows)  # every key, each exactly once
    assert len(list(shards.glob("shard-*.tar"))) == total and not list(shards.glob(".*tmp"))
    assert sum(hits.values()) - before <= N + 1 - SHARD * len(finished) + 2 * SHARD  # only unfinished work redone
    report = verify_shards(shards)
    assert report["ok"] and report["images"] == N, report["problems"]
