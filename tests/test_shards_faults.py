"""`shards build` against a 127.0.0.1 server of real photographs and faults, then every other
shards command (verify, stats, index, rebuild) on what it built."""
import gc
import hashlib
import http.server
import io
import json
import os
import shutil
import threading
import time
import struct
import zlib
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest
import webdataset as wds
from PIL import Image

from tests.conftest import Routes, jpeg_bytes, photo_arrays, run_iipa
from shards import BuildConfig, build_shards
from shards.dali_index import index_shards
from shards.build.fetch import FetchConfig
from shards.locate import ShardIndex, open_webdataset
from shards.rebuild import RebuildConfig, group_sizes, rebuild_shards
from shards.build.resize import ResizeConfig
from shards.schema import read_table, write_table
from shards.verify import shard_stats, verify_shards

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
MAX_BYTES = 2_000_000


def png_bomb(side: int) -> bytes:
    """A real 1-bit PNG of side×side black pixels: a few hundred KB that decode to `side`² pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    body = zlib.compressobj(9)
    idat = b"".join(body.compress(row) for _ in range(side)) + body.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def encoded(array: np.ndarray, fmt: str, mode: str | None = None, **save) -> bytes:
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def special_images() -> dict[str, bytes]:
    """Real photographs in the awkward forms X serves now and then."""
    arr = photo_arrays()
    rgba = np.dstack([arr["astronaut"], np.full(arr["astronaut"].shape[:2], 255, np.uint8)])
    rgba[:, :256, 3] = 0  # the left half fully transparent: must come out white
    red, blue = np.zeros((200, 300, 3), np.uint8), np.zeros((200, 300, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    gif = io.BytesIO()
    Image.fromarray(red).save(gif, format="GIF", save_all=True, append_images=[Image.fromarray(blue)], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise: a portrait
    return {
        "cmyk": encoded(arr["coffee"], "JPEG", "CMYK", quality=90),
        "grey": encoded(arr["chelsea"], "JPEG", "L", quality=90),
        "alpha": encoded(rgba, "PNG"),
        "gif": gif.getvalue(),
        "rotated": encoded(arr["coffee"], "JPEG", exif=exif.tobytes(), quality=90),
        "tiny": encoded(arr["rocket"][:20, :20], "JPEG"),
    }


EXPECTED = {
    "ok_astronaut": "ok", "ok_coffee": "ok", "ok_chelsea": "ok", "ok_rocket": "ok", "local": "ok",
    "cmyk": "ok", "grey": "ok", "alpha": "ok", "gif": "ok", "rotated": "ok",
    "flaky": "ok", "limited": "ok",
    "missing": "http_404", "stall": "timeout", "truncated": "truncated", "cut_jpeg": "decode_error",
    "html": "not_image", "empty": "empty", "huge": "too_large", "bomb": "too_large", "bomb_pixels": "too_large",
    "away": "host_not_allowed", "tiny": "too_small", "garbage": "decode_error", "nofile": "not_found",
}


def routes_for(photos: dict[str, bytes], base: str, times: dict) -> dict:
    routes = {f"/{name}.jpg": (200, {"Content-Type": "image/jpeg"}, data) for name, data in photos.items()}
    routes.update({f"/{name}.img": (200, {"Content-Type": "image/jpeg"}, data) for name, data in special_images().items()})

    def limited(handler, n):
        times.setdefault("limited", []).append(time.monotonic())
        return (429, {"Retry-After": "1"}, b"slow down") if n == 1 else (200, {}, photos["chelsea"])

    def stall(handler, n):
        time.sleep(1.5)  # past the 0.5 s timeout
        return 200, {}, photos["rocket"]

    cut = photos["astronaut"][: len(photos["astronaut"]) // 3]
    routes.update({
        "/limited.jpg": limited, "/stall.jpg": stall,
        "/flaky.jpg": lambda h, n: (500, {}, b"") if n == 1 else (200, {}, photos["coffee"]),
        "/truncated.jpg": (200, {"Content-Length": str(len(photos["coffee"]))}, photos["coffee"][:5000]),
        "/cut.jpg": (200, {}, cut),
        "/page.html": (200, {"Content-Type": "image/jpeg"}, b"<html>not an image</html>"),
        "/empty.jpg": (200, {}, b""),
        "/huge.jpg": (200, {}, b"\xff\xd8\xff" + b"\0" * (MAX_BYTES + 10)),
        "/bomb.png": (200, {}, png_bomb(30_000)),  # 900 M pixels: refused by Pillow itself
        "/bomb9k.png": (200, {}, png_bomb(9_000)),  # 81 M pixels: refused by our max_pixels
        "/away.jpg": (302, {"Location": "http://localhost.invalid/x.jpg"}, b""),
        "/garbage.jpg": (200, {}, b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40),
    })
    return routes


@pytest.fixture(scope="module")
def server(photos):
    """A module-wide threaded server on 127.0.0.1 (the shared fixture is per test)."""
    routes, hits, times = {}, {}, {}
    handler = type("Handler", (Routes,), {"routes": routes, "hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    routes.update(routes_for(photos, base, times))
    yield base, hits, times
    httpd.shutdown()
    httpd.server_close()


def fault_urls(base: str, tmp) -> dict[str, str]:
    local = tmp / "local.jpg"
    local.write_bytes(jpeg_bytes(photo_arrays()["rocket"]))
    urls = {f"ok_{n}": f"{base}/{n}.jpg" for n in ("astronaut", "coffee", "chelsea", "rocket")}
    urls.update({n: f"{base}/{n}.img" for n in ("cmyk", "grey", "alpha", "gif", "rotated", "tiny")})
    urls.update({"flaky": f"{base}/flaky.jpg", "limited": f"{base}/limited.jpg", "missing": f"{base}/nope.jpg",
                 "stall": f"{base}/stall.jpg", "truncated": f"{base}/truncated.jpg", "cut_jpeg": f"{base}/cut.jpg",
                 "html": f"{base}/page.html", "empty": f"{base}/empty.jpg", "huge": f"{base}/huge.jpg",
                 "bomb": f"{base}/bomb.png", "bomb_pixels": f"{base}/bomb9k.png", "away": f"{base}/away.jpg",
                 "garbage": f"{base}/garbage.jpg", "local": local.as_uri(), "nofile": (tmp / "absent.jpg").as_uri()})
    return urls


def build_config(tmp, **kw) -> BuildConfig:
    return BuildConfig(images=tmp / "images.parquet", out=tmp / "shards", shard_size=6, workers=2, threads=4,
                       fetch=FetchConfig(allow_hosts=("127.0.0.1",), allow_local=(tmp,), retries=2, backoff=0.01, timeout=0.5,
                                         max_bytes=MAX_BYTES),
                       resize=ResizeConfig(size=64), **kw)


@pytest.fixture(scope="module")
def built(ray_local, server, tmp_path_factory):
    base, hits, times = server
    tmp = tmp_path_factory.mktemp("faults")
    rows = [{"key": k, "tweet_id": k, "user_id": f"u{i % 3}", "created_at": T0, "status": "pending", "url": u}
            for i, (k, u) in enumerate(fault_urls(base, tmp).items())]
    write_table(pa.Table.from_pylist(rows), tmp / "images.parquet", "images")
    manifest = build_shards(build_config(tmp))
    return tmp, manifest, hits, times


def test_every_row_ends_with_the_right_status(built):
    tmp, manifest, hits, times = built
    rows = {r["key"]: r for r in read_table(tmp / "shards", "images").to_pylist()}
    assert {k: r["status"] for k, r in rows.items()} == EXPECTED
    assert manifest["rows"] == len(EXPECTED) and manifest["ok"] == sum(s == "ok" for s in EXPECTED.values())
    assert all(r["error"] for r in rows.values() if r["status"] != "ok")
    assert hits["/flaky.jpg"] == 2 and hits["/stall.jpg"] == 3 and hits["/away.jpg"] == 1
    assert times["limited"][1] - times["limited"][0] >= 0.9  # Retry-After: 1 was honoured
    assert hits["/nope.jpg"] == 1  # a 404 is not retried


def test_stored_images_are_upright_rgb_at_the_asked_size(built):
    tmp, *_ = built
    index = ShardIndex(tmp / "shards")
    rows = {r["key"]: r for r in read_table(tmp / "shards", "images").to_pylist() if r["status"] == "ok"}
    decoded = {k: Image.open(io.BytesIO(index.read(k))) for k in rows}
    for key, img in decoded.items():
        assert img.format == "JPEG" and img.mode == "RGB" and min(img.size) == 64, key
        assert img.size == (rows[key]["width"], rows[key]["height"])
        assert "progressive" not in img.info  # baseline JPEG
    assert rows["rotated"]["height"] > rows["rotated"]["width"]  # EXIF orientation applied
    assert (rows["rotated"]["orig_width"], rows["rotated"]["orig_height"]) == (400, 600)
    alpha = np.asarray(decoded["alpha"])
    assert alpha[:, : alpha.shape[1] // 2 - 4].min() >= 245  # transparent half over white
    gif = np.asarray(decoded["gif"]).reshape(-1, 3).mean(0)
    assert gif[0] > 200 and gif[2] < 50  # the first (red) frame, not the blue one
    grey = np.asarray(decoded["grey"]).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 3


def test_shards_read_back_with_webdataset_and_offsets_hold(built):
    tmp, *_ = built
    ok = {r["key"]: r for r in read_table(tmp / "shards", "images").to_pylist() if r["status"] == "ok"}
    tars = sorted(str(p) for p in (tmp / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert sorted(s["__key__"] for s in samples) == sorted(ok)
    index = ShardIndex(tmp / "shards")
    for s in samples:
        assert index.read(s["__key__"]) == s["jpg"]
        assert hashlib.sha1(s["jpg"]).hexdigest() == ok[s["__key__"]]["sha1"]
        assert json.loads(s["json"])["key"] == s["__key__"]
    assert not list((tmp / "shards").glob(".*tmp"))
    # The helper for WebDataset users: every ok sample once, with its labels as the table has them.
    served = list(open_webdataset(tmp / "shards"))
    assert sorted(key for key, _, _ in served) == sorted(ok)
    for key, jpeg, meta in served:
        assert hashlib.sha1(jpeg).hexdigest() == ok[key]["sha1"]
        assert (meta["user_id"], meta["retweets"], meta["likes"]) == \
               (ok[key]["user_id"], ok[key]["retweets"], ok[key]["likes"])


def test_verify_passes_then_names_a_damaged_shard(built, tmp_path):
    tmp, *_ = built
    report = verify_shards(tmp / "shards")
    assert report["ok"] and report["images"] == sum(s == "ok" for s in EXPECTED.values()), report["problems"]
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp / "shards", damaged)
    row = next(r for r in read_table(damaged, "images").to_pylist() if r["status"] == "ok")
    with open(damaged / row["shard"], "r+b") as f:  # flip bytes in the middle of one image
        f.seek(row["offset"] + row["size"] // 2)
        f.write(b"\x00" * 64)
    result = run_iipa("shards", "verify", str(damaged))
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["damaged"] == [row["shard"]]
    assert f"{row['key']}.jpg: sha1 differs" in result.stderr
    good = run_iipa("shards", "verify", str(tmp / "shards"))
    assert good.returncode == 0 and json.loads(good.stdout)["ok"]


def test_stats_count_statuses_users_and_bytes(built):
    tmp, manifest, *_ = built
    stats = shard_stats(tmp / "shards")
    assert stats["status"]["ok"] == manifest["ok"] and stats["status"]["too_large"] == 3
    assert stats["users"] == 3 and stats["rows"] == len(EXPECTED)
    assert stats["tar_bytes"] == manifest["bytes"] and stats["height"]["min"] >= 64


def test_dali_index_matches_wds2idx_and_dali_reads_it(built, tmp_path):
    from wds2idx import IndexCreator

    tmp, *_ = built
    written = index_shards(tmp / "shards")
    tars = sorted((tmp / "shards").glob("*.tar"))
    assert [p.with_suffix(".idx") for p in tars] == written
    for tar in tars:
        if "ok" not in read_table(tar.with_suffix(".parquet"), "images").column("status").to_pylist():
            continue  # DALI's tool refuses an empty tar
        reference = tmp_path / f"{tar.stem}.idx"
        with IndexCreator(str(tar), str(reference), verbose=False) as creator:
            creator.create_index()
        assert tar.with_suffix(".idx").read_text() == reference.read_text()
    keys = dali_keys([str(t) for t in tars], [str(t.with_suffix(".idx")) for t in tars])
    ok = {r["key"] for r in read_table(tmp / "shards", "images").to_pylist() if r["status"] == "ok"}
    assert sorted(keys) == sorted(ok)


def dali_keys(tars: list[str], indexes: list[str]) -> list[str]:
    """Every sample's key as DALI's own webdataset reader (CPU) sees it, through our index files."""
    from nvidia.dali import fn, pipeline_def

    nonempty = [(t, i) for t, i in zip(tars, indexes) if open(i).readline().split()[1] != "0"]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        img, meta = fn.readers.webdataset(paths=[t for t, _ in nonempty], index_paths=[i for _, i in nonempty],
                                          ext=["jpg", "json"], name="reader")
        return fn.decoders.image(img, device="cpu"), meta

    p = pipe()
    p.build()
    n = p.epoch_size("reader")
    keys = []
    for _ in range(n):
        images, meta = p.run()
        assert images.at(0).shape[2] == 3
        keys.append(json.loads(bytes(np.asarray(meta.at(0))))["key"])
    return keys


def test_group_sizes_keep_users_whole():
    users = ["a"] * 3 + ["b"] * 2 + ["c"] * 7 + ["d"]
    sizes = group_sizes(users, "user", 5)
    assert sum(sizes) == len(users) and max(sizes) <= 5
    bounds = np.cumsum([0] + sizes)
    for user in "abd":  # users that fit in a shard never straddle two
        first, last = users.index(user), len(users) - 1 - users[::-1].index(user)
        assert np.searchsorted(bounds, first, "right") == np.searchsorted(bounds, last, "right")
    assert group_sizes(users, "none", 5) == [5, 5, 3]


def test_rebuild_by_user_and_smaller_size(built, tmp_path):
    tmp, *_ = built
    new = tmp_path / "by_user"
    manifest = rebuild_shards(RebuildConfig(shards=tmp / "shards", out=new, by="user", size=32, shard_size=10))
    old = {r["key"]: r for r in read_table(tmp / "shards", "images").to_pylist()}
    rows = {r["key"]: r for r in read_table(new, "images").to_pylist()}
    assert set(rows) == set(old) and manifest["rows"] == len(old)
    assert {k: r["status"] for k, r in rows.items()} == {k: r["status"] for k, r in old.items()}
    for user in {r["user_id"] for r in rows.values()}:  # 3 users of ≤ 9 rows, shards of 10
        assert len({r["shard"] for r in rows.values() if r["user_id"] == user and r["shard"]}) == 1
    for key, r in rows.items():
        if r["status"] == "ok":
            assert min(r["width"], r["height"]) == 32 and r["orig_width"] == old[key]["orig_width"]
    assert verify_shards(new)["ok"]
    again = run_iipa("shards", "rebuild", str(tmp / "shards"), "--out", str(tmp / "shards" / "inside"))
    assert again.returncode == 2 and "must not be" in again.stderr


def test_build_refuses_to_resume_into_a_different_plan(built, tmp_path):
    tmp, *_ = built
    copy = tmp_path / "copy"
    shutil.copytree(tmp / "shards", copy)
    result = run_iipa("shards", "build", "--images", str(tmp / "images.parquet"), "--out", str(copy),
                      "--shard-size", "7", "--allow-hosts", "127.0.0.1")
    assert result.returncode == 2 and "different input or settings" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_actor_that_dies_is_replaced_and_its_rows_recorded(ray_local, tmp_path):
    from shards.build.pool import fail_shard, run_pool

    class Crashy:  # defined here so that Ray ships it by value
        def __init__(self, marker: str):
            self.marker = marker

        def build(self, job):
            name, rows = job
            if name == "shard-000001":
                with open(self.marker, "a") as f:
                    f.write("x")
                os._exit(1)  # as a segfault in a native decoder would
            return {"name": name, "rows": rows.num_rows, "ok": rows.num_rows}

    rows = [{"key": f"k{i}", "tweet_id": str(i), "user_id": "u", "created_at": T0, "status": "pending",
             "url": "http://127.0.0.1:9/x.jpg"} for i in range(9)]
    table = pa.Table.from_pylist(rows)
    jobs = [(f"shard-{i:06d}", table.slice(3 * i, 3)) for i in range(3)]
    marker = tmp_path / "attempts"
    gc.disable()  # the pool itself, not a collection that may or may not run, must free its actors
    try:
        results = run_pool(Crashy, (str(marker),), "build", jobs, workers=2, cpus=0.5, retries=1,
                           on_dead=lambda job, err: fail_shard(tmp_path, job, "worker_died", err))
        deadline = time.monotonic() + 20
        while ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"]:
            assert time.monotonic() < deadline, "the pool's actors kept their CPUs after it returned"
            time.sleep(0.05)
    finally:
        gc.enable()
    assert sorted(r["name"] for r in results) == [j[0] for j in jobs]
    assert marker.read_text() == "xx"  # tried on a fresh actor once more, then recorded
    dead = read_table(tmp_path / "shard-000001.parquet", "images").to_pylist()
    assert [r["key"] for r in dead] == ["k3", "k4", "k5"]
    assert {r["status"] for r in dead} == {"worker_died"} and all(r["error"] for r in dead)
