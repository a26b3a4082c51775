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


def build_parser(prog: str = "iipa ingest") -> Parser:
    parser = Parser(prog=prog, description="Tweets in: the X API, archives or the synthetic set → images table.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("search", help="search the X API v2 (tweepy), saving raw pages as twarc2 JSONL",
                       description="Search recent (or, with --all, all) original photo tweets through the X API "
                                   "v2 and save the raw response pages as twarc2 JSONL; run again to resume. "
                                   "The bearer token is read from X_BEARER_TOKEN.")
    p.add_argument("--hashtags", default="", help="hashtags to search for (any of them), comma-separated")
    p.add_argument("--query", help="a raw X search query (combined with --hashtags if both are given)")
    p.add_argument("--since", help="earliest creation time (ISO date or time, UTC)")
    p.add_argument("--until", help="latest creation time, exclusive (ISO date or time, UTC)")
    p.add_argument("--max-tweets", type=int, help="stop after this many tweets (pages hold 10 or more)")
    p.add_argument("--all", action="store_true", help="full-archive search (search_all_tweets)")
    p.add_argument("--page-size", type=int, default=100, help="tweets per request (10..100, 500 with --all)")
    p.add_argument("--trending", type=Path, help="search the trends of this file (from `ingest trends`), one "
                                                 "search per trend; --out is then a folder")
    p.add_argument("--woeid", type=int, help="search the trends of this place now (1 = worldwide); --out is a folder")
    _trend_filters(p)
    p.add_argument("--out", required=True, type=Path,
                   help="twarc2 JSONL file for the raw pages (with trends: a folder, one file per trend)")
    p.add_argument("--images", type=Path, help="also ingest the pages into this images table at the end")
    p.set_defaults(handler=_search)

    p = sub.add_parser("trends", help="trending topics of a place (X API v2), to choose what to search",
                       description="Fetch the trending topics of a place (GET /2/trends/by/woeid) with their "
                                   "tweet counts, for `ingest search --trending`. The bearer token is read "
                                   "from X_BEARER_TOKEN.")
    p.add_argument("--woeid", type=int, required=True, help="Where On Earth ID of the place (1 = worldwide)")
    _trend_filters(p)
    p.add_argument("--out", required=True, type=Path, help="JSON file for the trends")
    p.set_defaults(handler=_trends)

    p = sub.add_parser("archive", help="parse tweet archives into the images table (status pending)",
                       description="Parse tweet archives into the images table, one row per photo: twarc2 "
                                   "pages, twarc2 flattened tweets (v2), API v1.1 tweets, X account archives "
                                   "(their folder or data/tweets.js) and CSV/Parquet tables.")
    p.add_argument("paths", nargs="+", type=Path, help="archive files (an account archive may be its folder)")
    p.add_argument("--out", required=True, type=Path, help="images table (.parquet file or folder)")
    p.add_argument("--format", default="auto", choices=["auto", *READERS], help="archive format (auto: per file)")
    p.add_argument("--columns", help="for tables: field=column,... (fields: tweet_id, user_id, created_at, url, "
                                     "text, hashtags, mentions, retweets, likes, replies, quotes, collected_at, "
                                     "media_key, is_retweet)")
    p.add_argument("--set", action="append", dest="constants", metavar="FIELD=VALUE",
                   help="for tables: a field every row gets as a constant (e.g. user_id=dog_rates for a "
                        "single-account export); repeatable")
    p.add_argument("--collected-at", help="when the counts were read (ISO time), if the archive does not say")
    p.add_argument("--media", default="photo", help="media types to keep, comma-separated (photo,video,animated_gif)")
    p.add_argument("--no-originals", action="store_true", help="drop the originals that retweets embed, too")
    p.set_defaults(handler=_archive)

    p = sub.add_parser("synthetic", help="write the embedded synthetic data set",
                       description="Write a synthetic twarc2 archive with drawn photos of known latent appeal.")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--users", type=int, default=40, help="number of users")
    p.add_argument("--tweets-per-user", type=int, default=40, help="photo tweets per user")
    p.add_argument("--image-size", type=int, default=128, help="side of the drawn photos in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=_synthetic)
    return parser


def _trend_filters(p) -> None:
    p.add_argument("--top", type=int, help="keep the first N trends (in X's order)")
    p.add_argument("--hashtags-only", action="store_true", help="keep only the trends that are hashtags")


def _search(args) -> int:
    from ingest.search import SearchConfig, check_options, search_tweets

    config = SearchConfig(out=args.out, hashtags=[t for t in args.hashtags.split(",") if t.strip()],
                          query=args.query, since=args.since, until=args.until, max_tweets=args.max_tweets,
                          full_archive=args.all, page_size=args.page_size, images=args.images)
    check_options(config)
    trending = args.trending is not None or args.woeid is not None
    check_out(args.out, folder=trending)
    if args.images is not None:
        check_out(args.images, "--images", folder=None)
    if (args.top is not None or args.hashtags_only) and not trending:
        raise UserError("--top and --hashtags-only choose among trends: give --trending FILE or --woeid N")
    if not trending:
        print(json.dumps(search_tweets(config)))
        return 0
    from ingest.trends import TrendsConfig, search_trending, trends_to_search

    if args.trending is not None and args.woeid is not None:
        raise UserError("give --trending FILE or --woeid N, not both")
    if config.hashtags:
        raise UserError("--hashtags and trends exclude each other (a --query is combined with each trend)")
    trends = trends_to_search(args.out, args.trending, TrendsConfig(args.woeid or 1, top=args.top,
                                                                    hashtags_only=args.hashtags_only))
    print(json.dumps(search_trending(config, trends)))
    return 0


def _trends(args) -> int:
    from ingest.trends import TrendsConfig, fetch_trends

    check_out(args.out, folder=False)
    print(json.dumps(fetch_trends(TrendsConfig(args.woeid, args.out, args.top, args.hashtags_only))))
    return 0


def _archive(args) -> int:
    media = [m.strip() for m in args.media.split(",") if m.strip()]
    unknown = sorted(set(media) - {"photo", "video", "animated_gif"})
    if unknown or not media:
        raise UserError(f"--media: unknown type(s) {', '.join(unknown) or '(none)'}; choose photo, video, animated_gif")
    check_out(args.out, folder=None)
    config = ArchiveConfig(paths=args.paths, out=args.out, format=args.format, collected_at=args.collected_at,
                           media=media, columns=parse_columns(args.columns) or None,
                           constants=parse_constants(args.constants) or None, originals=not args.no_originals)
    summary = ingest_archive(config)
    del summary["config"]
    print(json.dumps(summary))
    return 0


def _synthetic(args) -> int:
    if args.users < 1 or args.tweets_per_user < 1 or args.image_size < 16 or args.seed < 0:
        raise UserError("--users and --tweets-per-user must be ≥ 1, --image-size ≥ 16 and --seed ≥ 0")
    check_out(args.out)
    print(json.dumps(generate(SyntheticConfig(args.out, args.users, args.tweets_per_user, args.image_size, args.seed))))
    return 0


def main(argv=None, prog: str = "iipa ingest") -> int:
    args = build_parser(prog).parse_args(argv)
    return run_main(args.handler, args, prog, extra_user_errors=(FormatError,))


if __name__ == "__main__":
    sys.exit(main())
