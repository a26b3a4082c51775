"""Statistics of pair manifests in the shape of IIPA's Table 1, and their plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _share(values) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def split_stats(rows, hi: np.ndarray, lo: np.ndarray, table: pa.Table) -> dict:
    """IIPA Table 1 statistics of one split: counts, means and shares over its images and pairs."""
    images = np.unique(np.concatenate([hi, lo]))
    rules = table.column("rule").to_numpy(zero_copy_only=False)
    return {
        "pairs": int(len(hi)),
        "users": int(len(np.unique(rows.user[hi]))) if len(hi) else 0,
        "images": int(len(images)),
        "mean_likes": float(rows.likes[images].mean()) if len(images) else 0.0,
        "mean_retweets": float(rows.retweets[images].mean()) if len(images) else 0.0,
        "mean_prob": _share(table.column("prob").to_numpy()),
        "mean_days_apart": _share(table.column("days_apart").to_numpy()),
        "share_no_hashtag": _share([not rows.tags[i] for i in images]),
        "share_no_mention": _share([not rows.mentions[i] for i in images]),
        "share_no_caption": _share(rows.n_words[images] == 0),
        "by_rule": {str(r): int(c) for r, c in zip(*np.unique(rules, return_counts=True))},
    }


def write_plot(out: Path) -> Path:
    """pairs.png: the distribution of P(hi ≻ lo) and of days apart, per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_p, ax_d) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name in ("train", "val", "test"):
        table = pq.read_table(out / f"{name}.parquet", columns=["prob", "days_apart"])
        if table.num_rows:
            ax_p.hist(table.column("prob").to_numpy(), bins=30, range=(0.95, 1.0), alpha=0.6, label=name)
            ax_d.hist(table.column("days_apart").to_numpy(), bins=30, alpha=0.6, label=name)
    ax_p.set(xlabel="P(hi ≻ lo)", ylabel="pairs", title="Thurstone probability")
    ax_d.set(xlabel="days apart", title="time between the two posts")
    ax_p.legend()
    fig.tight_layout()
    path = out / "pairs.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
