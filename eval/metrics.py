"""The numbers of a report: pairwise accuracy with bootstrap intervals, groupings of pairs,
user-centred rank correlation, and the calibration of the score difference.

Every function takes plain numpy arrays and returns plain dicts (JSON-ready), so the report is
nothing but these functions applied to the scored pairs.
"""
from __future__ import annotations

import numpy as np
from scipy import stats


def pair_correct(s_hi: np.ndarray, s_lo: np.ndarray) -> np.ndarray:
    """1 where the more popular image scored higher, 0.5 for a tie, 0 otherwise."""
    s_hi, s_lo = np.asarray(s_hi, dtype=np.float64), np.asarray(s_lo, dtype=np.float64)
    return (s_hi > s_lo) + 0.5 * (s_hi == s_lo)


def accuracy_with_interval(correct: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of per-pair correctness with a percentile bootstrap interval over pairs.

    Correctness takes only the values 0, ½ and 1, so resampling n pairs with replacement is the
    same as drawing the three counts from a multinomial: exact in distribution, and O(n_boot)
    memory instead of an n_boot × n matrix (a million test pairs would need gigabytes). The
    quantiles are of the discrete bootstrap distribution itself (inverted CDF), so the bounds
    are accuracies that a resample can actually reach.
    """
    correct = np.asarray(correct, dtype=np.float64)
    n = len(correct)
    if n == 0:
        return {"accuracy": float("nan"), "low": float("nan"), "high": float("nan"), "pairs": 0}
    shares = np.array([(correct == 0).sum(), (correct == 0.5).sum(), (correct == 1).sum()]) / n
    counts = np.random.default_rng(seed).multinomial(n, shares, size=n_boot)
    means = (counts[:, 1] * 0.5 + counts[:, 2]) / n
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], method="inverted_cdf")
    return {"accuracy": float(correct.mean()), "low": float(low), "high": float(high), "pairs": n}


def grouped_accuracy(correct: np.ndarray, groups: np.ndarray, n_boot: int, seed: int,
                     order: list | None = None) -> dict:
    """accuracy_with_interval for each group label, in `order` (default: sorted labels)."""
    groups = np.asarray(groups)
    labels = order if order is not None else sorted(set(groups.tolist()))
    return {str(g): accuracy_with_interval(correct[groups == g], n_boot, seed)
            for g in labels if (groups == g).any()}


# Thurstone probabilities of the pairs (P ≥ T = 0.95 by default): buckets by popularity gap.
PROB_EDGES = (0.0, 0.95, 0.99, 0.999, 0.9999, 1.0)


def prob_buckets(prob: np.ndarray, edges=PROB_EDGES) -> tuple[np.ndarray, list[str]]:
    """Each pair's bucket label by its probability P(hi ≻ lo), and the labels in order."""
    labels = [f"[{a:g}, {b:g})" if b < 1 else f"[{a:g}, 1]" for a, b in zip(edges[:-1], edges[1:])]
    index = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, len(labels) - 1)
    return np.array(labels, dtype=object)[index], labels


def activity_buckets(activity: np.ndarray, user_of_pair: np.ndarray, n: int = 3) -> tuple[np.ndarray, list[str]]:
    """Pairs grouped by their user's activity (images of the user), in `n` quantile groups of users.

    `activity` is per pair (its user's image count); the edges are quantiles over users, not
    pairs, so a few prolific users do not take every bucket.
    """
    _, first = np.unique(user_of_pair, return_index=True)
    per_user = activity[first]
    edges = np.unique(np.quantile(per_user, np.linspace(0, 1, n + 1)[1:-1], method="inverted_cdf"))
    index = np.searchsorted(edges, activity, side="left")  # bucket i holds (edges[i-1], edges[i]]
    bounds = [int(per_user.min()), *[int(e) for e in edges], int(per_user.max())]
    labels = []
    for i in range(len(edges) + 1):
        lo = bounds[i] if i == 0 else bounds[i] + 1
        labels.append(f"{lo}–{bounds[i + 1]} images" if lo < bounds[i + 1] else f"{bounds[i + 1]} images")
    return np.array(labels, dtype=object)[index], labels


def user_centred_correlation(score: np.ndarray, log_pop: np.ndarray, user: np.ndarray) -> dict:
    """Spearman and Pearson correlation of score with log popularity after subtracting each
    user's mean from both (the Retweet Wars metric: who posted is factored out), over the images
    of users with at least two images; also the mean of per-user Spearman correlations."""
    score, log_pop, user = np.asarray(score, float), np.asarray(log_pop, float), np.asarray(user)
    _, inverse, counts = np.unique(user, return_inverse=True, return_counts=True)
    keep = counts[inverse] >= 2
    if keep.sum() < 3:
        return {"spearman": float("nan"), "pearson": float("nan"), "images": int(keep.sum()), "users": 0,
                "mean_user_spearman": float("nan")}
    inv = np.unique(inverse[keep], return_inverse=True)[1]
    centred = []
    for values in (score[keep], log_pop[keep]):
        means = np.bincount(inv, weights=values) / np.bincount(inv)
        centred.append(values - means[inv])
    per_user = []
    for u in np.unique(inv):
        s, p = score[keep][inv == u], log_pop[keep][inv == u]
        if len(s) >= 3 and s.std() > 0 and p.std() > 0:
            per_user.append(stats.spearmanr(s, p).statistic)
    return {"spearman": _corr(stats.spearmanr, *centred), "pearson": _corr(stats.pearsonr, *centred),
            "images": int(keep.sum()), "users": int(inv.max() + 1),
            "mean_user_spearman": float(np.mean(per_user)) if per_user else float("nan"),
            "users_with_3_or_more": len(per_user)}


def _corr(fn, a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(fn(a, b).statistic)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation, NaN where either side is constant or values are missing."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    return _corr(stats.spearmanr, a[ok], b[ok])


def reliability(s_hi: np.ndarray, s_lo: np.ndarray, bins: int = 10) -> dict:
    """Calibration of P(hi ≻ lo) = logistic(s_hi − s_lo), the probability the pair loss trains.

    Every manifest pair has the same true order, so the check is on the model's confidence in
    its own choice, max(p, 1 − p), against how often that choice is right, bin by bin; ECE is
    the pair-weighted mean gap between the two.
    """
    diff = np.asarray(s_hi, float) - np.asarray(s_lo, float)
    p = 1.0 / (1.0 + np.exp(-np.clip(diff, -50, 50)))
    confidence = np.maximum(p, 1 - p)
    right = pair_correct(s_hi, s_lo)
    edges = np.linspace(0.5, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    rows, gap = [], 0.0
    for b in range(bins):
        mask = index == b
        if not mask.any():
            continue
        conf, acc = float(confidence[mask].mean()), float(right[mask].mean())
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "confidence": conf, "accuracy": acc,
                     "pairs": int(mask.sum())})
        gap += mask.sum() * abs(conf - acc)
    return {"bins": rows, "ece": float(gap / max(1, len(diff))),
            "mean_predicted_p": float(p.mean()) if len(p) else float("nan")}
