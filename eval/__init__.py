"""Eval: pairwise accuracy, intervals and reports; scoring images with a trained model."""
from eval.evaluate import EvalConfig, evaluate
from eval.metrics import accuracy_with_interval, pair_correct

__all__ = ["EvalConfig", "evaluate", "accuracy_with_interval", "pair_correct"]
