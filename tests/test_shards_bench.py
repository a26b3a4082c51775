"""The ingest benchmark's code runs end to end on tiny inputs (a smoke run, not a measurement)."""
import pytest
from PIL import Image

from cluster.bench import BenchConfig
from cluster.benches.ingest import make_photos, run


def test_generated_photos_have_the_asked_sides(tmp_path):
    paths = make_photos(tmp_path / "photos", 6, 300, 420)
    assert len({p.read_bytes() for p in paths}) == 6
    for path in paths:
        img = Image.open(path)
        assert img.format == "JPEG" and img.mode == "RGB" and all(300 <= s <= 420 for s in img.size)
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert [p.stat().st_mtime_ns for p in make_photos(tmp_path / "photos", 6, 300, 420)] == stamps  # made once


def test_ingest_bench_quick_reports_a_ratio(ray_local, tmp_path):
    result = run(BenchConfig(tmp_path, size="quick"))
    for field in ("stage", "unit", "value", "baseline", "baseline_value", "ratio"):
        assert field in result
    assert result["stage"] == "ingest" and result["images"] == 48
    assert result["value"] > 0 and result["baseline_value"] > 0
    # The ratios are of the unrounded figures: equal to the printed ones' up to their rounding.
    assert result["ratio"] == pytest.approx(result["value"] / result["baseline_value"], rel=0.03)
    assert 0 < result["share_of_decoder_speed"]
    assert result["share_of_decoder_bound"] == pytest.approx(result["value"] / result["decoder_bound_img_s"], rel=0.03)
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 1
