"""Train: the shared-weight ResNet pair ranker, pair pipelines, and the torchrun DDP trainer."""
from train.config import TrainConfig
from train.model import build_model, pair_loss, pair_scores

__all__ = ["TrainConfig", "build_model", "pair_loss", "pair_scores"]
