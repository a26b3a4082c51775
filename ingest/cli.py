"""Command line of the ingest stage: `python -m ingest` or `iipa ingest`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ingest.archive import ArchiveConfig, ingest_archive
from ingest.formats import READERS, FormatError
from ingest.formats.table import parse_columns, parse_constants
from ingest.synthetic import SyntheticConfig, generate
from shards.console import Parser, UserError, check_out, run_main
from shards.flags import SKIP, ConfigFlags, Flag


# Every field of each subcommand's config is a flag of the same name; these depart from that.
TEST_KNOBS = {"wait_scale": SKIP, "missing_reset_wait_s": SKIP}  # the tests' shortened waits
SEARCH_FLAGS = {"full_archive": Flag(name="all"), **TEST_KNOBS}
TREND_FILTERS = {"woeid": SKIP, "out": SKIP, "max_retries": SKIP, **TEST_KNOBS}  # search's own say these
TRENDS_FLAGS = TEST_KNOBS
ARCHIVE_FLAGS = {"paths": Flag(positional="+"), "format": Flag(choices=("auto", *READERS)),
                 "columns": Flag(parse=parse_columns, metavar="FIELD=COLUMN,..."),
                 "constants": Flag(name="set", parse=parse_constants, repeat=True, metavar="FIELD=VALUE")}


def build_parser(prog: str = "iipa ingest") -> Parser:
    from ingest.search import SearchConfig
    from ingest.trends import TrendsConfig

    parser = Parser(prog=prog, description="Tweets in: the X API, archives or the synthetic set → images table.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("search", help="search the X API v2 (tweepy), saving raw pages as twarc2 JSONL",
                       description="Search recent (or, with --all, all) original photo tweets through the X API "
                                   "v2 and save the raw response pages as twarc2 JSONL; run again to resume. "
                                   "The bearer token is read from X_BEARER_TOKEN.")
    ConfigFlags(SearchConfig, SEARCH_FLAGS).add_to(p)
    p.add_argument("--trending", type=Path, help="search the trends of this file (from `ingest trends`), one "
                                                 "search per trend; --out is then a folder")
    p.add_argument("--woeid", type=int, help="search the trends of this place now (1 = worldwide); --out is a folder")
    ConfigFlags(TrendsConfig, TREND_FILTERS).add_to(p)
    p.set_defaults(handler=_search)

    p = sub.add_parser("trends", help="trending topics of a place (X API v2), to choose what to search",
                       description="Fetch the trending topics of a place (GET /2/trends/by/woeid) with their "
                                   "tweet counts, for `ingest search --trending`. The bearer token is read "
                                   "from X_BEARER_TOKEN.")
    ConfigFlags(TrendsConfig, TRENDS_FLAGS).add_to(p)
    p.set_defaults(handler=_trends)

    p = sub.add_parser("archive", help="parse tweet archives into the images table (status pending)",
                       description="Parse tweet archives into the images table, one row per photo: twarc2 "
                                   "pages, twarc2 flattened tweets (v2), API v1.1 tweets, X account archives "
                                   "(their folder or data/tweets.js) and CSV/Parquet tables.")
    ConfigFlags(ArchiveConfig, ARCHIVE_FLAGS).add_to(p)
    p.set_defaults(handler=_archive)

    p = sub.add_parser("synthetic", help="write the embedded synthetic data set",
                       description="Write a synthetic twarc2 archive with drawn photos of known latent appeal.")
    ConfigFlags(SyntheticConfig).add_to(p)
    p.set_defaults(handler=_synthetic)
    return parser


def _search(args) -> int:
    from ingest.search import SearchConfig, check_options, search_tweets
    from ingest.trends import TrendsConfig, search_trending, trends_to_search

    config = ConfigFlags(SearchConfig, SEARCH_FLAGS).build(args)
    check_options(config)
    trending = args.trending is not None or args.woeid is not None
    check_out(config.out, folder=trending)
    if config.images is not None:
        check_out(config.images, "--images", folder=None)
    trend_filters = ConfigFlags(TrendsConfig, TREND_FILTERS)
    if trend_filters.given(args) and not trending:
        raise UserError("--top and --hashtags-only choose among trends: give --trending FILE or --woeid N")
    if not trending:
        print(json.dumps(search_tweets(config)))
        return 0
    if args.trending is not None and args.woeid is not None:
        raise UserError("give --trending FILE or --woeid N, not both")
    if config.hashtags:
        raise UserError("--hashtags and trends exclude each other (a --query is combined with each trend)")
    trends = trends_to_search(config.out, args.trending, trend_filters.build(args, woeid=args.woeid or 1))
    print(json.dumps(search_trending(config, trends)))
    return 0


def _trends(args) -> int:
    from ingest.trends import TrendsConfig, fetch_trends

    config = ConfigFlags(TrendsConfig, TRENDS_FLAGS).build(args)
    if config.out is not None:
        check_out(config.out, folder=False)
    print(json.dumps(fetch_trends(config)))
    return 0


def _archive(args) -> int:
    config = ConfigFlags(ArchiveConfig, ARCHIVE_FLAGS).build(args)
    unknown = sorted(set(config.media) - {"photo", "video", "animated_gif"})
    if unknown or not config.media:
        raise UserError(f"--media: unknown type(s) {', '.join(unknown) or '(none)'}; choose photo, video, animated_gif")
    check_out(config.out, folder=None)
    summary = ingest_archive(config)
    del summary["config"]
    print(json.dumps(summary))
    return 0


def _synthetic(args) -> int:
    config = ConfigFlags(SyntheticConfig).build(args)
    if config.users < 1 or config.tweets_per_user < 1 or config.image_size < 16 or config.seed < 0:
        raise UserError("--users and --tweets-per-user must be ≥ 1, --image-size ≥ 16 and --seed ≥ 0")
    check_out(config.out)
    print(json.dumps(generate(config)))
    return 0


def main(argv=None, prog: str = "iipa ingest") -> int:
    args = build_parser(prog).parse_args(argv)
    return run_main(args.handler, args, prog, extra_user_errors=(FormatError,))


if __name__ == "__main__":
    sys.exit(main())
