"""The options of the PDIP builder: every rule and threshold of both presets, validated up front."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

from shards.console import UserError, check_out

SPLITS = ("train", "val", "test")
DAY_US = 86_400 * 1_000_000
NEEDED = ("key", "user_id", "created_at", "collected_at", "hashtags", "mentions", "caption_words", "retweets",
          "likes", "media_count", "media_key", "url", "status")


@dataclass
class PairsConfig:
    """Options of `iipa pairs build`; every threshold of a preset is a field."""

    images: Path
    """Images table (Parquet file or folder)."""
    out: Path
    """Folder for {train,val,test}.parquet, stats.json and config.json."""
    preset: str = "twitter"
    """`twitter` (the Twitter paper's rules) or `ding` (IIPA's Instagram rules)."""
    weights: tuple[float, float] = (0.7, 0.3)
    """Popularity p = w_r · retweets + w_l · likes."""
    sigma: float = 0.3
    """σ of the Thurstone model on S = ln(1 + p)."""
    threshold: float = 0.95
    """Keep a pair when P(hi ≻ lo) ≥ this."""
    max_days: float = 10.0
    """Posted at most this many days apart."""
    max_caption_diff: int | None = 5
    """twitter: caption lengths (words) differ by at most this."""
    min_common_hashtags: int = 1
    """twitter: hashtags in common."""
    extra_share: float = 1 / 3
    """twitter: share of the output pairs that carry the retweet rule (drawn by pair hash among
    those that pass it; if too few pass, all of them, and stats.json says by how much it fell short)."""
    extra_min_retweets: int = 20
    """twitter retweet rule: counts differ and one tweet has more than this."""
    identical_tags: bool = False
    """ding: identical hashtags and mentions."""
    max_caption_words: int | None = None
    """ding: at most this many caption words."""
    single_photo: bool = False
    """ding: single-photo posts only."""
    min_likes: int = 0
    """ding: at least this many likes."""
    min_age_days: float = 0.0
    """ding: both posts at least this old when counted (rows without collected_at are skipped)."""
    one_pair_per_image: bool = False
    """ding: each image in at most one pair."""
    max_pairs_per_user: int | None = 1000
    """Cap per user, so prolific users do not dominate (None, or 0 on the command line: no cap)."""
    all_candidates: bool = False
    """Emit every pair that passes the rules (no cap, no one-per-image draw)."""
    split: str = "user"
    """`user`: no user in two splits; `pair`: random pair split as IIPA did."""
    split_shares: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Shares of train, val, test."""
    seed: int = 0
    """Seed of every draw: same seed, same pairs and splits."""
    plot: bool = True
    """Write pairs.png (the distribution of P and of days apart)."""

    @classmethod
    def preset_defaults(cls, preset: str) -> dict:
        """The thresholds a preset sets; flags given by the user override them."""
        if preset == "twitter":
            return {}
        if preset == "ding":
            return dict(max_caption_diff=None, min_common_hashtags=0, extra_share=0.0, identical_tags=True,
                        max_caption_words=6, single_photo=True, min_likes=50, min_age_days=30.0,
                        one_pair_per_image=True, max_pairs_per_user=None)
        raise UserError(f"unknown preset {preset!r}; choose twitter or ding")

    def validate(self) -> None:
        """Reject options that make no sense before any work starts."""
        finite = [self.sigma, self.threshold, self.max_days, self.extra_share, self.min_age_days, *self.weights]
        if not all(math.isfinite(v) for v in finite):
            raise UserError("thresholds, --sigma, --max-days and --weights must be finite numbers")
        if not 0.5 < self.threshold < 1:
            raise UserError(f"--threshold must be in (0.5, 1), got {self.threshold}")
        if self.sigma <= 0:
            raise UserError(f"--sigma must be > 0, got {self.sigma}")
        if self.max_days < 0:
            raise UserError(f"--max-days must be ≥ 0 (a time window), got {self.max_days}")
        if len(self.weights) != 2 or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise UserError(f"--weights must be two non-negative numbers, not both 0, got {self.weights}")
        if not 0 <= self.extra_share <= 1:
            raise UserError(f"--extra-share must be in [0, 1], got {self.extra_share}")
        for name in ("max_caption_diff", "min_common_hashtags", "extra_min_retweets", "max_caption_words",
                     "min_likes", "min_age_days", "max_pairs_per_user"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"--{name.replace('_', '-')} must be ≥ 0, got {value}")
        if len(self.split_shares) != 3 or min(self.split_shares) < 0 or not math.isclose(sum(self.split_shares), 1):
            raise UserError("--split-shares must be three non-negative shares that sum to 1")
        if self.split not in ("user", "pair"):
            raise UserError(f"--split must be user or pair, got {self.split!r}")
        if self.preset not in ("twitter", "ding"):
            raise UserError(f"unknown preset {self.preset!r}; choose twitter or ding")
        if self.seed < 0:
            raise UserError(f"--seed must be ≥ 0, got {self.seed}")
        check_out(self.out)

    def min_gap(self) -> float:
        """The score gap S_hi − S_lo at which P reaches the threshold (Φ is increasing)."""
        return math.sqrt(2.0) * self.sigma * NormalDist().inv_cdf(self.threshold)
