"""`iipa eval`: what a researcher reads after a run.

Pairs (one manifest, or a pairs folder whose files are the splits; read and resolved to rows by
shards.locate.resolve_pairs, as the trainer reads them) ──▶ the images they name, read shard by
shard, each once ──▶ per image: the model's score, IIPA's score (when its weights are
given), the visual statistics and a face count ──▶ per pair: who was right ──▶ accuracy with
bootstrap intervals overall and by rule, split, popularity gap and user activity, user-centred
correlation, calibration and a bias check ──▶ REPORT/report.json (every number),
REPORT/report.md and PNG plots (eval.report).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eval.config import EvalConfig
from eval.metrics import (accuracy_with_interval, activity_buckets, grouped_accuracy, pair_correct, prob_buckets,
                          reliability, spearman, user_centred_correlation)
from eval.score import Scorer
from eval.visual import STATS, face_detector, image_stats
from shards.atomic import atomic_path
from shards.console import UserError, check_out, progress
from shards.locate import ShardIndex, merge_resolved, resolve_pairs
from shards.schema import parquet_files, read_table


# The manifest columns eval reads besides the keys, for the pairs kept.
PAIR_COLUMNS = ("user_id", "rule", "prob", "hi_pop", "lo_pop")


@dataclass
class Pairs:
    """The pairs whose two images are in the shards, as aligned arrays."""

    index: ShardIndex  # the images these pairs use, and where their bytes sit
    hi: np.ndarray  # rows of `index`
    lo: np.ndarray
    user: np.ndarray
    rule: np.ndarray
    split: np.ndarray
    prob: np.ndarray
    hi_pop: np.ndarray
    lo_pop: np.ndarray
    missing: int  # pairs dropped because an image is not in the shards


def load_pairs(path: Path, index: ShardIndex) -> Pairs:
    """One manifest, or every manifest of a folder with its file name as the split, through the
    trainer's reader (cached beside each manifest); refused when no pair has both images."""
    files = parquet_files(path)
    parts = [resolve_pairs(file, index, columns=PAIR_COLUMNS) for file in files]
    resolved = merge_resolved(parts, index)
    if not len(resolved.hi):
        raise UserError(f"{path}: none of its {resolved.missing} pairs has both images in {index.dir}")
    resolved.index.check_files()
    split = np.repeat(np.array([file.stem for file in files], dtype=object), [len(part.hi) for part in parts])
    c = resolved.columns
    return Pairs(resolved.index, resolved.hi, resolved.lo, c["user_id"], c["rule"], split, c["prob"],
                 c["hi_pop"], c["lo_pop"], resolved.missing)


def image_table(pairs: Pairs) -> dict[str, np.ndarray]:
    """One row per distinct image of the pairs, in key order: its row of `pairs.index`, key, user,
    log popularity S = ln(1 + p); and where each pair's images sit in it (hi_i, lo_i)."""
    rows, first = np.unique(np.concatenate([pairs.hi, pairs.lo]), return_index=True)
    keys = pairs.index.keys_of(rows)
    order = np.argsort(keys)  # key order, as scores.parquet has always listed the images
    rows, keys, first = rows[order], keys[order], first[order]
    users = np.concatenate([pairs.user, pairs.user])[first]
    pops = np.concatenate([pairs.hi_pop, pairs.lo_pop])[first]
    position = np.empty(len(pairs.index), dtype=np.int64)
    position[rows] = np.arange(len(rows))
    return {"row": rows, "key": keys, "user": users, "log_pop": np.log1p(pops),
            "hi_i": position[pairs.hi], "lo_i": position[pairs.lo]}


class StatsPool:
    """Visual statistics in a thread pool; OpenCV's cascade is not shared between threads."""

    def __init__(self, threads: int, faces: bool):
        self.pool = ThreadPoolExecutor(max(1, threads))
        self.faces, self.local = faces, threading.local()

    def _one(self, data: bytes):
        if self.faces and not hasattr(self.local, "detector"):
            self.local.detector = face_detector()
        return image_stats(data, getattr(self.local, "detector", None))

    def map(self, encoded: list[bytes]):
        return list(self.pool.map(self._one, encoded))


