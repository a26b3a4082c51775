"""Eval: pairwise accuracy with baselines, correlation, calibration and bias checks as reports;
scoring images with a trained model (`iipa eval`, `iipa score`)."""
from eval.evaluate import EvalConfig, evaluate
from eval.metrics import accuracy_with_interval, pair_correct
from eval.score import ScoreConfig, Scorer, score_images

__all__ = ["EvalConfig", "ScoreConfig", "Scorer", "accuracy_with_interval", "evaluate", "pair_correct",
           "score_images"]
