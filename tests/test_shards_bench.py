"""The ingest benchmark's code runs end to end on tiny inputs (a smoke run, not a measurement)."""
import http.client
import time

import numpy as np
from PIL import Image

from cluster.bench import BenchConfig, write_summary
from cluster.benches.ingest import find_img2dataset, make_photos, run, serve, spread_sample


def test_generated_photos_have_the_asked_sides(tmp_path):
    paths = make_photos(tmp_path / "photos", 6, 300, 420)
    assert len({p.read_bytes() for p in paths}) == 6
    for path in paths:
        img = Image.open(path)
        assert img.format == "JPEG" and img.mode == "RGB" and all(300 <= s <= 420 for s in img.size)
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert [p.stat().st_mtime_ns for p in make_photos(tmp_path / "photos", 6, 300, 420)] == stamps  # made once


def test_the_bound_is_measured_on_photos_spread_over_every_size(tmp_path):
    paths = make_photos(tmp_path / "photos", 40, 200, 500)
    sizes = sorted(p.stat().st_size for p in paths)
    picked = spread_sample(paths, 8)
    assert len(set(picked)) == 8
    weights = [paths[i].stat().st_size for i in picked]
    # From the lightest fifth to the heaviest, and as heavy on average as the whole set.
    assert min(weights) <= sizes[8] and max(weights) >= sizes[-8]
    assert abs(sum(weights) / 8 / (sum(sizes) / 40) - 1) < 0.02


def test_ingest_bench_quick_reports_a_ratio(ray_local, tmp_path):
    result = run(BenchConfig(tmp_path, size="quick"))
    for field in ("stage", "unit", "value", "baseline", "baseline_value", "ratio"):
        assert field in result
    assert result["stage"] == "ingest" and result["images"] == 48
    assert result["value"] > 0 and result["baseline_value"] > 0
    assert result["ratio"] > 0 and 0 < result["share_of_decoder_speed"] and 0 < result["share_of_decoder_bound"]
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 1
    # Every step costs time, and the bound of all of them is below the decoder's alone.
    # (The server's CPU is read in clock ticks, 10 ms: at this size it may round to 0.)
    assert all(result[k] > 0 for k in ("fetch_ms", "decode_ms", "resample_ms", "encode_ms")) and result["server_ms"] >= 0
    assert result["cpu_bound_img_s"] < result["decoder_bound_img_s"]
    # The actors timed their own steps, and the rest of the build's core time is accounted for.
    assert set(result["build_core_ms"]) == {"fetch", "resize", "write", "other", "server", "idle", "rest"}
    assert all(result["build_core_ms"][k] > 0 for k in ("fetch", "resize", "write"))
    assert [r["img_s"] for r in result["rounds"]] == [result["value"]]
    assert result["working_img_s"] > result["value"] and result["outside_working_s"] > 0
    assert result["working_share_of_cpu_bound"] > result["share_of_cpu_bound"]
    # The actors' loop ran without Ray on every photo of its sample, in every round.
    assert result["pipeline_images"] == 48 and len(result["pipeline_rounds"]) == 1
    assert result["pipeline_share_of_bound"] == result["pipeline_rounds"][0] > 0
    # img2dataset (installed by `make test`) ran on the same URLs; its start-up is left out of its rate.
    assert find_img2dataset(), "make img2dataset"
    assert result["img2dataset_source"].startswith("measured")
    assert result["steady_vs_img2dataset"] > 0  # measured between two measures of the bound
    assert 0 < result["img2dataset_wall_img_s"] < result["img2dataset_img_s"] and result["img2dataset_startup_s"] > 0
    assert len(list((tmp_path / "img2dataset" / "shards").glob("*.tar"))) == 1
    write_summary([result], tmp_path / "bench.json")
    assert Image.open(tmp_path / "bench-ingest.png").size[0] > 0


def test_static_server_keeps_alive_and_serves_only_its_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 1000)
    (tmp_path / "secret.txt").write_text("not served")
    (tmp_path / "photos" / "photos.json").write_text("{}")  # serve() waits for this file
    server, base = serve(tmp_path / "photos")
    try:
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=5)
        sockets = []
        for _ in range(2):
            conn.request("GET", "/a.jpg")
            response = conn.getresponse()
            assert (response.status, response.getheader("Content-Type")) == (200, "image/jpeg")
            assert response.read() == (tmp_path / "photos" / "a.jpg").read_bytes()
            sockets.append(conn.sock)
        assert sockets[0] is sockets[1] is not None  # both requests went over one kept-alive connection
        for target in ("/missing.jpg", "/../secret.txt", "/%2e%2e/secret.txt"):
            conn.request("GET", target)
            response = conn.getresponse()
            assert response.status == 404 and response.read() == b"not found\n"
    finally:
        server.kill()
        server.wait()