def shard_reader(index: ShardIndex, shard: str, rows: np.ndarray):
    """row → bytes for the rows of one shard: the whole tar read once, sequentially, when they
    make up a good part of it; seeks by offset when a test split needs only a few of its images."""
    if index.sizes[rows].sum() < 0.25 * (index.dir / shard).stat().st_size:
        return index.read_row
    data = index.read_shard(shard)
    return lambda row: index.slice(data, row)


def measure_images(rows: np.ndarray, index: ShardIndex, scorers: dict[str, Scorer], config: EvalConfig) -> dict:
    """Read each image (a row of `index`) once, shard by shard, each tar sequentially, and compute
    every scorer's score, the visual statistics and the face count; arrays aligned with `rows`."""
    out = {name: np.full(len(rows), np.nan) for name in (*scorers, *STATS)}
    out["faces"] = np.full(len(rows), -1, dtype=np.int64)
    shard_of = index.shard[rows]
    stats_pool = StatsPool(config.threads, config.faces)
    with progress(total=len(rows), desc="images", unit="img") as bar:
        for shard in np.unique(shard_of):
            positions = np.flatnonzero(shard_of == shard)
            read = shard_reader(index, index.shard_names[shard], rows[positions])
            for start in range(0, len(positions), config.batch_size):
                batch = positions[start:start + config.batch_size]
                encoded = [read(r) for r in rows[batch]]
                for name, scorer in scorers.items():
                    out[name][batch] = scorer.score(encoded)
                for row, st in zip(batch, stats_pool.map(encoded)):
                    for name in STATS:
                        out[name][row] = getattr(st, name)
                    out["faces"][row] = st.faces
                bar.update(len(batch))
    return out


def user_activity(config: EvalConfig, users: np.ndarray) -> np.ndarray:
    """Images per user in the images table (default: the shards' table, failures included)."""
    table = read_table(config.images if config.images is not None else config.shards, "images")
    counts = pc.value_counts(table.column("user_id")).to_pylist()
    per_user = {c["values"]: c["counts"] for c in counts}
    return np.array([per_user.get(u, 0) for u in users], dtype=np.int64)


def accuracy_section(pairs: Pairs, correct: dict[str, np.ndarray], config: EvalConfig) -> dict:
    """Accuracy of every scorer overall and by rule, split, P bucket and user activity."""
    n, seed = config.bootstrap, config.seed
    bucket, bucket_order = prob_buckets(pairs.prob)
    activity, activity_order = activity_buckets(user_activity(config, pairs.user), pairs.user)
    groupings = {"rule": (pairs.rule, None), "split": (pairs.split, None), "prob": (bucket, bucket_order),
                 "activity": (activity, activity_order)}
    overall = {name: accuracy_with_interval(c, n, seed) for name, c in correct.items()}
    overall["chance"] = {"accuracy": 0.5, "low": 0.5, "high": 0.5, "pairs": len(pairs.hi)}
    by = {group: {name: grouped_accuracy(c, labels, n, seed, order) for name, c in correct.items()}
          for group, (labels, order) in groupings.items()}
    return {"accuracy": overall, "by": by}


