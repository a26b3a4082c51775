"""Ingest: tweets from archives, the X API or the synthetic set into the images table."""
from ingest.archive import ArchiveConfig, ingest_archive
from ingest.synthetic import SyntheticConfig, generate

__all__ = ["ArchiveConfig", "ingest_archive", "SyntheticConfig", "generate"]
