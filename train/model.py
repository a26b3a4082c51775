"""The shared-weight scoring network and the pairwise loss.

The model is single-device and self-contained: a torchvision ResNet whose `fc` is
`Linear(features, 1)`, so its state_dict has exactly the layout of IIPA's released
`model-resnet50.pth`. DDP, compile and precision are the trainer's business.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision

from train.config import ARCHS


def build_model(arch: str = "resnet50") -> torch.nn.Module:
    """A torchvision ResNet with a one-output head: image → intrinsic popularity score."""
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 1)
    return model


def head_parameters(model: torch.nn.Module) -> set[str]:
    """Names of the head's parameters (they get the head's learning rate)."""
    return {name for name, _ in model.named_parameters() if name.startswith("fc.")}


def pair_scores(model: torch.nn.Module, images: torch.Tensor, hi_idx: torch.Tensor, lo_idx: torch.Tensor):
    """One forward pass over the batch's unique images; scores of each pair's hi and lo image.

    `images` holds every distinct image of the batch once; `hi_idx`/`lo_idx` say which row is
    each pair's more and less popular image, so an image shared by several pairs is scored once.
    """
    scores = model(images).squeeze(1).float()
    return scores[hi_idx], scores[lo_idx]


def pair_loss(s_hi: torch.Tensor, s_lo: torch.Tensor, swap: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits on the score difference; `swap` flips pairs so labels are balanced."""
    sign = 1.0 - 2.0 * swap.float()
    logits = sign * (s_hi - s_lo)
    return F.binary_cross_entropy_with_logits(logits, 1.0 - swap.float())
