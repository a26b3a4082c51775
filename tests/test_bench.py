"""`iipa bench` runs and reports a same-run ratio (a smoke run: --quick measures nothing)."""
import json

from tests.conftest import run_iipa


def test_bench_loader_and_train_report_ratios(tmp_path):
    out = tmp_path / "bench.json"
    result = run_iipa("bench", "loader", "train", "--quick", "--workdir", str(tmp_path / "w"), "--json", str(out),
                      timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["stage"] for r in results] == ["loader", "train"]
    for r in results:
        assert r["value"] > 0 and r["baseline_value"] > 0 and r["ratio"] > 0
    assert 0 <= results[1]["data_wait_share"] < 1
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_bench_stage_is_one_line():
    result = run_iipa("bench", "warp")
    assert result.returncode == 2 and "unknown stage" in result.stderr and len(result.stderr.splitlines()) == 1


def test_bench_scale_times_cold_and_warm_start_against_pyarrow(tmp_path):
    workdir = tmp_path / "w"
    result = run_iipa("bench", "scale", "--quick", "--workdir", str(workdir), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert r["images"] == 20_000 and r["pairs"] == 10_000
    for run in ("cold", "warm", "empty_run"):
        assert 0 < r[run]["startup_s"] < r[run]["wall_s"] and r[run]["peak_rss_mb"] > 100
    assert r["baseline_value"] > 0 and r["host_images_per_s"] > 0 and r["naive_read_images_per_s"] > 0
    # The cold run wrote the pair cache the warm run mapped.
    assert list((workdir / "scale" / "quick").glob("scale-20000-*/pairs/.train.resolved"))
