"""`iipa bench loader`: can the pair loader feed a ResNet-50 step on this machine?

Measures the loader alone (shard reads, decoding, augmentation) in pairs/s and images/s for each
decoding backend offered here, against the model alone on synthetic tensors (the upper bound of
a training step) in the same run. The loader is not the bottleneck when the ratio is above 1.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from cluster.bench import BenchConfig
from cluster.benches.trainset import make_trainset
from train.config import DataConfig
from train.data import PairLoader, World, load_pairs
from train.decode import BACKENDS
from train.model import build_model


def loader_rate(workdir, backend: str, batch_pairs: int, steps: int, device) -> dict:
    pairs = load_pairs(workdir / "pairs" / "train.parquet", workdir / "shards")
    config = DataConfig(backend=backend, threads=torch.get_num_threads())
    loader = PairLoader(pairs, config, World(), batch_pairs, True, device, seed=0)
    n_pairs = n_images = 0
    start = None
    for step, batch in loader.iterate(epoch=0):
        if step == 1:  # the first batch pays for pipeline construction; time the rest
            start, n_pairs, n_images = time.perf_counter(), 0, 0
        n_pairs += len(batch.pair_ids)
        n_images += batch.images.shape[0]
        if step == steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()  # the CPU waits for the GPU here, to time finished work
    seconds = time.perf_counter() - start
    return {"pairs_per_s": n_pairs / seconds, "images_per_s": n_images / seconds}


def model_rate(arch: str, images: int, steps: int, device, crop: int = 224) -> float:
    """Images/s of forward + backward + Adam on synthetic tensors: the step's upper bound."""
    model = build_model(arch).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    x = torch.randn(images, 3, crop, crop, device=device)
    cuda = device.type == "cuda"
    if cuda:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    idx = torch.arange(images, device=device)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            scores = model(x).squeeze(1).float()
        loss = torch.nn.functional.softplus(scores[idx[1::2]] - scores[idx[::2]]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()  # the CPU waits for the GPU here, to time finished work
        times.append(time.perf_counter() - t)
    return images / float(np.median(times[1:]))


def run(config: BenchConfig) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    batch_pairs = 4 if config.quick else (64 if cuda else 16)
    steps = 3 if config.quick else (20 if cuda else 8)
    workdir = make_trainset(config.workdir, 200 if config.quick else 800, 2000)
    backends = {name: loader_rate(workdir, name, batch_pairs, steps, device)
                for name in BACKENDS if name != "torch" or not cuda or len(BACKENDS) == 1}
    model_images_per_s = model_rate("resnet50", 2 * batch_pairs, 2 if config.quick else 3, device)
    best = max(backends, key=lambda b: backends[b]["images_per_s"])
    value = backends[best]["images_per_s"]
    return {"stage": "loader", "unit": "images/s", "value": value, "backend": best,
            "baseline": "resnet50 step alone on synthetic tensors", "baseline_value": model_images_per_s,
            "ratio": value / model_images_per_s, "per_backend": backends, "batch_pairs": batch_pairs,
            "device": torch.cuda.get_device_name() if cuda else "cpu", "per_gpu": cuda,
            "loader_is_bottleneck": value < model_images_per_s}
