"""`iipa score`: IIPA's preprocessing reproduced on a plain torchvision ResNet-50, folders with a
corrupt image, shards, CSV/Parquet output, and the bench's two scoring loops."""
import io
import json
from dataclasses import asdict

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from cluster.benches.score import make_folder, make_model, score_batched, score_one_by_one
from eval.cli import score_main
from eval.score import ScoreConfig, Scorer, score_files, score_images
from shards.console import UserError
from shards.build.resize import ResizeConfig, resize_image
from tests.conftest import photo_arrays
from tests.conftest import run_iipa
from tests.builders import make_run, make_shards, variants


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    """IIPA's layout: torchvision's resnet50 with fc = Linear(2048, 1), random weights, as a state_dict."""
    torch.manual_seed(7)
    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Linear(2048, 1)
    path = tmp_path_factory.mktemp("iipa") / "model-resnet50.pth"
    torch.save(model.state_dict(), path)
    return path, model.eval()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture()
def folder(tmp_path, photos):
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    for name, data in photos.items():
        (d / f"{name}.jpg").write_bytes(data)
    Image.open(io.BytesIO(photos["coffee"])).save(d / "sub" / "coffee.png")  # PNG, in a subfolder
    (d / "broken.jpg").write_bytes(photos["rocket"][:2000])  # truncated JPEG
    (d / "notes.jpg").write_bytes(b"not an image at all")
    (d / "README.txt").write_text("not an image file: skipped in folders")
    return d


def iipa_test_script(model, paths) -> list[float]:
    """IIPA's released test script: PIL, convert RGB, Resize([224, 224]), ToTensor, forward."""
    transform = transforms.Compose([transforms.Resize([224, 224]), transforms.ToTensor()])
    with torch.no_grad():
        return [float(model(transform(Image.open(p).convert("RGB")).unsqueeze(0))) for p in paths]


def test_iipa_weights_score_like_iipas_own_script(resnet50, folder):
    path, model = resnet50
    files = sorted(p for p in folder.glob("*.jpg") if p.stem in ("astronaut", "coffee", "chelsea", "rocket"))
    table = score_images(ScoreConfig(f"iipa:{path}", files, batch_size=3, device="cpu")).table.to_pylist()
    assert [r["path"] for r in table] == [str(p) for p in files] and {r["status"] for r in table} == {"ok"}
    ours = np.array([r["score"] for r in table])
    theirs = np.array(iipa_test_script(model, files))
    # The same numbers up to resampling detail: the trainer's decoder downscales a JPEG in the DCT
    # domain first where it is at least twice the target (the astronaut, 512 px), IIPA's does not.
    assert np.allclose(ours, theirs, rtol=1e-2, atol=1e-3), (ours, theirs)
    assert list(np.argsort(ours)) == list(np.argsort(theirs))
    assert np.ptp(theirs) > 20 * np.abs(ours - theirs).max()  # images differ far more than the methods


def test_corrupt_images_are_reported_and_the_rest_scored(small_run, folder, tmp_path):
    model_path, _ = small_run
    missing = tmp_path / "absent.jpg"
    table, not_images = score_images(ScoreConfig(str(model_path), [folder, missing], batch_size=4, device="cpu"))
    rows = {r["path"]: r for r in table.to_pylist()}
    assert len(rows) == 8 and not any(p.endswith("README.txt") for p in rows) and not_images == 1
    status = {p.split("/")[-1]: r["status"] for p, r in rows.items()}
    assert status == {"astronaut.jpg": "ok", "broken.jpg": "decode_error", "chelsea.jpg": "ok", "coffee.jpg": "ok",
                      "notes.jpg": "decode_error", "rocket.jpg": "ok", "coffee.png": "ok", "absent.jpg": "not_found"}
    assert all(r["error"] and r["score"] is None for r in rows.values() if r["status"] != "ok")
    # a bad image in a batch changes nothing for the others: each scores as it does alone
    scorer = Scorer(str(model_path), device="cpu")
    for name in ("astronaut", "rocket"):
        alone = score_files(scorer, [folder / f"{name}.jpg"])["score"][0]
        assert rows[str(folder / f"{name}.jpg")]["score"] == pytest.approx(alone, abs=1e-5)
    # the PNG and the JPEG of the coffee photo are near enough the same image
    assert rows[str(folder / "sub" / "coffee.png")]["score"] == pytest.approx(rows[str(folder / "coffee.jpg")]["score"],
                                                                             rel=0.05, abs=0.05)


