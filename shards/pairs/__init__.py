"""Images table → pair manifests (the PDIP index): config (presets and thresholds), rows (the
images table as arrays, popularity and IIPA's Thurstone test), rules (candidates, matching,
splits, the builder), stats (IIPA's Table 1) and cli (`iipa pairs`)."""
from shards.pairs.config import PairsConfig
from shards.pairs.rules import build_pairs

__all__ = ["PairsConfig", "build_pairs"]
