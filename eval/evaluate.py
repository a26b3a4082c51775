"""`iipa eval`: pairwise accuracy of a model on a pair manifest, with chance beside it, as a report."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.metrics import accuracy_with_interval, pair_correct
from eval.score import Scorer
from shards.console import UserError, progress
from shards.locate import ShardIndex
from shards.schema import read_table, write_json


@dataclass
class EvalConfig:
    """Options of `iipa eval`."""

    model: str
    """A run's model.pth (model.json beside it)."""
    shards: Path
    """Shards folder holding the pairs' images."""
    pairs: Path
    """Pair manifest (e.g. PAIRS/test.parquet)."""
    out: Path
    """Report folder: report.json, report.md and plots."""
    backend: str = "torch"
    """Decoding backend (see train.data.BACKENDS)."""
    batch_size: int = 128
    """Images per forward pass."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% interval."""
    seed: int = 0
    """Seed of the bootstrap."""


def score_keys(scorer: Scorer, index: ShardIndex, keys: np.ndarray) -> dict[str, float]:
    """Score every key once, reading shard by shard."""
    order = np.argsort(index.shard_of(keys), kind="stable")
    scores: dict[str, float] = {}
    step = scorer.batch_size
    for start in progress(range(0, len(keys), step), desc="scoring", unit="batch"):
        chunk = keys[order[start:start + step]]
        values = scorer.score([index.read(k) for k in chunk])
        scores.update(zip(chunk, values.tolist()))
    return scores


def evaluate(config: EvalConfig) -> dict:
    """Score both images of every pair and report the model's pairwise accuracy against chance."""
    index = ShardIndex(config.shards)
    pairs = read_table(config.pairs, "pairs")
    hi = pairs.column("hi_key").to_numpy(zero_copy_only=False)
    lo = pairs.column("lo_key").to_numpy(zero_copy_only=False)
    present = np.fromiter((a in index and b in index for a, b in zip(hi, lo)), dtype=bool, count=len(hi))
    if not present.any():
        raise UserError(f"{config.pairs}: none of its pairs has both images in {config.shards}")
    hi, lo = hi[present], lo[present]
    rules = pairs.column("rule").to_numpy(zero_copy_only=False)[present]
    scorer = Scorer(config.model, config.backend, config.batch_size)
    scores = score_keys(scorer, index, np.unique(np.concatenate([hi, lo])))
    correct = pair_correct([scores[k] for k in hi], [scores[k] for k in lo])
    model = accuracy_with_interval(correct, config.bootstrap, config.seed)
    report = {
        "model": str(config.model), "pairs_file": str(config.pairs), "pairs": int(len(hi)),
        "pairs_without_images": int((~present).sum()),
        "accuracy": {"model": model, "chance": {"accuracy": 0.5, "pairs": int(len(hi))}},
        "by_rule": {str(r): accuracy_with_interval(correct[rules == r], config.bootstrap, config.seed)
                    for r in np.unique(rules)},
    }
    write_report(report, config, scores)
    return report


def write_report(report: dict, config: EvalConfig, scores: dict[str, float]) -> None:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    curve = Path(str(config.model)).with_name("val_curve.png")
    if curve.exists():
        shutil.copyfile(curve, out / "val_curve.png")
    write_json(report, out / "report.json")
    rows = [f"| {name} | {a['accuracy']:.3f} | " + (f"[{a['low']:.3f}, {a['high']:.3f}]" if "low" in a else "") + f" | {a['pairs']} |"
            for name, a in report["accuracy"].items()]
    rules = [f"| {name} | {a['accuracy']:.3f} | [{a['low']:.3f}, {a['high']:.3f}] | {a['pairs']} |"
             for name, a in report["by_rule"].items()]
    text = "\n".join([
        "# Pairwise accuracy", "", f"Model `{config.model}` on `{config.pairs}` ({report['pairs']} pairs).", "",
        "| scorer | accuracy | 95% interval | pairs |", "|---|---|---|---|", *rows, "",
        "## By rule", "", "| rule | accuracy | 95% interval | pairs |", "|---|---|---|---|", *rules, "",
        *(["![validation accuracy against training batches](val_curve.png)", ""] if curve.exists() else []),
    ])
    (out / "report.md").write_text(text)
