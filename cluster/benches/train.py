"""`iipa bench train`: the real training step (loader, DDP-ready loop, optimiser) against the
model alone on synthetic tensors, in the same run: how close the trainer gets to its upper bound,
and the share of step time spent waiting for data. On a GPU, one figure per GPU backend."""
from __future__ import annotations

import json
import shutil

import torch

from cluster.bench import BenchConfig
from cluster.benches.loader import model_rate
from cluster.benches.trainset import make_trainset
from train.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from train.decode import BACKENDS
from train.loop import train


def trainer_rate(workdir, backend: str, batch_pairs: int, steps: int, arch: str = "resnet50",
                 compile: bool = False, crop: int = 224, resize: int = 256, run_dir=None) -> dict:
    """The real trainer for `steps` timed steps (after one of warm-up) on WORKDIR/{shards,pairs}."""
    out = (run_dir or workdir) / f"run-{backend}-{batch_pairs}{'-compiled' if compile else ''}"
    shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig(
        data=DataConfig(shards=workdir / "shards", pairs=workdir / "pairs", backend=backend,
                        threads=max(2, torch.get_num_threads()), crop=crop, resize=resize),
        model=ModelConfig(arch=arch),
        run=RunConfig(out=out, batch_pairs=batch_pairs, max_steps=steps + 1, log_every=1, val_every=10 ** 9,
                      ckpt_every=10 ** 9, compile=compile))
    train(config)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "time/step" in r][1:]  # the first step pays for warm-up
    step_s = sum(r["time/step"] for r in timed)
    data_s = sum(r["time/data"] for r in timed)
    images = sum(r["throughput/images_per_s"] * r["time/step"] for r in timed)
    return {"images_per_s": images / step_s, "pairs_per_s": images / step_s / 2, "data_wait_share": data_s / step_s}


def run(config: BenchConfig) -> dict:
    cuda = torch.cuda.is_available()
    batch_pairs = 2 if config.quick else (64 if cuda else 4)
    steps = 2 if config.quick else (30 if cuda else 3)
    workdir = make_trainset(config.workdir, 200 if config.quick else 800, 2000)
    names = [b for b in BACKENDS if b != "torch"] if cuda else ["torch"]
    per_backend = {name: trainer_rate(workdir, name, batch_pairs, steps) for name in names}
    upper = model_rate("resnet50", 2 * batch_pairs, 2 if config.quick else 3, torch.device("cuda" if cuda else "cpu"))
    best = max(per_backend, key=lambda b: per_backend[b]["images_per_s"])
    value = per_backend[best]["images_per_s"]
    return {"stage": "train", "unit": "images/s", "value": value, "backend": best,
            "baseline": "resnet50 step alone on synthetic tensors", "baseline_value": upper,
            "ratio": value / upper, "data_wait_share": per_backend[best]["data_wait_share"],
            "per_backend": per_backend, "batch_pairs": batch_pairs, "per_gpu": cuda,
            "device": torch.cuda.get_device_name() if cuda else "cpu"}