def test_scores_from_shards_match_the_same_images_as_files(small_run, tmp_path):
    model_path, _ = small_run
    images = dict(list(variants().items())[:5])
    # the shards hold what `shards build` stores of each photo; the files are the photos themselves
    stored = {k: resize_image(data, ResizeConfig()).data for k, data in images.items()}
    shards = make_shards(tmp_path, stored, {k: "u1" for k in images}, per_shard=3)
    files = []
    for key, data in images.items():
        files.append(tmp_path / f"{key}.jpg")
        files[-1].write_bytes(data)
    out = tmp_path / "scores.parquet"
    table = score_images(ScoreConfig(str(model_path), files, shards=shards, out=out, batch_size=2, device="cpu")).table
    assert pq.read_table(out).equals(table)
    rows = table.to_pylist()
    from_files = {r["path"].split("/")[-1][:-4]: r["score"] for r in rows if r["key"] is None}
    from_shards = {r["key"]: r["score"] for r in rows if r["key"] is not None}
    assert set(from_shards) == set(images) and all(r["path"].endswith(".tar") for r in rows if r["key"])
    for key in images:
        assert from_shards[key] == pytest.approx(from_files[key], abs=1e-5)


def test_score_cli_writes_csv_and_reports_failures(small_run, folder, tmp_path):
    model_path, _ = small_run
    out = tmp_path / "out" / "scores.csv"
    result = run_iipa("score", "--model", str(model_path), str(folder), "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    csv = pcsv.read_csv(out).to_pylist()
    assert len(csv) == 7 and sum(r["status"] == "ok" for r in csv) == 5
    assert "broken.jpg: decode_error" in result.stderr and '"failed": 2, "not_images": 1' in result.stderr


def test_score_cli_table_and_one_line_errors(small_run, folder, tmp_path, capsys):
    model_path, _ = small_run
    assert score_main(["--model", str(model_path), str(folder / "coffee.jpg"), str(folder / "notes.jpg")]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 3 and "coffee.jpg" in lines[1] and "ok" in lines[1] and "decode_error" in lines[2]
    assert score_main(["--model", str(model_path), str(folder), "--out", str(tmp_path / "x.xlsx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "xlsx" in err
    assert score_main(["--model", str(tmp_path / "none" / "model.pth"), str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none/model.pth: no such model file" in err and "Traceback" not in err


def test_user_mistakes_raise_user_errors(small_run, tmp_path):
    model_path, _ = small_run
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        score_images(ScoreConfig(str(model_path), [tmp_path / "empty"]))
    with pytest.raises(UserError, match="give images"):
        score_images(ScoreConfig(str(model_path), []))
    with pytest.raises(UserError, match="device"):
        score_images(ScoreConfig(str(model_path), [tmp_path], device="tpu"))


def test_bench_loops_score_the_same_photos(tmp_path):
    paths = make_folder(tmp_path / "photos", 3)
    assert all(Image.open(p).format == "JPEG" for p in paths)
    model = make_model(tmp_path / "models", "resnet18")
    fast = score_batched(str(tmp_path / "photos"), model, batch_size=2, threads=2)
    slow = score_one_by_one(str(tmp_path / "photos"), model, "resnet18")
    assert fast["images"] == slow["images"] == 3 and fast["scoring_s"] > 0 and slow["scoring_s"] > 0


def exif_rotated_jpeg(upright: np.ndarray) -> bytes:
    """A camera's JPEG of an upright photo: pixels stored turned a quarter left, EXIF orientation 6
    ("turn right to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.fromarray(np.rot90(upright)).save(out, format="JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture()
def as_cameras_leave_them(tmp_path):
    """The coffee photo upright, as a camera's EXIF-rotated JPEG and with its stored pixels only;
    the astronaut as an RGBA PNG whose left half is transparent, and that photo over white."""
    coffee, astronaut = photo_arrays()["coffee"], photo_arrays()["astronaut"]
    files = {"upright.jpg": Image.fromarray(coffee), "rotated_exif.jpg": exif_rotated_jpeg(coffee),
             "rotated_no_exif.jpg": Image.fromarray(np.rot90(coffee))}
    alpha = np.full(astronaut.shape[:2], 255, np.uint8)
    alpha[:, : astronaut.shape[1] // 2] = 0
    rgba = Image.fromarray(np.dstack([astronaut, alpha]), "RGBA")
    over_white = astronaut.copy()
    over_white[:, : astronaut.shape[1] // 2] = 255
    files.update({"rgba.png": png_bytes(rgba), "over_white.png": png_bytes(Image.fromarray(over_white)),
                  "alpha_dropped.png": png_bytes(rgba.convert("RGB"))})
    for name, data in files.items():
        if isinstance(data, Image.Image):
            data.save(tmp_path / name, quality=95)
        else:
            (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


def test_our_models_score_files_as_shards_store_them(small_run, as_cameras_leave_them, tmp_path):
    """EXIF orientation applied and transparency over white, as `shards build` does: the model
    learned those pixels. The RGBA photo scores exactly as the same photo over white."""
    model_path, _ = small_run
    files = as_cameras_leave_them
    table, _ = score_images(ScoreConfig(str(model_path), list(files.values()), batch_size=4, device="cpu"))
    score = {r["path"].split("/")[-1]: r["score"] for r in table.to_pylist()}
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert score["rgba.png"] == pytest.approx(score["over_white.png"], abs=1e-5)  # up to batch arithmetic
    assert abs(score["alpha_dropped.png"] - score["over_white.png"]) > 1e-3
    # Turned upright, the camera's JPEG differs from the upright one by JPEG rounding only.
    assert abs(score["rotated_exif.jpg"] - score["upright.jpg"]) < 0.1 * abs(
        score["rotated_no_exif.jpg"] - score["upright.jpg"])
    # The same score as the photo gets once `shards build` has stored it.
    stored = tmp_path / "stored.jpg"
    stored.write_bytes(resize_image(files["rotated_exif.jpg"].read_bytes(), ResizeConfig()).data)
    scorer = Scorer(str(model_path), device="cpu")
    assert scorer.score([stored.read_bytes()])[0] == pytest.approx(score["rotated_exif.jpg"], abs=1e-6)


def test_iipa_weights_keep_iipas_script_no_exif_no_white(resnet50, as_cameras_leave_them):
    path, model = resnet50
    names = ("rotated_exif.jpg", "rgba.png", "rotated_no_exif.jpg", "alpha_dropped.png")
    files = [as_cameras_leave_them[n] for n in names]
    table = score_images(ScoreConfig(f"iipa:{path}", files, batch_size=4, device="cpu")).table
    ours = dict(zip(names, table.column("score").to_pylist()))
    theirs = iipa_test_script(model, files[:2])
    assert np.allclose([ours[n] for n in names[:2]], theirs, rtol=1e-2, atol=1e-3), (ours, theirs)
    # IIPA's script sees the camera's stored pixels (no EXIF turn) and the RGBA file's hidden colours
    assert ours["rotated_exif.jpg"] == pytest.approx(ours["rotated_no_exif.jpg"], abs=1e-5)
    assert ours["rgba.png"] == pytest.approx(ours["alpha_dropped.png"], abs=1e-5)


def test_files_are_stored_with_the_settings_of_the_shards_the_run_trained_on(tmp_path, photos):
    model_path, _ = make_run(tmp_path)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"resize": {**asdict(ResizeConfig()), "size": 64, "quality": 50}}))
    (model_path.parent / "config.json").write_text(json.dumps({"data": {"shards": str(shards)}}))
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(photos["chelsea"])
    scorer = Scorer(str(model_path), device="cpu")
    got = score_files(scorer, [photo])["score"][0]
    small = scorer.score([resize_image(photos["chelsea"], ResizeConfig(size=64, quality=50)).data])[0]
    default = scorer.score([resize_image(photos["chelsea"], ResizeConfig()).data])[0]
    assert got == pytest.approx(small, abs=1e-6) and abs(got - default) > 1e-4
