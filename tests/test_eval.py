"""`iipa eval`: accuracy and intervals against hand-computed values, baselines and the bias
check on real photographs, and the whole report from real shards and a real ResNet."""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageStat
from scipy import stats
from torchvision import transforms

from eval.cli import main as eval_main
from eval.evaluate import EvalConfig, evaluate
from eval.metrics import (accuracy_with_interval, activity_buckets, pair_correct, prob_buckets, reliability,
                          user_centred_correlation)
from eval.visual import face_detector, image_stats
from shards.schema import write_table
from tests.builders import T0, make_run, make_shards, variants


# ------------------------------------------------------------------------------------ metrics


def test_accuracy_and_interval_match_the_exact_bootstrap():
    # 8 of 10 right: a resample's mean is Binomial(10, 0.8)/10, whose 2.5% and 97.5% quantiles
    # are 0.5 (P(X ≤ 4) = 0.006, P(X ≤ 5) = 0.033) and 1.0 (P(X ≤ 9) = 0.89).
    small = accuracy_with_interval(np.array([1] * 8 + [0] * 2), n_boot=20000, seed=1)
    assert small == {"accuracy": 0.8, "low": 0.5, "high": 1.0, "pairs": 10}
    correct = np.array([1.0] * 70 + [0.0] * 30)
    big = accuracy_with_interval(correct, n_boot=20000, seed=2)
    assert big["accuracy"] == 0.7
    assert big["low"] == stats.binom.ppf(0.025, 100, 0.7) / 100 and big["high"] == stats.binom.ppf(0.975, 100, 0.7) / 100
    tied = accuracy_with_interval(pair_correct([1, 2, 3, 4], [0, 2, 5, 4]), n_boot=500)
    assert tied["accuracy"] == (1 + 0.5 + 0 + 0.5) / 4 and 0 <= tied["low"] <= 0.5 <= tied["high"] <= 1
    assert np.isnan(accuracy_with_interval(np.array([]))["accuracy"])


def test_buckets_by_probability_and_user_activity():
    labels, order = prob_buckets(np.array([0.951, 0.99, 0.9995, 1.0, 0.5]))
    assert list(labels) == ["[0.95, 0.99)", "[0.99, 0.999)", "[0.999, 0.9999)", "[0.9999, 1]", "[0, 0.95)"]
    assert order[0] == "[0, 0.95)" and len(order) == 5
    # six users with 2, 2, 5, 5, 40, 40 images (their pairs repeat the count); terciles over users
    users = np.array(["a", "a", "b", "c", "d", "e", "f", "f"])
    activity = np.array([2, 2, 2, 5, 5, 40, 40, 40])
    labels, order = activity_buckets(activity, users)
    assert order == ["2 images", "3–5 images", "6–40 images"]
    assert list(labels) == ["2 images"] * 3 + ["3–5 images"] * 2 + ["6–40 images"] * 3


def test_user_centred_correlation_removes_who_posted():
    # Within each user, score follows popularity exactly; across users the order is reversed,
    # so the raw correlation is negative and the user-centred one is 1.
    user = np.array(["a"] * 3 + ["b"] * 3)
    log_pop = np.array([1.0, 2, 3, 11, 12, 13])
    score = np.array([10.0, 11, 12, 0, 1, 2])
    assert stats.spearmanr(score, log_pop).statistic < 0
    corr = user_centred_correlation(score, log_pop, user)
    assert corr["spearman"] == pytest.approx(1.0) and corr["pearson"] == pytest.approx(1.0)
    assert corr["mean_user_spearman"] == pytest.approx(1.0) and corr["images"] == 6 and corr["users"] == 2
    # a user with a single image cannot be centred and is left out
    lone = user_centred_correlation(np.append(score, 5.0), np.append(log_pop, 0.0), np.append(user, "c"))
    assert lone["images"] == 6 and lone["spearman"] == pytest.approx(1.0)


