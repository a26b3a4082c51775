"""The whole job end to end, as `iipa demo --quick` runs it: real Ray, real torchrun with gloo."""
import json

import pyarrow.compute as pc
import pytest
import torch
import torchvision

from shards.schema import SCHEMA_VERSION, read_table
from tests.conftest import run_iipa


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = run_iipa("demo", "--quick", "--out", str(out), "--seed", "0", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_held_out_accuracy_beats_chance_by_a_clear_margin(demo):
    out, result = demo
    report = json.loads((out / "report.json").read_text())
    model, oracle = report["accuracy"]["model"], report["accuracy"]["oracle"]
    assert model["accuracy"] >= 0.65 and model["low"] > 0.55, model
    assert oracle["accuracy"] > 0.8 and report["accuracy"]["chance"]["accuracy"] == 0.5
    assert report["pairs"]["test"] == model["pairs"] > 50
    assert "| oracle |" in (out / "report.md").read_text() and "oracle" in result.stdout


def test_every_stage_output_validates(demo):
    out, _ = demo
    images = read_table(out / "images.parquet", "images")
    splits = {s: read_table(out / "pairs" / f"{s}.parquet", "pairs") for s in ("train", "val", "test")}
    users = {s: set(t.column("user_id").to_pylist()) for s, t in splits.items()}
    assert not users["train"] & users["test"] and not users["train"] & users["val"]
    shard_rows = read_table(out / "shards", "images")
    assert set(shard_rows.column("status").to_pylist()) == {"ok"}
    paired = set(splits["train"].column("hi_key").to_pylist()) | set(splits["test"].column("lo_key").to_pylist())
    assert paired <= set(shard_rows.column("key").to_pylist()) < set(images.column("key").to_pylist())
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["rows"] == shard_rows.num_rows
    assert pc.min(shard_rows.column("height")).as_py() == 64


def test_checkpoint_has_iipa_layout_and_curve_is_plotted(demo):
    out, _ = demo
    state = torch.load(out / "run" / "model.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Linear(512, 1)
    model.load_state_dict(state)  # strict: exactly torchvision's keys
    meta = json.loads((out / "run" / "model.json").read_text())
    assert meta["arch"] == "resnet18" and meta["preprocess"]["crop"] == 56
    curve = (out / "run" / "val_curve.csv").read_text().splitlines()
    assert curve[0] == "batches,val_accuracy" and len(curve) >= 4
    assert (out / "run" / "val_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
