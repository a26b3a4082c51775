"""`iipa bench scale`: does the trainer start in seconds at IIPA's scale, in flat memory?

Generates once into --workdir a shards folder of N images in many shards (every column of the
images table filled, captions and word lists included, as real slices are) and a train manifest
of N/2 pairs, then measures in fresh processes:
  - the time `shards build` spends at its end writing the folder's locate file;
  - `python -m train … --max-steps 1` until its first batch is ready (`time/startup`, torch
    import included) and its peak RSS, with a cold pair cache (just after the build) and a warm one;
  - the same model on a tiny data set (the memory an empty run takes);
  - the baseline: reading the same columns (key, shard, offset, size, status; hi_key, lo_key)
    with pyarrow alone, nothing resolved.
In-process, the host side of the loader (shard reads, slicing, batch assembly, the prefetch
thread) with decoding skipped, against plain whole-file reads of the same shards.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster.bench import BenchConfig
from shards.locate import LOCATE_COLUMNS, LOCATE_FILE, write_locate_file
from shards.schema import IMAGES, SCHEMA_VERSION, conform, write_json, write_table

MEMBERS = 8  # distinct JPEGs per generated tar; rows of a shard point at them in turn
WORDS = ("sunset beach dog cat coffee morning city night light rain snow art photo travel love food "
         "weekend happy friday mood view street golden hour blue sky nature walk home family").split()


def small_jpegs(side: int) -> list[bytes]:
    """Real photographs (scikit-image's), shorter side `side`, each a little wider than the last."""
    from PIL import Image

    from cluster.benches.trainset import source_photos

    out = []
    for i, photo in enumerate(source_photos() * 2):
        img = Image.fromarray(photo).resize((side + side * i // 8, side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out[:MEMBERS]


def write_tar(path: Path, jpegs: list[bytes]) -> list[tuple[int, int]]:
    """A real tar of the JPEGs; (offset, size) of each member's data."""
    places = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, data in enumerate(jpegs):
            info = tarfile.TarInfo(f"m{i}.jpg")
            info.size = len(data)
            places.append((tar.offset + tarfile.BLOCKSIZE, len(data)))
            tar.addfile(info, io.BytesIO(data))
    return places


def caption_pools(rng: np.random.Generator, n: int = 512) -> dict[str, pa.Array]:
    """Realistic-length captions with their hashtag, mention and word lists, to draw rows from."""
    texts, tags, mentions, words = [], [], [], []
    for _ in range(n):
        w = list(rng.choice(WORDS, int(rng.integers(4, 20))))
        t = [str(x) for x in rng.choice(WORDS, int(rng.integers(1, 4)))]
        m = [f"user{int(x)}" for x in rng.integers(0, 1000, int(rng.integers(0, 2)))]
        texts.append(" ".join(w) + " " + " ".join("#" + x for x in t) + " " + " ".join("@" + x for x in m)
                     + " https://t.co/abcdefghij")
        tags.append(t), mentions.append(m), words.append(w)
    return {"text": pa.array(texts), "hashtags": pa.array(tags), "mentions": pa.array(mentions),
            "caption_words": pa.array(words)}


def make_scaleset(workdir: Path, n_images: int, n_shards: int, n_pairs: int, photo_side: int = 96,
                  seed: int = 0) -> Path:
    """WORKDIR/scale-N-SIDE/{shards,pairs}, built once (a marker file says it is complete)."""
    root = Path(workdir) / f"scale-{n_images}-{photo_side}"
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    jpegs, pools = small_jpegs(photo_side), caption_pools(rng)
    ids = rng.permutation(n_images).astype(np.int64) + 10 ** 18  # tweet ids, keys in no useful order
    per_shard = -(-n_images // n_shards)
    manifest = []
    for s in range(n_shards):
        name = f"shard-{s:06d}"
        places = np.array(write_tar(root / "shards" / f"{name}.tar", jpegs))
        tweet = ids[s * per_shard:(s + 1) * per_shard]
        n = len(tweet)
        member = np.arange(n) % MEMBERS
        pick = pa.array(rng.integers(0, len(pools["text"]), n))
        t0 = np.datetime64("2026-01-01T00:00:00", "us") + rng.integers(0, 10 ** 13, n).astype("timedelta64[us]")
        tweet_str = pc.cast(pa.array(tweet), pa.string())
        columns = {
            "key": pc.binary_join_element_wise(tweet_str, pa.scalar("0"), "_"), "tweet_id": tweet_str,
            "media_key": pc.binary_join_element_wise(pa.scalar("3"), tweet_str, "_"),
            "user_id": pc.cast(pa.array(rng.integers(0, n_images // 20 + 1, n)), pa.string()),
            "created_at": pa.array(t0, pa.timestamp("us", tz="UTC")),
            "collected_at": pa.array(t0 + np.timedelta64(30, "D"), pa.timestamp("us", tz="UTC")),
            **{k: v.take(pick) for k, v in pools.items()},
            "retweets": pa.array(rng.integers(0, 500, n)), "likes": pa.array(rng.integers(0, 5000, n)),
            "media_count": pa.array(np.ones(n, np.int32)),
            "url": pc.binary_join_element_wise(pa.scalar("https://pbs.twimg.com/media/"), tweet_str, ".jpg", ""),
            "status": pa.array(["ok"] * n), "shard": pa.array([f"{name}.tar"] * n),
            "offset": pa.array(places[member, 0]), "size": pa.array(places[member, 1]),
            "width": pa.array(np.full(n, photo_side, np.int32)), "height": pa.array(np.full(n, photo_side, np.int32)),
        }
        pq.write_table(conform(pa.table(columns), IMAGES, name), root / "shards" / f"{name}.parquet", compression="zstd")
        manifest.append({"name": f"{name}.tar", "rows": n})
    write_json({"schema_version": SCHEMA_VERSION, "prefix": "shard", "shards": manifest, "rows": n_images},
               root / "shards" / "manifest.json")
    keys = pc.binary_join_element_wise(pc.cast(pa.array(ids), pa.string()), pa.scalar("0"), "_")
    a = rng.integers(0, n_images, n_pairs)
    b = (a + rng.integers(1, n_images, n_pairs)) % n_images
    for split, count in (("train", n_pairs), ("val", min(64, n_pairs)), ("test", min(64, n_pairs))):
        write_table(pa.table({"hi_key": keys.take(pa.array(a[:count])), "lo_key": keys.take(pa.array(b[:count])),
                              "hi_pop": np.full(count, 10.0), "lo_pop": np.full(count, 1.0),
                              "prob": np.full(count, 0.99), "user_id": pa.array(["u"] * count),
                              "rule": pa.array(["base"] * count), "days_apart": np.zeros(count)}),
                    root / "pairs" / f"{split}.parquet", "pairs")
    write_locate_file(root / "shards")  # as shards build does last
    (root / "done").write_text("ok\n")
    return root


def in_child(cmd: list[str]) -> dict:
    """Run a Python command that prints a JSON line last; that line, with its wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed: {proc.stderr[-2000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - start}


def first_step(root: Path, out: Path, arch: str) -> dict:
    """`python -m train` for one step: seconds until its first batch and its peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", RUSAGE_WRAPPER, "-m", "train", "--shards", str(root / "shards"),
           "--pairs", str(root / "pairs"), "--out", str(out), "--arch", arch, "--batch-pairs", "4",
           "--max-steps", "1", "--backend", "torch", "--threads", "2", "--resize", "64", "--crop", "56"]
    child = in_child(cmd)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    startup = next(r["time/startup"] for r in records if "time/startup" in r)
    return {"startup_s": round(startup, 2), "peak_rss_mb": round(child["peak_rss_mb"]), "wall_s": round(child["wall_s"], 1)}


# Runs `python -m MODULE ARGS` in this process and prints its own peak RSS afterwards: ru_maxrss of
# the process itself, unaffected by anything else that runs on the machine.
RUSAGE_WRAPPER = ("import json, resource, runpy, sys; module = sys.argv[2]; sys.argv = [module] + sys.argv[3:]\n"
                  "try:\n    runpy.run_module(module, run_name='__main__')\nexcept SystemExit as e:\n"
                  "    assert not e.code, e.code\n"
                  "print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")

BASELINE = ("import json, resource, sys, time, pyarrow.parquet as pq; from pathlib import Path\n"
            "t = time.perf_counter(); root = Path(sys.argv[1]); cols = sys.argv[2].split(',')\n"
            "images = [pq.read_table(p, columns=cols) for p in sorted((root / 'shards').glob('*.parquet'))]\n"
            "pairs = pq.read_table(root / 'pairs' / 'train.parquet', columns=['hi_key', 'lo_key'])\n"
            "print(json.dumps({'seconds': time.perf_counter() - t, "
            "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")


# In a child of its own: a child's peak RSS starts from its parent's (Linux keeps ru_maxrss across
# exec), so the bench process itself must stay small until the start-up runs are measured.
LOCATE = ("import json, sys, time; t = time.perf_counter(); from shards.locate import write_locate_file\n"
          "write_locate_file(sys.argv[1]); print(json.dumps({'seconds': time.perf_counter() - t}))")


def host_side_rate(root: Path, steps: int, batch_pairs: int) -> dict:
    """Images/s of the loader with decoding skipped (shard reads, slicing, batch assembly, the
    prefetch thread), against a naive reader of the same images: open, seek and read each one."""
    import torch

    from train.config import DataConfig
    from train.data import PairLoader, World, load_pairs

    pairs = load_pairs(root / "pairs" / "train.parquet", root / "shards")
    loader = PairLoader(pairs, DataConfig(backend="torch", threads=1, prefetch=4), World(), batch_pairs, True,
                        torch.device("cpu"))
    loader.decoder = lambda encoded, seed: torch.zeros(len(encoded), 1)  # decoding skipped: host work only
    images, start = 0, time.perf_counter()
    for step, batch in loader.iterate(epoch=0):
        images += batch.images.shape[0]
        if step + 1 == steps:
            break
    ours = images / (time.perf_counter() - start)
    rows = np.unique(np.concatenate([pairs.hi[:steps * batch_pairs], pairs.lo[:steps * batch_pairs]]))
    start = time.perf_counter()
    for row in rows:
        pairs.index.read_row(row)
    naive = len(rows) / (time.perf_counter() - start)
    return {"host_images_per_s": round(ours), "naive_read_images_per_s": round(naive)}


def run(config: BenchConfig) -> dict:
    n_images, n_shards = config.pick((20_000, 20), (1_000_000, 200), (10_000_000, 2000))
    root = make_scaleset(config.workdir, n_images, n_shards, n_images // 2)
    tiny = make_scaleset(config.workdir, 2_000, 2, 1_000)
    arch = "resnet18" if config.quick else "resnet50"
    baseline = in_child([sys.executable, "-c", BASELINE, str(root), ",".join(LOCATE_COLUMNS)])
    (root / "shards" / LOCATE_FILE).unlink(missing_ok=True)
    locate = in_child([sys.executable, "-c", LOCATE, str(root / "shards")])  # what shards build adds at its end
    for cache in (root / "pairs").glob(".*.resolved"):
        cache.unlink()
    empty = first_step(tiny, config.workdir / "run-empty", arch)
    cold = first_step(root, config.workdir / "run-cold", arch)
    warm = first_step(root, config.workdir / "run-warm", arch)
    host = host_side_rate(root, config.pick(20, 200, 400), 64)
    # What the data costs at start-up: the cold start less an empty run's (torch, the model).
    data_s = max(0.01, cold["startup_s"] - empty["startup_s"])
    return {"stage": "scale", "unit": "s of start-up for the data (cold cache)", "value": round(data_s, 2),
            "baseline": "pyarrow reading the same columns, nothing resolved", "baseline_value": baseline["seconds"],
            "ratio": baseline["seconds"] / data_s, "images": n_images, "pairs": n_images // 2,
            "shards": n_shards, "arch": arch, "cold": cold, "warm": warm, "empty_run": empty,
            "rss_beyond_empty_mb": {"cold": cold["peak_rss_mb"] - empty["peak_rss_mb"],
                                    "warm": warm["peak_rss_mb"] - empty["peak_rss_mb"]},
            "baseline_peak_rss_mb": round(baseline["peak_rss_mb"]), "locate_file_write_s": round(locate["seconds"], 2),
            **host}
