"""Messages that say what is wrong (issue 14, point 8): the missing file by its name, a
checkpoint of another shape with what differs, a deleted slice named as such, decoder errors
without Pillow's in-memory file names, and a dangling link in a scored folder as a row."""
from __future__ import annotations

import os

import pytest
import torch
import torchvision

from eval.cli import score_main
from eval.score import ScoreConfig, score_images
from shards.console import UserError
from shards.build.pool import write_manifest
from shards.build.resize import ResizeConfig, resize_image
from shards.verify import verify_shards
from tests.builders import make_run, make_shards
from train.checkpoint import initialise, model_meta


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))[0]


def test_a_missing_model_file_is_named_not_its_model_json(tmp_path, capsys):
    (tmp_path / "model.json").write_text('{"arch": "resnet18", "preprocess": {}}')
    with pytest.raises(UserError, match=r"nope\.pth: no such model file"):
        model_meta(tmp_path / "nope.pth")
    assert score_main(["--model", str(tmp_path / "nope.pth"), str(tmp_path / "a.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.pth: no such model file" in err, err


def test_a_checkpoint_of_another_shape_says_what_differs(tmp_path):
    other = torchvision.models.resnet18(weights=None)
    other.fc = torch.nn.Linear(512, 2)  # a two-class head: not ours
    state = other.state_dict()
    del state["layer4.1.bn2.running_mean"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "other.pth")
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Linear(512, 1)
    with pytest.raises(UserError) as caught:
        initialise(model, f"iipa:{tmp_path / 'other.pth'}")
    message = str(caught.value)
    assert not message.rstrip().endswith(":") and "\n" not in message
    assert "1 missing (e.g. layer4.1.bn2.running_mean)" in message and "1 unexpected (e.g. extra.weight)" in message
    assert "2 of another shape (e.g. fc.weight: [2, 512] in the file, [1, 512] here)" in message


def test_verify_names_a_deleted_slice_not_the_tar(tmp_path, photos):
    images = {f"k{i}": data for i, data in enumerate(photos.values())}
    shards = make_shards(tmp_path, images, {k: "u" for k in images}, per_shard=2)
    write_manifest(shards, "shard", {})
    assert "manifest.json" not in verify_shards(shards)["problems"]  # (make_shards records no sha1s)
    os.remove(shards / "shard-000001.parquet")
    problems = verify_shards(shards)["problems"]["manifest.json"]
    assert any("shard-000001.tar: its Parquet slice shard-000001.parquet is missing (the tar is there)" in p
               for p in problems), problems
    os.remove(shards / "shard-000001.tar")
    problems = verify_shards(shards)["problems"]["manifest.json"]
    assert any("neither it nor its slice" in p for p in problems), problems


def test_decoder_errors_do_not_show_an_in_memory_file(run, tmp_path):
    result = resize_image(b"not an image at all", ResizeConfig())
    assert result.status == "decode_error" and "BytesIO" not in result.error and "0x" not in result.error
    assert result.error.startswith("UnidentifiedImageError: cannot identify image file"), result.error
    (tmp_path / "notes.jpg").write_bytes(b"not an image at all")
    rows = score_images(ScoreConfig(str(run), [tmp_path / "notes.jpg"])).table.to_pylist()
    assert rows[0]["status"] == "decode_error" and "BytesIO" not in rows[0]["error"], rows


def test_a_dangling_link_in_a_scored_folder_is_a_row(run, tmp_path, photos):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "coffee.jpg").write_bytes(photos["coffee"])
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    rows = {os.path.basename(r["path"]): r for r in score_images(ScoreConfig(str(run), [folder])).table.to_pylist()}
    assert rows["coffee.jpg"]["status"] == "ok"
    assert rows["gone.jpg"]["status"] == "not_found" and rows["gone.jpg"]["score"] is None
