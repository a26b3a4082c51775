"""Scoring images with a trained model, with the preprocessing recorded beside its weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from train.checkpoint import model_meta, read_weights
from train.config import DataConfig
from train.data import make_decoder
from train.model import build_model


class Scorer:
    """Loads MODEL (a run's model.pth with its model.json) and scores encoded images in batches."""

    def __init__(self, model_path: str | Path, backend: str = "torch", batch_size: int = 128, threads: int = 2):
        meta = model_meta(Path(model_path) if not str(model_path).startswith("iipa:") else model_path)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = build_model(meta["arch"])
        self.model.load_state_dict(read_weights(Path(meta["weights"])))
        self.model.to(self.device).eval()
        pre = meta["preprocess"]
        data = DataConfig(backend=backend, resize=pre["resize"], crop=pre["crop"], mean=tuple(pre["mean"]),
                          std=tuple(pre["std"]), squash=pre.get("mode") == "squash", threads=threads)
        self.decoder = make_decoder(data, train=False, device=self.device)
        self.batch_size = batch_size
        self.meta = meta

    @torch.no_grad()
    def score(self, encoded: list[bytes]) -> np.ndarray:
        scores = []
        for start in range(0, len(encoded), self.batch_size):
            images = self.decoder(encoded[start:start + self.batch_size], seed=0)
            scores.append(self.model(images).squeeze(1).float().cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)
