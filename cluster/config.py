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
    nproc: int = 1
    """Training ranks under torchrun (gloo on the CPU); the pairs of a step are split among them.
    One by default: on a 2-core machine two ranks spend a third of each step exchanging gradients."""

    @property
    def users(self) -> int:
        return 150 if self.quick else 200

    @property
    def tweets_per_user(self) -> int:
        return 24 if self.quick else 40

    @property
    def side(self) -> int:
        """Side of the stored and trained images: the subjects' shapes must still read at it."""
        return 40 if self.quick else 48

    @property
    def steps(self) -> int:
        # Many small steps beat fewer large ones here (measured on the quick set: 240 steps of 16
        # pairs reach 0.66-0.68 where 120 of 32 reach 0.60-0.63, in about the same time).
        return 240 if self.quick else 1000

    @property
    def pairs_per_step(self) -> int:
        """Pairs of one step, all ranks together."""
        return 16 if self.quick else 24

    @property
    def batch_pairs(self) -> int:
        """Pairs of one step on each rank."""
        return max(1, self.pairs_per_step // self.nproc)
