"""`iipa demo`: every stage end to end on the embedded synthetic data, on this machine.

synthetic archive → ingest archive → pairs build (twitter preset, user split) →
shards build --only-paired (local Ray) → train under torchrun (small ResNet, small images) →
eval on the held-out users, reported beside chance and the oracle (the latent appeal itself).
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from eval.evaluate import EvalConfig, evaluate
from eval.metrics import accuracy_with_interval, pair_correct
from ingest.archive import ArchiveConfig, ingest_archive
from ingest.synthetic import SyntheticConfig, generate
from shards.build import BuildConfig, build_shards
from shards.console import UserError, check_out
from shards.build.fetch import FetchConfig
from shards.pairs import PairsConfig, build_pairs
from shards.build.resize import ResizeConfig
from shards.schema import read_table, write_json

log = logging.getLogger("iipa.demo")


@dataclass
class DemoConfig:
    """Options of `iipa demo`; `quick` is the small version the test suite runs."""

    out: Path = Path("demo")
    """Folder for every stage's output and the report."""
    quick: bool = False
    """A smaller data set and fewer steps (about a minute)."""
    seed: int = 0
    """Seed of the synthetic data and of training."""
    nproc: int = 2
    """Training ranks under torchrun (gloo on the CPU)."""

    @property
    def users(self) -> int:
        return 40 if self.quick else 60

    @property
    def tweets_per_user(self) -> int:
        return 24 if self.quick else 40

    @property
    def steps(self) -> int:
        return 30 if self.quick else 90

    @property
    def batch_pairs(self) -> int:
        return 16 if self.quick else 24


def oracle_accuracy(images: Path, appeal: Path, pairs: Path) -> dict:
    """Accuracy of the latent appeal itself on the pairs: the best any image-only model can do."""
    table = read_table(images, "images")
    media = dict(zip(table.column("key").to_pylist(), table.column("media_key").to_pylist()))
    appeal_table = pq.read_table(appeal)
    value = dict(zip(appeal_table.column("media_key").to_pylist(), appeal_table.column("appeal").to_pylist()))
    test = read_table(pairs, "pairs")
    hi = [value[media[k]] for k in test.column("hi_key").to_pylist()]
    lo = [value[media[k]] for k in test.column("lo_key").to_pylist()]
    return accuracy_with_interval(pair_correct(np.array(hi), np.array(lo)))


def train_under_torchrun(config: DemoConfig, out: Path) -> None:
    cmd = [sys.executable, "-m", "train", "--shards", str(out / "shards"), "--pairs", str(out / "pairs"),
           "--out", str(out / "run"), "--arch", "resnet18", "--resize", "64", "--crop", "56",
           "--batch-pairs", str(config.batch_pairs), "--lr-backbone", "1e-3", "--lr-head", "1e-3", "--epochs", "5",
           "--max-steps", str(config.steps), "--val-every", str(config.steps // 6), "--log-every", "5",
           "--seed", str(config.seed), "--backend", "torch", "--threads", "1",
           "--nproc-per-node", str(config.nproc)]
    if subprocess.call(cmd) != 0:
        raise RuntimeError("training failed; see the output above")


def write_demo_report(out: Path, summary: dict) -> None:
    acc = summary["accuracy"]
    lines = [
        "# iipa demo", "",
        f"Synthetic data: {summary['images']} images of {summary['users']} users; "
        f"pairs train/val/test = {summary['pairs']['train']}/{summary['pairs']['val']}/{summary['pairs']['test']} "
        "(split by user: test users are never seen in training).", "",
        "| scorer | pairwise accuracy on held-out users | 95% interval |", "|---|---|---|",
        *(f"| {name} | {a['accuracy']:.3f} | " + (f"[{a['low']:.3f}, {a['high']:.3f}]" if "low" in a else "") + " |"
          for name, a in acc.items()), "",
        "The oracle ranks by each image's latent appeal (the pixels' true effect); the rest of the popularity "
        "gap is user, time and noise, which no image-only model can see.", "",
        "![validation accuracy against training batches](run/val_curve.png)", "",
        f"Stage times (s): {json.dumps(summary['seconds'])}", "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    write_json(summary, out / "report.json")


def run_demo(config: DemoConfig) -> dict:
    """Run every stage; return the summary written to OUT/report.json."""
    out = Path(config.out)
    if config.nproc < 1 or config.seed < 0:
        raise UserError(f"--nproc must be ≥ 1 and --seed ≥ 0, got {config.nproc} and {config.seed}")
    check_out(out)
    if out.exists() and any(out.iterdir()) and not (out / "raw").exists():
        raise UserError(f"{out}: exists and is not a demo folder; choose another --out")
    seconds: dict[str, float] = {}

    def stage(name: str, fn, *args):
        log.info("stage %s …", name)
        start = time.perf_counter()
        result = fn(*args)
        seconds[name] = round(time.perf_counter() - start, 1)
        return result

    raw = stage("synthetic", generate, SyntheticConfig(out / "raw", config.users, config.tweets_per_user, 128, config.seed))
    stage("ingest", ingest_archive, ArchiveConfig([out / "raw" / "archive.jsonl"], out / "images.parquet"))
    stats = stage("pairs", build_pairs, PairsConfig(images=out / "images.parquet", out=out / "pairs",
                                                       split_shares=(0.7, 0.15, 0.15), seed=config.seed))
    stage("shards", build_shards, BuildConfig(images=out / "images.parquet", out=out / "shards",
                                              only_paired=out / "pairs", shard_size=500, workers=2,
                                              fetch=FetchConfig(allow_hosts=(), allow_local=(out / "raw",)),
                                              resize=ResizeConfig(size=64)))
    stage("train", train_under_torchrun, config, out)
    report = stage("eval", evaluate, EvalConfig(str(out / "run" / "model.pth"), out / "shards",
                                                out / "pairs" / "test.parquet", out / "eval"))
    accuracy = dict(report["accuracy"])
    accuracy["oracle"] = oracle_accuracy(out / "images.parquet", out / "raw" / "appeal.parquet",
                                         out / "pairs" / "test.parquet")
    summary = {"images": raw["images"], "users": raw["users"],
               "pairs": {s: v["pairs"] for s, v in stats["splits"].items()},
               "accuracy": accuracy, "seconds": seconds}
    write_demo_report(out, summary)
    return summary
