"""Command line of the PDIP builder: `iipa pairs build` (`python -m shards pairs build`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shards.console import Parser, UserError, run_main
from shards.pairs import PairsConfig, build_pairs
from shards.pairs.stats import summary


def _floats(text: str, n: int, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise UserError(f"{flag} takes {n} comma-separated numbers, got {text!r}")
    return values


def pairs_parser(prog: str) -> Parser:
    parser = Parser(prog=prog, description="Popularity-discriminable image pairs (PDIPs).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("build", help="build pair manifests from an images table",
                       description="Build PDIP manifests ({train,val,test}.parquet, stats.json) from an images table.")
    p.add_argument("--images", required=True, type=Path, help="images table (Parquet file or folder)")
    p.add_argument("--out", required=True, type=Path, help="pairs folder")
    p.add_argument("--preset", default="twitter", choices=["twitter", "ding"], help="rule preset")
    p.add_argument("--weights", default="0.7,0.3", help="popularity weights of retweets,likes")
    p.add_argument("--sigma", type=float, help="σ of the Thurstone model (default 0.3)")
    p.add_argument("--threshold", type=float, help="keep pairs with P(hi ≻ lo) ≥ this (default 0.95)")
    p.add_argument("--max-days", type=float, help="posted at most this many days apart (default 10)")
    p.add_argument("--max-caption-diff", type=int, help="twitter: caption lengths differ by at most this")
    p.add_argument("--min-common-hashtags", type=int, help="twitter: hashtags in common")
    p.add_argument("--extra-share", type=float, help="twitter: share of the output pairs that carry the retweet rule "
                                                      "(default 1/3; all that pass it if fewer do)")
    p.add_argument("--extra-min-retweets", type=int, help="twitter retweet rule: one tweet above this")
    p.add_argument("--max-caption-words", type=int, help="ding: at most this many caption words")
    p.add_argument("--min-likes", type=int, help="ding: at least this many likes")
    p.add_argument("--min-age-days", type=float, help="ding: posts at least this old when counted")
    p.add_argument("--max-pairs-per-user", type=int, help="cap of pairs per user (0: none; default 1000, ding none)")
    p.add_argument("--identical-tags", action=argparse.BooleanOptionalAction, help="ding: same hashtags and mentions")
    p.add_argument("--single-photo", action=argparse.BooleanOptionalAction, help="ding: single-photo tweets only")
    p.add_argument("--one-pair-per-image", action=argparse.BooleanOptionalAction, help="ding: each image in one pair")
    p.add_argument("--all-candidates", action="store_true", help="emit every pair that passes the rules")
    p.add_argument("--split", default="user", choices=["user", "pair"], help="split by user or by pair")
    p.add_argument("--split-shares", default="0.8,0.1,0.1", help="train,val,test shares")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw")
    p.add_argument("--no-plot", action="store_true", help="do not write pairs.png")
    p.set_defaults(handler=_pairs)
    return parser


THRESHOLD_FLAGS = ("sigma", "threshold", "max_days", "max_caption_diff", "min_common_hashtags", "extra_share",
                   "extra_min_retweets", "max_caption_words", "min_likes", "min_age_days", "max_pairs_per_user",
                   "identical_tags", "single_photo", "one_pair_per_image")


def _pairs(args) -> int:
    options = PairsConfig.preset_defaults(args.preset)
    options.update({k: getattr(args, k) for k in THRESHOLD_FLAGS if getattr(args, k) is not None})
    if options.get("max_pairs_per_user") == 0:
        options["max_pairs_per_user"] = None
    config = PairsConfig(images=args.images, out=args.out, preset=args.preset,
                         weights=_floats(args.weights, 2, "--weights"), all_candidates=args.all_candidates,
                         split=args.split, split_shares=_floats(args.split_shares, 3, "--split-shares"),
                         seed=args.seed, plot=not args.no_plot, **options)
    stats = build_pairs(config)
    print(summary(stats))
    print(json.dumps({"pairs": stats["pairs"], **{s: v["pairs"] for s, v in stats["splits"].items()}}))
    return 0


def main(argv=None, prog: str = "iipa pairs") -> int:
    args = pairs_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    return run_main(args.handler, args, prog)
