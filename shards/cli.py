"""Command lines of the shards stage: `iipa shards …` and `iipa pairs …` (`python -m shards`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from shards.build import BuildConfig, build_shards
from shards.console import Parser, UserError, run_main
from shards.fetch import X_MEDIA_HOSTS, FetchConfig
from shards.pairs import PairsConfig, build_pairs
from shards.resize import ResizeConfig


def _floats(text: str, n: int, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise UserError(f"{flag} takes {n} comma-separated numbers, got {text!r}")
    return values


def shards_parser(prog: str) -> Parser:
    parser = Parser(prog=prog, description="Image shards: WebDataset tars with a Parquet index.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("build", help="fetch, decode, resize and write shards on Ray",
                       description="Fetch, decode and resize the images of an images table into WebDataset shards.")
    p.add_argument("--images", required=True, type=Path, help="images table (Parquet file or folder)")
    p.add_argument("--out", required=True, type=Path, help="shards folder")
    p.add_argument("--only-paired", type=Path, help="pairs folder: fetch only the images some pair uses")
    p.add_argument("--size", type=int, default=256, help="shorter side of stored images (never upscaled)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of stored images")
    p.add_argument("--shard-size", type=int, default=1000, help="rows per shard")
    p.add_argument("--workers", type=int, default=2, help="Ray actors")
    p.add_argument("--threads", type=int, default=8, help="concurrent fetches per actor")
    p.add_argument("--ray-address", help="address of a running Ray cluster (default: start a local one)")
    p.add_argument("--allow-hosts", default=",".join(X_MEDIA_HOSTS), help="HTTP hosts images may come from")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--remote-size", default="medium", help="size variant asked of X's media hosts")
    p.set_defaults(handler=_build)
    return parser


def _build(args) -> int:
    config = BuildConfig(
        images=args.images, out=args.out, only_paired=args.only_paired, shard_size=args.shard_size,
        workers=args.workers, threads=args.threads, ray_address=args.ray_address,
        fetch=FetchConfig(allow_hosts=tuple(h for h in args.allow_hosts.split(",") if h), timeout=args.timeout,
                          remote_size=args.remote_size or None),
        resize=ResizeConfig(size=args.size, quality=args.quality))
    manifest = build_shards(config)
    print(json.dumps({k: manifest[k] for k in ("rows", "ok", "bytes", "status")}))
    return 0


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
    p.add_argument("--extra-share", type=float, help="twitter: share of pairs under the retweet rule")
    p.add_argument("--extra-min-retweets", type=int, help="twitter retweet rule: one tweet above this")
    p.add_argument("--max-caption-words", type=int, help="ding: at most this many caption words")
    p.add_argument("--min-likes", type=int, help="ding: at least this many likes")
    p.add_argument("--min-age-days", type=float, help="ding: posts at least this old when counted")
    p.add_argument("--max-pairs-per-user", type=int, help="cap of pairs per user (0: none)")
    p.add_argument("--all-candidates", action="store_true", help="emit every pair that passes the rules")
    p.add_argument("--split", default="user", choices=["user", "pair"], help="split by user or by pair")
    p.add_argument("--split-shares", default="0.8,0.1,0.1", help="train,val,test shares")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw")
    p.set_defaults(handler=_pairs)
    return parser


THRESHOLD_FLAGS = ("sigma", "threshold", "max_days", "max_caption_diff", "min_common_hashtags", "extra_share",
                   "extra_min_retweets", "max_caption_words", "min_likes", "min_age_days", "max_pairs_per_user")


def _pairs(args) -> int:
    options = PairsConfig.preset_defaults(args.preset)
    options.update({k: getattr(args, k) for k in THRESHOLD_FLAGS if getattr(args, k) is not None})
    if options.get("max_pairs_per_user") == 0:
        options["max_pairs_per_user"] = None
    config = PairsConfig(images=args.images, out=args.out, preset=args.preset,
                         weights=_floats(args.weights, 2, "--weights"), all_candidates=args.all_candidates,
                         split=args.split, split_shares=_floats(args.split_shares, 3, "--split-shares"),
                         seed=args.seed, **options)
    stats = build_pairs(config)
    print(json.dumps({"pairs": stats["pairs"], **{s: v["pairs"] for s, v in stats["splits"].items()}}))
    return 0


def main(argv=None, prog: str = "iipa shards") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pairs"]:  # `python -m shards pairs build …`
        return pairs_main(argv[1:], prog=f"{prog} pairs")
    args = shards_parser(prog).parse_args(argv)
    return run_main(args.handler, args, prog)


def pairs_main(argv=None, prog: str = "iipa pairs") -> int:
    args = pairs_parser(prog).parse_args(argv)
    return run_main(args.handler, args, prog)
