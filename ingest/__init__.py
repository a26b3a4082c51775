"""Ingest: tweets from the X API, archives or the synthetic set into the images table."""
from ingest.archive import ArchiveConfig, ingest_archive
from ingest.search import SearchConfig, search_tweets
from ingest.synthetic import SyntheticConfig, generate

__all__ = ["ArchiveConfig", "SearchConfig", "SyntheticConfig", "generate", "ingest_archive", "search_tweets"]