def test_static_server_answers_many_connections_at_once(tmp_path):
    """One thread serves every connection: a client that does not read its large body yet fills
    its socket, and the server answers the others meanwhile, then finishes each body in order."""
    body = np.random.default_rng(0).integers(0, 256, 8_000_000, dtype=np.uint8).tobytes()  # > the kernel's buffers
    (tmp_path / "big.jpg").write_bytes(body)
    (tmp_path / "small.jpg").write_bytes(body[:1000])
    (tmp_path / "photos.json").write_text("{}")
    server, base = serve(tmp_path)
    host = base.removeprefix("http://")
    try:
        stalled = [http.client.HTTPConnection(host, timeout=10) for _ in range(4)]
        for conn in stalled:
            conn.request("GET", "/big.jpg")  # sent, not read
        for _ in range(3):
            other = http.client.HTTPConnection(host, timeout=10)
            other.request("GET", "/small.jpg")
            assert other.getresponse().read() == body[:1000]
            other.close()
        for conn in stalled:
            assert conn.getresponse().read() == body
            conn.request("GET", "/small.jpg")  # the connection is still good for the next request
            assert conn.getresponse().read() == body[:1000]
            conn.close()
    finally:
        server.kill()
        server.wait()


def test_static_server_answers_after_its_latency(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff" + bytes(100))
    (tmp_path / "photos.json").write_text("{}")
    server, base = serve(tmp_path, latency=0.3)
    try:
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=5)
        for _ in range(2):  # every request waits, not only a connection's first
            start = time.monotonic()
            conn.request("GET", "/a.jpg")
            assert conn.getresponse().read() == (tmp_path / "a.jpg").read_bytes()
            assert time.monotonic() - start >= 0.3
    finally:
        server.kill()
        server.wait()


def test_static_server_serves_x_size_variants_by_name(tmp_path):
    from cluster.benches.static_server import resolve

    root = (tmp_path / "www").resolve()
    root.mkdir()
    for name in ("a.jpg", "a.small.jpg"):
        (root / name).write_bytes(b"x")
    (tmp_path / "s.small.jpg").write_bytes(b"secret")
    assert resolve(root, b"/a?format=jpg&name=small") == root / "a.small.jpg"
    assert resolve(root, b"/a?format=jpg&name=orig") == root / "a.jpg"
    assert resolve(root, b"/a.jpg") == root / "a.jpg"
    assert resolve(root, b"/a?format=jpg&name=large") is None  # not made: a 404
    assert resolve(root, b"/../s?format=jpg&name=small") is None  # nothing outside its folder


def test_x_like_bench_fetches_the_small_variant_and_fewer_bytes(ray_local, tmp_path):
    from cluster.benches.ingest_x import run as run_x
    from shards.schema import read_table

    result = run_x(BenchConfig(tmp_path, size="quick"))
    # Photos of 800-1600 px stored at 256: small (fits 680) always suffices, medium never is needed.
    assert result["auto_variants"] == {"small": result["images"]}
    assert set(read_table(tmp_path / "shards-x-medium", "images").column("variant").to_pylist()) == {"medium"}
    assert result["auto_bytes_per_image"] < 0.7 * result["medium_bytes_per_image"] and result["bytes_saved"] > 0.3
    assert result["value"] > 0 and result["medium_img_s"] > 0 and result["baseline_value"] > 0
    # Over its working span the build is faster than over the whole run (the pool's start-up left out).
    assert result["working_img_s"] > result["value"] and result["working_ratio"] > result["ratio"]
    assert [r["img_s"] for r in result["rounds"]] == [result["value"]]
    # The CPU bound is of the small variants the build fetched; one shard keeps one of the two
    # cores busy, so the build stays under the bound even over its working span.
    assert 0 < result["share_of_cpu_bound"] < result["working_share_of_cpu_bound"] < 1
    assert result["bound_vs_img2dataset"] > 0 and result["steady_ratio"] > 0
    # Drift-corrected over the working span too: above the steady ratio as the working ratio is above the plain one.
    assert result["steady_working_ratio"] > result["steady_ratio"]
    assert all(result[k] > 0 for k in ("fetch_ms", "decode_ms", "resample_ms", "encode_ms"))
    assert set(result["build_core_ms"]) == {"fetch", "resize", "write", "other", "server", "idle", "rest"}
    assert result["build_core_ms"]["resize"] > 0 and result["overhead_ms"] > 0
    # The same build against the host 30 ms away, with the default --threads and with 8.
    for name in ("shards-x-far", "shards-x-far-few-threads"):
        far = read_table(tmp_path / name, "images")
        assert set(far.column("status").to_pylist()) == {"ok"} and set(far.column("variant").to_pylist()) == {"small"}
    assert result["far_img_s"] > 0 and result["far_few_threads_img_s"] > 0
    write_summary([result], tmp_path / "bench.json")
    assert Image.open(tmp_path / "bench-ingest-x.png").size[0] > 0
