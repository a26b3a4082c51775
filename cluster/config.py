"""The options of `iipa demo`, apart from the demo itself so that `iipa demo --help` answers
without importing every stage."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoConfig:
    """Options of `iipa demo`; `quick` is the small version the test suite runs."""

    out: Path = Path("demo")
    """Folder for every stage's output and the report."""
    quick: bool = False
    """A smaller data set and fewer steps (under two minutes): the smoke run of the test suite."""
    seed: int = 0
    """Seed of the synthetic data and of training."""
    nproc: int = 2
    """Training ranks under torchrun (gloo on the CPU)."""

    @property
    def users(self) -> int:
        return 60 if self.quick else 200

    @property
    def tweets_per_user(self) -> int:
        return 24 if self.quick else 40

    @property
    def side(self) -> int:
        """Side of the stored and trained images: the subjects' shapes must still read at it."""
        return 40 if self.quick else 48

    @property
    def steps(self) -> int:
        return 120 if self.quick else 480

    @property
    def batch_pairs(self) -> int:
        return 16 if self.quick else 24
