"""Command lines of the shards stage: `iipa shards …` and `iipa pairs …` (`python -m shards`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from shards.build import BuildConfig, build_shards
from shards.console import Parser, run_main
from shards.fetch import X_MEDIA_HOSTS, FetchConfig
from shards.resize import ResizeConfig


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


def main(argv=None, prog: str = "iipa shards") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pairs"]:  # `python -m shards pairs build …`
        from shards.pairs_cli import main as pairs_main

        return pairs_main(argv[1:], prog=f"{prog} pairs")
    args = shards_parser(prog).parse_args(argv)
    return run_main(args.handler, args, prog)

