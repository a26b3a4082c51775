"""A shard set of real photographs and random pairs, for the loader and train benchmarks.

Photos come from scikit-image (several real photographs, cropped, flipped and rescaled so no two
images are alike), stored as real shards would be: shorter side 256, through `build_shards`.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from shards import BuildConfig, build_shards
from shards.build.fetch import FetchConfig
from shards.build.resize import ResizeConfig
from shards.schema import write_table

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def source_photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), np.stack([data.camera()] * 3, -1)]


def make_trainset(workdir: Path, n_images: int, n_pairs: int, seed: int = 0) -> Path:
    """WORKDIR/{shards,pairs}; built once and reused while its marker file exists."""
    workdir = Path(workdir)
    marker = workdir / f"trainset-{n_images}-{n_pairs}.done"
    if marker.exists():
        return workdir
    rng = np.random.default_rng(seed)
    photos = source_photos()
    (workdir / "photos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = Image.fromarray(np.ascontiguousarray(src[y:y + ch, x:x + cw]))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = rng.uniform(0.9, 1.6)
        img = img.resize((int(cw * scale), int(ch * scale)), Image.Resampling.BILINEAR)
        path = workdir / "photos" / f"{i:06d}.jpg"
        img.save(path, quality=90)
        rows.append({"key": f"img{i:06d}", "tweet_id": str(i), "user_id": f"u{i // 50}", "created_at": T0,
                     "status": "pending", "url": path.resolve().as_uri()})
    write_table(pa.Table.from_pylist(rows), workdir / "images.parquet", "images")
    a, b = rng.integers(0, n_images, n_pairs), rng.integers(0, n_images, n_pairs)
    b = np.where(a == b, (b + 1) % n_images, b)
    pairs = pa.table({"hi_key": [f"img{i:06d}" for i in a], "lo_key": [f"img{i:06d}" for i in b],
                      "hi_pop": np.full(n_pairs, 10.0), "lo_pop": np.full(n_pairs, 1.0),
                      "prob": np.full(n_pairs, 0.99), "user_id": [f"u{i // 50}" for i in a],
                      "rule": ["base"] * n_pairs, "days_apart": np.zeros(n_pairs)})
    for split in ("train", "val", "test"):
        write_table(pairs if split == "train" else pairs.slice(0, 16), workdir / "pairs" / f"{split}.parquet", "pairs")
    build_shards(BuildConfig(images=workdir / "images.parquet", out=workdir / "shards", shard_size=256,
                             fetch=FetchConfig(allow_hosts=(), allow_local=(workdir / "photos",)),
                             resize=ResizeConfig(size=256)))
    marker.write_text("ok\n")
    return workdir
