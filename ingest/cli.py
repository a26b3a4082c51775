"""Command line of the ingest stage: `python -m ingest` or `iipa ingest`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ingest.archive import ArchiveConfig, ingest_archive
from ingest.reader import READERS, FormatError
from ingest.synthetic import SyntheticConfig, generate
from shards.console import Parser, UserError, run_main


def build_parser(prog: str = "iipa ingest") -> Parser:
    parser = Parser(prog=prog, description="Tweets in: archives or the synthetic set → images table.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("archive", help="parse tweet archives into the images table (status pending)",
                       description="Parse tweet archives into the images table, one row per photo.")
    p.add_argument("paths", nargs="+", type=Path, help="archive files")
    p.add_argument("--out", required=True, type=Path, help="images table (.parquet file or folder)")
    p.add_argument("--format", default="auto", choices=["auto", *READERS], help="archive format")
    p.add_argument("--collected-at", help="when the counts were read (ISO time), if the archive does not say")
    p.add_argument("--media", default="photo", help="media types to keep, comma-separated (photo,video,animated_gif)")
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


def _archive(args) -> int:
    config = ArchiveConfig(paths=args.paths, out=args.out, format=args.format,
                           collected_at=args.collected_at, media=args.media.split(","))
    print(json.dumps(ingest_archive(config)))
    return 0


def _synthetic(args) -> int:
    if args.users < 1 or args.tweets_per_user < 1 or args.image_size < 16:
        raise UserError("--users and --tweets-per-user must be ≥ 1 and --image-size ≥ 16")
    print(json.dumps(generate(SyntheticConfig(args.out, args.users, args.tweets_per_user, args.image_size, args.seed))))
    return 0


def main(argv=None, prog: str = "iipa ingest") -> int:
    args = build_parser(prog).parse_args(argv)
    return run_main(args.handler, args, prog, extra_user_errors=(FormatError,))


if __name__ == "__main__":
    sys.exit(main())