def test_reliability_bins_by_hand():
    # differences 0 → p = 0.5 (a tie: half right); ln 3 → 0.75, right; −ln 3 → confidence 0.75, wrong;
    # ln 19 → 0.95, right.
    diff = np.array([0.0, np.log(3), -np.log(3), np.log(19)])
    cal = reliability(diff, np.zeros(4), bins=5)
    by_low = {round(b["low"], 1): b for b in cal["bins"]}
    assert by_low[0.5]["pairs"] == 1 and by_low[0.5]["accuracy"] == 0.5
    assert by_low[0.7]["pairs"] == 2 and by_low[0.7]["accuracy"] == 0.5 and by_low[0.7]["confidence"] == pytest.approx(0.75)
    assert by_low[0.9]["accuracy"] == 1.0
    expected_ece = (1 * 0 + 2 * 0.25 + 1 * 0.05) / 4
    assert cal["ece"] == pytest.approx(expected_ece)


# ------------------------------------------------------------------- baselines on real photos


def test_visual_statistics_on_real_photographs(photos):
    images = variants()
    detector = face_detector()
    assert detector is not None, "opencv-python-headless (< 5, which bundles the Haar cascades) is needed"
    got = {k: image_stats(v, detector) for k, v in images.items()}
    for key, data in images.items():
        grey = ImageStat.Stat(Image.open(io.BytesIO(data)).convert("L"))
        assert got[key].brightness == pytest.approx(grey.mean[0] / 255, abs=0.01)
        assert got[key].contrast == pytest.approx(grey.stddev[0] / 255, abs=0.01)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        assert got[f"{name}_grey"].colourfulness < 3 and got[name].colourfulness > 20
        assert got[f"{name}_dark"].brightness < got[name].brightness / 2
        assert got[f"{name}_blur"].sharpness < got[name].sharpness / 3
    full = {k: image_stats(v, detector) for k, v in photos.items()}
    assert full["astronaut"].faces >= 1 and full["coffee"].faces == 0 and full["rocket"].faces == 0
    bad = image_stats(b"\xff\xd8 not really a jpeg")
    assert bad.status == "decode_error" and np.isnan(bad.brightness) and bad.error


# ------------------------------------------------------------------------- the whole report


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    images = variants()
    users = {k: ("u_" + k.split("_")[0]) for k in images}  # one user per photograph, four images each
    shards = make_shards(root, images, users)
    model_path, model = make_run(root)
    # Pairs: the colourful photo beats its grey copy, the bright beats the dark, within each user.
    rows = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        for hi, lo, rule, prob in ((name, f"{name}_grey", "base", 0.97), (name, f"{name}_dark", "retweets", 0.9995),
                                   (f"{name}_blur", f"{name}_dark", "base", 0.995)):
            rows.append({"hi_key": hi, "lo_key": lo, "hi_pop": 100.0, "lo_pop": 10.0, "prob": prob,
                         "user_id": users[hi], "rule": rule, "days_apart": 1.0})
    rows.append({"hi_key": "astronaut", "lo_key": "gone", "hi_pop": 5.0, "lo_pop": 1.0, "prob": 0.96,
                 "user_id": "u_astronaut", "rule": "base", "days_apart": 1.0})
    pairs = root / "pairs"
    write_table(pa.Table.from_pylist(rows[:9]), pairs / "val.parquet", "pairs")
    write_table(pa.Table.from_pylist(rows[9:]), pairs / "test.parquet", "pairs")
    out = root / "report"
    report = evaluate(EvalConfig(str(model_path), shards, pairs, out, bootstrap=400, batch_size=5))
    return report, out, rows, images, model


