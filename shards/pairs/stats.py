"""Statistics of pair manifests in the shape of IIPA's Table 1, their printed summary and plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

COLUMNS = (("pairs", "pairs", "d"), ("users", "users", "d"), ("images", "images", "d"),
           ("mean_likes", "likes", ".1f"), ("mean_retweets", "RTs", ".1f"), ("mean_prob", "mean P", ".4f"),
           ("mean_days_apart", "days", ".2f"), ("share_no_hashtag", "no #", ".1%"),
           ("share_no_mention", "no @", ".1%"), ("share_no_caption", "no caption", ".1%"))


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def pair_stats(rows, hi: np.ndarray, lo: np.ndarray, rule: np.ndarray, prob: np.ndarray, days: np.ndarray) -> dict:
    """IIPA Table 1 statistics of a set of pairs: counts, means and shares over its images and pairs."""
    images = np.zeros(len(rows.order), bool)
    images[hi] = images[lo] = True
    images = np.flatnonzero(images)  # (np.unique is slow on millions)
    users = np.zeros(int(rows.user.max(initial=-1)) + 1, bool)
    users[rows.user[hi]] = True
    return {
        "pairs": int(len(hi)),
        "users": int(users.sum()),
        "images": int(len(images)),
        "mean_likes": _mean(rows.likes[images]),
        "mean_retweets": _mean(rows.retweets[images]),
        "mean_prob": _mean(prob),
        "mean_days_apart": _mean(days),
        "share_no_hashtag": _mean(rows.tag_count[images] == 0),
        "share_no_mention": _mean(rows.mention_count[images] == 0),
        "share_no_caption": _mean(rows.n_words[images] == 0),
        "by_rule": {name: int((rule == name).sum()) for name in ("base", "retweets")},
    }


def table1(rows, hi, lo, rule, split, prob, days, split_names) -> dict:
    """Table 1 per split, over all pairs and per rule (`base`, `retweets`)."""
    def of(mask):
        return pair_stats(rows, hi[mask], lo[mask], rule[mask], prob[mask], days[mask])

    everything = np.ones(len(hi), bool)
    return {"splits": {name: of(split == s) for s, name in enumerate(split_names)}, "all": of(everything),
            "rules": {name: of(rule == name) for name in ("base", "retweets")}}


def summary(stats: dict) -> str:
    """A short text table of Table 1: one line per split, all pairs, and each rule."""
    lines = [f"{'':<14}" + "".join(f"{title:>11}" for _, title, _ in COLUMNS)]
    groups = [*stats["splits"].items(), ("all", stats["all"]),
              *((f"rule {name}", v) for name, v in stats["rules"].items())]
    for name, row in groups:
        lines.append(f"{name:<14}" + "".join(f"{row[key]:>11{fmt}}" for key, _, fmt in COLUMNS))
    skipped = ", ".join(f"{k} {v}" for k, v in stats["skipped_rows"].items() if v) or "none"
    lines.append(f"rows {stats['rows']}, usable {stats['usable_rows']} (skipped: {skipped}); candidates "
                 f"{stats['candidates']['rules']}, selected {stats['candidates']['selected']}, "
                 f"dropped for a photo in an earlier split {stats['dropped_shared_photo']}")
    share = stats["retweet_rule"]
    short = (f", short by {share['shortfall']} pairs: only {share['pairs_passing']} pass it"
             if share["shortfall"] else "")
    lines.append(f"retweet rule: carried by {share['pairs_carrying']} pairs, a share of {share['share_reached']:.4f} "
                 f"for {share['share_asked']:.4f} asked{short}")
    return "\n".join(lines)


def write_plot(out: Path) -> Path:
    """pairs.png: the distribution of P(hi ≻ lo) and of days apart, per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_p, ax_d) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name in ("train", "val", "test"):
        table = pq.read_table(out / f"{name}.parquet", columns=["prob", "days_apart"])
        if table.num_rows:
            prob = table.column("prob").to_numpy()
            ax_p.hist(prob, bins=30, range=(min(prob.min(), 0.95), 1.0), alpha=0.6, label=name)
            ax_d.hist(table.column("days_apart").to_numpy(), bins=30, alpha=0.6, label=name)
    ax_p.set(xlabel="P(hi ≻ lo)", ylabel="pairs", title="Thurstone probability")
    ax_d.set(xlabel="days apart", title="time between the two posts")
    ax_p.legend()
    fig.tight_layout()
    path = out / "pairs.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
