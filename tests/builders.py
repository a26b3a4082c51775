"""Builders shared by the eval, score and mistake tests: real photographs and their edits, a
shards folder written by the real shard writer, and a run folder as the trainer leaves it."""
import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import torch
import torchvision
from PIL import Image, ImageFilter

from shards.schema import write_json
from shards.build.writer import ShardWriter
from tests.conftest import jpeg_bytes, photo_arrays

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)



def variants() -> dict[str, bytes]:
    """Sixteen real photographs (centre squares, 128 px) and edits of them (grey, dark, blurred);
    the sharp astronaut photos show a face the detector finds."""
    out = {}
    for name, array in photo_arrays().items():
        img = Image.fromarray(array).convert("RGB")
        side = min(img.size)
        img = img.crop(((img.width - side) // 2, 0, (img.width - side) // 2 + side, side)).resize((128, 128))
        edits = {"": img, "_grey": img.convert("L").convert("RGB"),
                 "_dark": img.point(lambda v: v // 3), "_blur": img.filter(ImageFilter.GaussianBlur(3))}
        for suffix, edited in edits.items():
            out[f"{name}{suffix}"] = jpeg_bytes(np.asarray(edited))
    return out


def make_shards(root, images: dict[str, bytes], users: dict[str, str], per_shard: int = 6):
    """A shards folder written with the real shard writer, plus one row that failed to fetch."""
    out = root / "shards"
    out.mkdir(parents=True, exist_ok=True)
    keys = list(images)
    for n, start in enumerate(range(0, len(keys), per_shard)):
        writer = ShardWriter(out, f"shard-{n:06d}")
        rows = []
        for key in keys[start:start + per_shard]:
            offset, size = writer.add(key, images[key], {"key": key})
            rows.append({"key": key, "tweet_id": key, "user_id": users[key], "created_at": T0, "status": "ok",
                         "shard": f"shard-{n:06d}.tar", "offset": offset, "size": size, "width": 128, "height": 128})
        if n == 0:
            rows.append({"key": "gone", "tweet_id": "gone", "user_id": users[keys[0]], "created_at": T0,
                         "status": "http_404", "error": "404"})
        writer.finish(pa.Table.from_pylist(rows))
    write_json({"schema_version": 1, "shards": []}, out / "manifest.json")
    return out


def make_run(root, arch: str = "resnet18", resize: int = 96, crop: int = 84, seed: int = 0):
    """A run folder as the trainer leaves it: model.pth, model.json and a metrics log."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 1)
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), run / "model.pth")
    meta = {"arch": arch, "step": 40, "preprocess": {"resize": resize, "crop": crop, "mode": "shorter_side_center_crop",
                                                     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    (run / "model.json").write_text(json.dumps(meta))
    with open(run / "metrics.jsonl", "w") as f:
        for step, acc in ((10, 0.55), (20, 0.61), (30, 0.64), (40, 0.66)):
            f.write(json.dumps({"step": step, "acc/val": acc}) + "\n")
    return run / "model.pth", model.eval()