def bias_section(images: dict, measured: dict, correct_model: np.ndarray) -> dict:
    """Does the model favour faces? Mean score and win rates with and without faces, beside how
    often such images truly won; and how the score follows simple visual statistics."""
    score = measured["model"]
    section: dict = {"score_vs": {name: spearman(score, measured[name]) for name in STATS}}
    faces = measured["faces"]
    if (faces < 0).all():
        section["faces"] = {"available": False, "why": "OpenCV with its Haar cascades is not installed "
                                                       "(pip install 'opencv-python-headless<5')"}
        return section
    hi_i, lo_i = images["hi_i"], images["lo_i"]
    has = faces > 0
    model_hi_wins = score[hi_i] > score[lo_i]
    groups = {}
    for label, flag in (("with_faces", True), ("without_faces", False)):
        as_hi, as_lo = has[hi_i] == flag, has[lo_i] == flag
        appearances = int(as_hi.sum() + as_lo.sum())
        groups[label] = {
            "images": int((has == flag).sum()),
            "mean_score": float(score[has == flag].mean()) if (has == flag).any() else float("nan"),
            "model_win_rate": float((model_hi_wins[as_hi].sum() + (~model_hi_wins[as_lo]).sum()) / appearances)
            if appearances else float("nan"),
            "observed_win_rate": float(as_hi.sum() / appearances) if appearances else float("nan"),
            "pair_appearances": appearances,
        }
    mixed = has[hi_i] != has[lo_i]  # pairs of one face image and one without
    face_is_hi = has[hi_i][mixed]
    model_prefers_face = np.where(face_is_hi, model_hi_wins[mixed], ~model_hi_wins[mixed])
    section["faces"] = {
        "available": True, "detector": "OpenCV haarcascade_frontalface_default", **groups,
        "face_vs_no_face_pairs": {
            "pairs": int(mixed.sum()),
            "model_prefers_face": float(model_prefers_face.mean()) if mixed.any() else float("nan"),
            "face_more_popular": float(face_is_hi.mean()) if mixed.any() else float("nan"),
            "model_accuracy": float(correct_model[mixed].mean()) if mixed.any() else float("nan"),
        },
    }
    return section


def write_image_scores(images: dict, measured: dict, path: Path) -> None:
    """REPORT/scores.parquet: per image its user, log popularity, every score and statistic."""
    table = pa.table({"key": images["key"].astype(str), "user_id": images["user"].astype(str),
                      "log_pop": images["log_pop"], **measured})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def evaluate(config: EvalConfig) -> dict:
    """Score every image of the pairs once and write REPORT/report.{json,md} and plots."""
    from eval.report import write_report

    if config.bootstrap < 1 or config.batch_size < 1 or config.threads < 1 or config.seed < 0:
        raise UserError("--bootstrap, --batch-size and --threads must be ≥ 1 and --seed ≥ 0")
    check_out(config.out)
    index = ShardIndex(config.shards)
    pairs = load_pairs(Path(config.pairs), index)
    scorers = {"model": Scorer(config.model, config.backend, config.batch_size, config.threads, config.device)}
    if config.iipa:
        scorers["iipa"] = Scorer(f"iipa:{config.iipa}", config.backend, config.batch_size, config.threads,
                                 config.device)
    images = image_table(pairs)
    measured = measure_images(images["row"], pairs.index, scorers, config)
    hi_i, lo_i = images["hi_i"], images["lo_i"]
    # Figure-4 order: the model, IIPA's weights, the visual statistics; chance is added last.
    correct = {name: pair_correct(measured[name][hi_i], measured[name][lo_i]) for name in (*scorers, *STATS)}
    section = accuracy_section(pairs, correct, config)
    report = {
        "model": str(config.model), "pairs_file": str(config.pairs), "pairs": len(pairs.hi),
        "pairs_without_images": pairs.missing, "images": len(images["key"]),
        "users": len(np.unique(pairs.user)),
        "accuracy": section["accuracy"],
        "by_rule": section["by"]["rule"]["model"],
        "by": section["by"],
        "correlation": {name: user_centred_correlation(measured[name], images["log_pop"], images["user"])
                        for name in (*scorers, *STATS)},
        "calibration": {name: reliability(measured[name][hi_i], measured[name][lo_i]) for name in scorers},
        "bias": bias_section(images, measured, correct["model"]),
        "preprocess": {name: s.meta["preprocess"] for name, s in scorers.items()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
    }
    write_image_scores(images, measured, Path(config.out) / "scores.parquet")
    write_report(report, config, {"hi": measured["model"][hi_i], "lo": measured["model"][lo_i],
                                  "faces": measured["faces"], "scores": measured["model"]})
    return report
