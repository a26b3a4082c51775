"""Pairwise accuracy and its bootstrap interval."""
from __future__ import annotations

import numpy as np


def pair_correct(s_hi: np.ndarray, s_lo: np.ndarray) -> np.ndarray:
    """1 where the more popular image scored higher, 0.5 for a tie, 0 otherwise."""
    s_hi, s_lo = np.asarray(s_hi, dtype=np.float64), np.asarray(s_lo, dtype=np.float64)
    return (s_hi > s_lo) + 0.5 * (s_hi == s_lo)


def accuracy_with_interval(correct: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of per-pair correctness with a percentile bootstrap interval over pairs."""
    correct = np.asarray(correct, dtype=np.float64)
    n = len(correct)
    if n == 0:
        return {"accuracy": float("nan"), "low": float("nan"), "high": float("nan"), "pairs": 0}
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {"accuracy": float(correct.mean()), "low": float(low), "high": float(high), "pairs": n}
