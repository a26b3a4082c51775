"""Writing an evaluation: report.json with every number, report.md with the tables, PNG plots.

Plots: the Figure-4-style accuracy chart of every scorer, accuracy against training batches
(from the run's metrics.jsonl), score distributions, and the reliability diagram.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from shards.atomic import atomic_path
from shards.schema import write_json
from train.metrics import plot_curve, save_figure, validation_curve

LABELS = {"model": "model (this run)", "iipa": "IIPA weights, not fine-tuned", "brightness": "brightness",
          "colourfulness": "colourfulness", "contrast": "contrast", "sharpness": "sharpness", "chance": "chance"}
GROUP_TITLES = {"rule": "By rule", "split": "By split", "prob": "By popularity gap: P(hi ≻ lo) of the pair",
                "activity": "By user activity (images of the user)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    return save_figure(fig, path).name


def plot_accuracy(accuracy: dict, path: Path) -> str:
    """Figure-4 style: each scorer's pairwise accuracy with its 95% interval."""
    plt = _pyplot()
    names = list(accuracy)
    acc = np.array([accuracy[n]["accuracy"] for n in names])
    low = np.array([accuracy[n].get("low", accuracy[n]["accuracy"]) for n in names])
    high = np.array([accuracy[n].get("high", accuracy[n]["accuracy"]) for n in names])
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * len(names)))
    colours = ["tab:blue" if n == "model" else "tab:orange" if n == "iipa" else "tab:grey" for n in names]
    ax.barh([LABELS.get(n, n) for n in names], acc, xerr=[acc - low, high - acc], color=colours, capsize=3)
    ax.axvline(0.5, color="black", linestyle="--", linewidth=0.8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="pairwise accuracy (95% bootstrap interval)")
    return _save(fig, path)


def plot_run_curve(run: Path, path: Path, references: dict[str, float] | None = None) -> str | None:
    """The run's validation curve (from its metrics.jsonl), with `references` as lines."""
    points = validation_curve(run)
    return plot_curve(points, path, references).name if points else None


