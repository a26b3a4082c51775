"""Eval: pairwise accuracy with baselines, correlation, calibration and bias checks as reports;
scoring images with a trained model (`iipa eval`, `iipa score`)."""
from importlib import import_module

# Each public name and its module, imported on first use: these modules import torch, and
# `iipa eval --help` must not.
_HOMES = {"EvalConfig": "eval.config", "evaluate": "eval.evaluate", "accuracy_with_interval": "eval.metrics",
          "pair_correct": "eval.metrics", "ScoreConfig": "eval.config", "Scorer": "eval.score",
          "score_images": "eval.score"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'eval' has no attribute {name!r}")
