"""Namespaced metrics as JSONL (rank 0 only) and the accuracy-versus-batches curve."""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

from shards.atomic import atomic_path


class MetricsLog:
    """Appends one JSON object per line to RUN/metrics.jsonl; silent on ranks other than 0."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        if enabled:
            out.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def process_age() -> float:
    """Seconds since this process started (from /proc on Linux; elsewhere since this module was
    imported), so start-up is timed from the interpreter's start, torch import included."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time() - _IMPORTED


_IMPORTED = time.time()


def read_metrics(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def validation_curve(run: Path) -> list[tuple[int, float]]:
    """(step, validation accuracy) in step order; a resumed run keeps the latest value per step."""
    points = {r["step"]: r["acc/val"] for r in read_metrics(run) if "acc/val" in r}
    return sorted(points.items())


def write_curve(run: Path) -> Path | None:
    """val_curve.csv and val_curve.png: validation accuracy against training batches."""
    points = validation_curve(run)
    if not points:
        return None
    run = Path(run)
    with open(run / "val_curve.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["batches", "val_accuracy"])
        writer.writerows(points)
    return plot_curve(points, run / "val_curve.png")


def plot_curve(points: list[tuple[int, float]], path: Path, references: dict[str, float] | None = None) -> Path:
    """The one validation-curve plot (the run's, eval's and the demo's): accuracy against training
    batches, with chance and any `references` (label → accuracy, e.g. the oracle) as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="validation")
    ax.axhline(0.5, color="grey", linestyle="--", label="chance")
    for (label, value), colour in zip((references or {}).items(), ("tab:green", "tab:orange", "tab:red")):
        ax.axhline(value, color=colour, linestyle="-.", label=label)
    ax.set(xlabel="training batches", ylabel="validation pairwise accuracy", ylim=(0.4, 1.0),
           title="Validation accuracy")
    ax.legend()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write atomically as PNG, and free a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")  # the temp name has no .png to tell matplotlib
    plt.close(fig)
    return path


class AuditLog:
    """RUN/audit/rank-R.jsonl: the pair ids each step of this rank trained on, and a digest of
    the final parameters, so a DDP run can be checked: every pair once per epoch, ranks in sync.
    A resumed run appends; the latest record for a step is the one that counts."""

    def __init__(self, out: Path, rank: int):
        self.path = out / "audit" / f"rank-{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def step(self, epoch: int, step: int, pair_ids) -> None:
        self._append({"epoch": epoch, "step": step, "pairs": [int(i) for i in pair_ids]})

    def final(self, step: int, model) -> None:
        import hashlib

        digest = hashlib.sha1()
        for value in model.parameters():  # parameters, not buffers: BN statistics are per rank
            digest.update(value.detach().float().cpu().numpy().tobytes())
        self._append({"final": True, "step": step, "params_sha1": digest.hexdigest()})