def plot_scores(series: dict, path: Path) -> str:
    """Score distributions: the more and the less popular image of each pair; faces or not."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.histogram_bin_edges(np.concatenate([series["hi"], series["lo"]]), bins=30)
    axes[0].hist(series["hi"], bins=bins, alpha=0.6, label="more popular of the pair")
    axes[0].hist(series["lo"], bins=bins, alpha=0.6, label="less popular of the pair")
    axes[0].set(xlabel="score", ylabel="pairs")
    axes[0].legend()
    faces, scores = series["faces"], series["scores"]
    for label, mask in (("faces", faces > 0), ("no face", faces == 0)):
        if mask.any():
            axes[1].hist(scores[mask], bins=bins, alpha=0.6, density=True, label=f"{label} ({mask.sum()})")
            axes[1].legend()
    axes[1].set(xlabel="score", ylabel="density", title="images with and without faces")
    return _save(fig, path)


def plot_reliability(calibration: dict, path: Path) -> str:
    """Confidence of logistic(s_hi − s_lo) against observed accuracy, per scorer."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0.5, 1], [0.5, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for name, cal in calibration.items():
        bins = cal["bins"]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                label=f"{LABELS.get(name, name)} (ECE {cal['ece']:.3f})")
    ax.set(xlabel="predicted P(chosen image is more popular)", ylabel="observed accuracy", xlim=(0.5, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    return _save(fig, path)


def _acc(a: dict | None) -> str:
    if not a:
        return "–"
    text = f"{a['accuracy']:.3f}"
    if "low" in a and a["low"] != a["high"]:
        text += f" [{a['low']:.3f}, {a['high']:.3f}]"
    return text


def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def figure4_table(report: dict) -> list[str]:
    """Scorers as rows; overall accuracy and per-split/per-rule columns, as in IIPA's Figure 4."""
    by = report["by"]
    columns = [("split", s) for s in by["split"]["model"]] if len(by["split"]["model"]) > 1 else []
    columns += [("rule", r) for r in by["rule"]["model"]]
    head = "| scorer | all pairs | " + " | ".join(f"{g} {v}" for g, v in columns) + " | user-centred SRCC |"
    lines = [head, "|" + "---|" * (3 + len(columns))]
    for name, a in report["accuracy"].items():
        cells = [_acc(by[g].get(name, {}).get(v)) if name in by[g] else "0.500" for g, v in columns]
        corr = report["correlation"].get(name, {}).get("spearman")
        lines.append(f"| {LABELS.get(name, name)} | {_acc(a)} | " + " | ".join(cells) + f" | {_num(corr)} |")
    return lines


def group_tables(report: dict) -> list[str]:
    lines = []
    scorers = [n for n in report["accuracy"] if n != "chance"]
    for group, title in GROUP_TITLES.items():
        labels = list(report["by"][group]["model"])
        lines += [f"### {title}", "", "| scorer | " + " | ".join(labels) + " |", "|" + "---|" * (1 + len(labels))]
        pairs = [str(report["by"][group]["model"][g]["pairs"]) for g in labels]
        lines.append("| pairs | " + " | ".join(pairs) + " |")
        for name in scorers:
            lines.append(f"| {LABELS.get(name, name)} | " +
                         " | ".join(_acc(report["by"][group][name].get(g)) for g in labels) + " |")
        lines.append("")
    return lines


def bias_lines(bias: dict) -> list[str]:
    lines = ["## Bias check", "", "Spearman correlation of the model's score with simple statistics: " +
             ", ".join(f"{k} {_num(v)}" for k, v in bias["score_vs"].items()) + ".", ""]
    faces = bias["faces"]
    if not faces["available"]:
        return lines + [f"Faces: not checked ({faces['why']}).", ""]
    lines += ["| images | count | mean score | model win rate | observed win rate |", "|---|---|---|---|---|"]
    for label in ("with_faces", "without_faces"):
        g = faces[label]
        lines.append(f"| {label.replace('_', ' ')} | {g['images']} | {_num(g['mean_score'])} | "
                     f"{_num(g['model_win_rate'])} | {_num(g['observed_win_rate'])} |")
    mixed = faces["face_vs_no_face_pairs"]
    lines += ["", f"In the {mixed['pairs']} pairs of a face image and an image without one, the model prefers the face "
                  f"in {_num(mixed['model_prefers_face'])} of them; the face image was the more popular in "
                  f"{_num(mixed['face_more_popular'])}. A preference well above the observed share is a face bias.", ""]
    return lines


def write_report(report: dict, config, series: dict) -> None:
    """report.json (every number), report.md and the PNG plots, in config.out."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    plots = {"accuracy": plot_accuracy(report["accuracy"], out / "accuracy.png"),
             "scores": plot_scores(series, out / "scores.png"),
             "reliability": plot_reliability(report["calibration"], out / "reliability.png")}
    model = str(config.model)
    if not model.startswith("iipa:"):
        curve = plot_run_curve(Path(model).parent, out / "val_curve.png")
        if curve:
            plots["val_curve"] = curve
    report["plots"] = plots
    write_json(report, out / "report.json")
    corr = report["correlation"]["model"]
    cal = report["calibration"]["model"]
    text = [
        "# Pairwise accuracy", "",
        f"Model `{config.model}` on `{config.pairs}`: {report['pairs']} pairs of {report['images']} images from "
        f"{report['users']} users ({report['pairs_without_images']} pairs left out: an image is not in the shards).", "",
        "| scorer | accuracy | 95% interval | pairs |", "|---|---|---|---|",
        *(f"| {LABELS.get(n, n)} | {a['accuracy']:.3f} | " + (f"[{a['low']:.3f}, {a['high']:.3f}]" if "low" in a else "")
          + f" | {a['pairs']} |" for n, a in report["accuracy"].items()), "",
        "![accuracy of every scorer](accuracy.png)", "",
        "## In the style of IIPA's Figure 4", "", *figure4_table(report), "",
        "## Breakdown", "", *group_tables(report),
        "## Correlation with log popularity within users", "",
        f"User-centred SRCC {_num(corr['spearman'])}, PLCC {_num(corr['pearson'])} over {corr['images']} images of "
        f"{corr['users']} users (the Retweet Wars paper reports SRCC 0.358 on Twitter 2015); mean per-user SRCC "
        f"{_num(corr['mean_user_spearman'])}.", "",
        "## Calibration", "",
        f"P(hi ≻ lo) = logistic(s_hi − s_lo): expected calibration error {_num(cal['ece'])}.", "",
        "![reliability diagram](reliability.png)", "",
        *bias_lines(report["bias"]),
        "## Plots", "", "![score distributions](scores.png)", "",
        *(["![validation accuracy against training batches](val_curve.png)", ""] if "val_curve" in plots else []),
    ]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(text))
