"""`iipa bench ingest`: images per second of `shards build` end to end, against naive Pillow.

Inputs: real-photo JPEGs of 900 to 2 048 pixels a side, made once from scikit-image's colour
photographs (random crops, rescales and flips, with a light sensor-like grain so that the files
weigh what camera JPEGs of that size weigh) and served from 127.0.0.1 by a lean keep-alive
server in a subprocess (static_server.py: it costs the two cores as little as it can, as a CDN
costs a downloader nothing). Measured in the same run:

- `shards build` on a local Ray instance: download over loopback, decode, resize, write shards;
- the baseline: one process, `requests.get`, Pillow open → convert("RGB") → resize → save;
- the decode path alone: our `resize_image` against the JPEG decoder's own speed on the same
  files (`draft` + `load`), single-threaded, to show how close to the decoder we stay.

img2dataset, the standard tool, reaches about 75 images/s on a 2-core machine with
`--image_size 256 --resize_mode keep_ratio` (the issue's figure; not re-measured here).
"""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

IMG2DATASET_IMG_S = 75.0
TARGET_FACTOR = 3.0
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "motorcycle_left", "immunohistochemistry")
GENERATOR_VERSION = 1


def _photo(name: str) -> np.ndarray:
    from skimage import data

    if name == "motorcycle_left":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()[..., :3]


def _make_one(args: tuple[int, int, int, str]) -> int:
    """Write one photo: a random crop of a source photo, rescaled to w×h, maybe flipped, grained."""
    from PIL import Image

    index, lo, hi, out = args
    rng = np.random.default_rng(index)
    src = _photo(PHOTOS[index % len(PHOTOS)])
    w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    sh, sw = src.shape[:2]
    scale = max(w / sw, h / sh) * rng.uniform(1.0, 1.3)
    cw, ch = min(sw, int(np.ceil(w / scale))), min(sh, int(np.ceil(h / scale)))
    x, y = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    img = Image.fromarray(np.ascontiguousarray(src[y:y + ch, x:x + cw])).resize((w, h), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, 2.0, (h, w, 1)).astype(np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=int(rng.integers(85, 96)))
    return os.path.getsize(out)


def make_photos(folder: Path, n: int, lo: int, hi: int) -> list[Path]:
    """`n` JPEGs with both sides in [lo, hi] pixels, generated once (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "photos.json"
    paths = [folder / f"photo_{i:05d}.jpg" for i in range(n)]
    spec = {"n": n, "lo": lo, "hi": hi, "version": GENERATOR_VERSION}
    if stamp.exists() and json.loads(stamp.read_text()) == spec and all(p.exists() for p in paths):
        return paths
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(_make_one, [(i, lo, hi, str(p)) for i, p in enumerate(paths)], chunksize=16))
    stamp.write_text(json.dumps(spec))
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(folder: Path) -> tuple[subprocess.Popen, str]:
    """The lean static server (static_server.py) on 127.0.0.1 in its own process, so that it does
    not share our GIL; returns it and its base URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("static_server.py")), str(folder), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/photos.json", timeout=1).read()
            return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the benchmark's HTTP server did not start")


def images_table(urls: list[str], path: Path) -> Path:
    import pyarrow as pa

    from shards.schema import write_table

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [{"key": f"img{i:05d}", "tweet_id": str(i), "user_id": f"u{i % 50}", "created_at": t0,
             "status": "pending", "url": url} for i, url in enumerate(urls)]
    return write_table(pa.Table.from_pylist(rows), path, "images")


def naive(urls: list[str], out: Path, size: int) -> float:
    """The baseline: fetch, open, convert, resize, save, one image after the other; seconds."""
    import requests
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, url in enumerate(urls):
        img = Image.open(io.BytesIO(requests.get(url, timeout=30).content)).convert("RGB")
        scale = size / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        img.save(out / f"{i:05d}.jpg", quality=90)
    return time.perf_counter() - start


def decode_path(paths: list[Path], size: int) -> dict:
    """Single-threaded images/s of the JPEG decoder alone (DCT-scaled) and of our resize_image."""
    from PIL import Image

    from shards.resize import ResizeConfig, resize_image, target_size

    blobs = [p.read_bytes() for p in paths]
    start = time.perf_counter()
    for blob in blobs:
        img = Image.open(io.BytesIO(blob))
        img.draft("RGB", target_size(*img.size, size))
        img.load()
    decoder = len(blobs) / (time.perf_counter() - start)
    config = ResizeConfig(size=size)
    start = time.perf_counter()
    for blob in blobs:
        assert resize_image(blob, config).data is not None
    ours = len(blobs) / (time.perf_counter() - start)
    return {"decoder_img_s": round(decoder, 1), "resize_image_img_s": round(ours, 1),
            "share_of_decoder_speed": round(ours / decoder, 3)}


def run(config) -> dict:
    from shards.build import BuildConfig, build_shards
    from shards.fetch import FetchConfig
    from shards.pool import start_ray
    from shards.resize import ResizeConfig

    n, lo, hi = config.pick((48, 300, 600), (300, 900, 2048), (2000, 900, 2048))
    n_naive = config.pick(16, 60, 300)
    size = 256
    work = Path(config.workdir)
    paths = make_photos(work / "photos", n, lo, hi)
    server, base = serve(work / "photos")
    try:
        urls = [f"{base}/{p.name}" for p in paths]
        table = images_table(urls, work / "images.parquet")
        out = work / "shards"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        ray_start = time.perf_counter()
        start_ray(None)
        ray_seconds = time.perf_counter() - ray_start
        build = BuildConfig(images=table, out=out, shard_size=100 if config.quick else 250, workers=2, threads=8,
                            fetch=FetchConfig(allow_hosts=("127.0.0.1",)), resize=ResizeConfig(size=size))
        start = time.perf_counter()
        manifest = build_shards(build)
        seconds = time.perf_counter() - start
        if manifest["ok"] != n:
            raise RuntimeError(f"only {manifest['ok']} of {n} images were stored: {manifest['status']}")
        naive_seconds = naive(urls[:n_naive], work / "naive", size)
    finally:
        server.kill()
        server.wait()
    value, baseline = n / seconds, n_naive / naive_seconds
    return {"stage": "ingest", "unit": "images/s", "value": round(value, 1),
            "baseline": "naive Pillow open-convert-resize-save, one process", "baseline_value": round(baseline, 1),
            "ratio": round(value / baseline, 2), "images": n, "naive_images": n_naive,
            "source_pixels": f"{lo}-{hi} a side", "mean_source_kb": round(sum(p.stat().st_size for p in paths) / n / 1024, 1),
            "seconds": round(seconds, 2), "ray_start_s": round(ray_seconds, 2), "workers": 2, "threads": 8,
            "shard_bytes": manifest["bytes"], "img2dataset_img_s": IMG2DATASET_IMG_S,
            "target_img_s": IMG2DATASET_IMG_S * TARGET_FACTOR, "vs_img2dataset": round(value / IMG2DATASET_IMG_S, 2),
            **decode_bound(decode_path(paths[: 16 if config.quick else 100], size), value)}


def decode_bound(decode: dict, value: float) -> dict:
    """The decoder's own speed on every core is the ceiling of the whole pipeline here; say how
    close the end-to-end figure comes to it."""
    cores = os.cpu_count() or 1
    bound = decode["decoder_img_s"] * cores
    return {**decode, "cores": cores, "decoder_bound_img_s": round(bound, 1),
            "share_of_decoder_bound": round(value / bound, 3)}
