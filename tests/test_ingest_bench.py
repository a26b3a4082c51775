"""`iipa bench ingest-parse` on tiny inputs: every format is generated, parsed and reported."""
import json

import pyarrow.parquet as pq
import pytest

from cluster.bench import BenchConfig
from cluster.benches import parse
from shards.schema import read_table


def test_ingest_parse_bench_quick(tmp_path):
    result = parse.run(BenchConfig(tmp_path, size="quick"))
    assert {"stage", "unit", "value", "baseline", "baseline_value", "ratio"} <= set(result)
    assert result["stage"] == "ingest-parse" and result["value"] > 0 and result["baseline_value"] > 0
    # Of the unrounded figures: equal to the printed ones' ratio up to their rounding.
    assert result["ratio"] == pytest.approx(result["value"] / result["baseline_value"], rel=0.01)
    formats = result["formats"]
    assert set(formats) == set(parse.FORMATS)
    # every format holds the same tweets, so each gives the same images
    assert len({f["images"] for f in formats.values()}) == 1 and formats["twarc2"]["images"] > result["tweets"]
    assert all(f["peak_rss_mb"] > 0 for f in formats.values())
    # peak memory at two archive sizes at least, and how much it grew from the smallest to the largest
    peaks = {int(n): mb for n, mb in result["memory_flat"]["twarc2_peak_rss_mb"].items()}
    assert len(peaks) >= 2 and max(peaks) == result["tweets"] and all(mb > 0 for mb in peaks.values())
    table = read_table(tmp_path / "out" / "twarc2.parquet", "images")
    other = read_table(tmp_path / "out" / "v1.parquet", "images")
    assert sorted(table.column("key").to_pylist()) == sorted(other.column("key").to_pylist())
    assert json.loads(json.dumps(result)) == result  # plain JSON values only: no NumPy scalars, no NaN
    assert pq.ParquetFile(tmp_path / "out" / "table.parquet").metadata.num_rows == table.num_rows