def independent_scores(model, images: dict[str, bytes]) -> dict[str, float]:
    """The run's preprocessing written with torchvision: shorter side 96, centre crop 84, ImageNet norm."""
    t = transforms.Compose([transforms.Resize(96), transforms.CenterCrop(84), transforms.ToTensor(),
                            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        batch = torch.stack([t(Image.open(io.BytesIO(b)).convert("RGB")) for b in images.values()])
        return dict(zip(images, model(batch).squeeze(1).tolist()))


def test_report_numbers_match_independent_computation(evaluated):
    report, out, rows, images, model = evaluated
    kept = [r for r in rows if r["lo_key"] != "gone"]
    assert report["pairs"] == 12 and report["pairs_without_images"] == 1 and report["images"] == 16
    expected = independent_scores(model, images)
    table = pq.read_table(out / "scores.parquet").to_pylist()
    for row in table:
        assert row["model"] == pytest.approx(expected[row["key"]], abs=1e-3)
    right = [expected[r["hi_key"]] > expected[r["lo_key"]] for r in kept]
    assert report["accuracy"]["model"]["accuracy"] == pytest.approx(np.mean(right))
    # Baselines by hand: colour beats grey (colourfulness right on those 4 pairs), bright beats dark.
    luma = np.array([0.299, 0.587, 0.114])
    bright = {k: (np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), float) @ luma).mean() for k, b in images.items()}
    assert report["accuracy"]["brightness"]["accuracy"] == pytest.approx(
        np.mean([bright[r["hi_key"]] > bright[r["lo_key"]] for r in kept]))
    assert report["by"]["rule"]["colourfulness"]["base"]["pairs"] == 8
    assert report["accuracy"]["chance"]["accuracy"] == 0.5
    assert report["by_rule"] == report["by"]["rule"]["model"]


def test_report_breaks_down_by_split_gap_and_activity(evaluated):
    report = evaluated[0]
    by = report["by"]
    assert {k: v["pairs"] for k, v in by["split"]["model"].items()} == {"test": 3, "val": 9}
    assert {k: v["pairs"] for k, v in by["prob"]["model"].items()} == {"[0.95, 0.99)": 4, "[0.99, 0.999)": 4,
                                                                      "[0.999, 0.9999)": 4}
    # every user has four stored images (u_astronaut five rows: the failed fetch counts as activity)
    assert sum(v["pairs"] for v in by["activity"]["model"].values()) == 12
    corr = report["correlation"]["model"]
    assert corr["images"] == 16 and corr["users"] == 4 and -1 <= corr["spearman"] <= 1
    cal = report["calibration"]["model"]
    assert sum(b["pairs"] for b in cal["bins"]) == 12 and 0 <= cal["ece"] <= 0.5


def test_bias_check_counts_faces_and_win_rates(evaluated):
    report, out, rows, *_ = evaluated
    faces = report["bias"]["faces"]
    table = {r["key"]: r for r in pq.read_table(out / "scores.parquet").to_pylist()}
    with_faces = {k for k, r in table.items() if r["faces"] > 0}
    assert "astronaut" in with_faces and "coffee" not in with_faces
    assert faces["with_faces"]["images"] == len(with_faces)
    assert faces["with_faces"]["mean_score"] == pytest.approx(np.mean([table[k]["model"] for k in with_faces]))
    kept = [r for r in rows if r["lo_key"] != "gone"]
    appearances = [(r["hi_key"], True) for r in kept] + [(r["lo_key"], False) for r in kept]
    face_apps = [is_hi for k, is_hi in appearances if k in with_faces]
    assert faces["with_faces"]["observed_win_rate"] == pytest.approx(np.mean(face_apps))
    assert set(report["bias"]["score_vs"]) == {"brightness", "colourfulness", "contrast", "sharpness"}


def test_report_files_and_plots(evaluated):
    report, out, *_ = evaluated
    text = (out / "report.md").read_text()
    for needle in ("| model (this run) |", "| brightness |", "| chance |", "Figure 4", "By split", "SRCC",
                   "Bias check", "reliability.png"):
        assert needle in text, needle
    for plot in ("accuracy.png", "scores.png", "reliability.png", "val_curve.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    saved = json.loads((out / "report.json").read_text())
    assert saved["accuracy"]["model"] == report["accuracy"]["model"] and saved["config"]["bootstrap"] == 400


def test_eval_cli_reports_user_mistakes_in_one_line(evaluated, tmp_path, capsys):
    root = evaluated[1].parent
    args = ["--model", str(root / "run" / "model.pth"), "--shards", str(root / "shards"), "--out", str(tmp_path / "r")]
    assert eval_main([*args, "--pairs", str(tmp_path / "nope.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.parquet" in err and "Traceback" not in err
    assert eval_main([*args, "--pairs", str(root / "pairs"), "--bootstrap", "0"]) == 2
    assert "--bootstrap" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written before the options were checked
