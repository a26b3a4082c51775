"""Train: the shared-weight ResNet pair ranker, pair pipelines, and the torchrun DDP trainer."""
from train.config import TrainConfig

__all__ = ["TrainConfig", "build_model", "pair_loss", "pair_scores"]


def __getattr__(name: str):
    # The model's names are imported on first use, so `iipa train --help` need not import torch.
    if name in ("build_model", "pair_loss", "pair_scores"):
        from train import model

        return getattr(model, name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
