"""The options of `iipa eval` and `iipa score`, one dataclass each, in a module of their own so
that their command lines are built from them without importing torch."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class EvalConfig:
    """Options of `iipa eval`."""

    model: str
    """A run's model.pth (model.json beside it), or iipa:PATH."""
    shards: Path
    """Shards folder holding the pairs' images."""
    pairs: Path
    """Pair manifest (e.g. PAIRS/test.parquet), or a pairs folder: each file is a split."""
    out: Path
    """Report folder: report.json, report.md and plots."""
    backend: str = "auto"
    """Decoding backend: auto (Pillow on the CPU, DALI or nvJPEG on a GPU) or a name of train.decode.BACKENDS."""
    batch_size: int = 128
    """Images per forward pass."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% intervals."""
    seed: int = 0
    """Seed of the bootstrap."""
    iipa: str | None = None
    """IIPA's released weights (model-resnet50.pth), scored as a baseline without fine-tuning."""
    images: Path | None = None
    """Images table for user activity (images per user); default: the shards' own table."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    faces: bool = True
    """Run the face detector for the bias check (OpenCV; skipped where it is not installed)."""
    threads: int = 2
    """Threads decoding images for the statistics and the model."""


@dataclass
class ScoreConfig:
    """Options of `iipa score`."""

    model: str
    """A run's model.pth (model.json beside it) or iipa:PATH (IIPA's weights and preprocessing)."""
    inputs: list[Path] = field(default_factory=list)
    """Image files and folders (searched recursively for image files)."""
    shards: Path | None = None
    """A shards folder: score every image stored in it."""
    out: Path | None = None
    """CSV or Parquet file for the scores (by suffix); None prints a table."""
    batch_size: int = 64
    """Images per forward pass."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    backend: str = "auto"
    """Decoding backend: auto (Pillow on the CPU, DALI or nvJPEG on a GPU) or a name of train.decode.BACKENDS."""
    threads: int = 2
    """Threads reading and decoding images."""
