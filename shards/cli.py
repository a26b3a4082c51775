"""Command lines of the shards stage: `iipa shards build|verify|stats|index|rebuild` and
`iipa pairs …` (`python -m shards`). Each handler builds a config and calls one function."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from shards.console import Parser, run_main
from shards.build.fetch import X_MEDIA_HOSTS
from shards.build.resize import RESAMPLE
from shards.build.retry import TRANSIENT

EXIT_DAMAGED = 1  # verify found a problem (2 stays "you used the command wrongly")


def _common(p, workers_default: int) -> None:
    p.add_argument("--shard-size", type=int, default=1000, help="rows per shard (default 1000)")
    p.add_argument("--workers", type=int, default=workers_default, help="Ray actors")
    p.add_argument("--ray-address", help="address of a running Ray cluster (default: start a local one)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of stored images (default 90)")


def _build_parser(sub) -> None:
    p = sub.add_parser("build", help="fetch, decode, resize and write shards on Ray",
                       description="Fetch, decode and resize the images of an images table into WebDataset shards.")
    p.add_argument("--images", required=True, type=Path, help="images table (Parquet file or folder)")
    p.add_argument("--out", required=True, type=Path, help="shards folder")
    p.add_argument("--only-paired", type=Path, help="pairs folder: fetch only the images some pair uses")
    p.add_argument("--size", type=int, default=256, help="shorter side of stored images, never upscaled (default 256)")
    p.add_argument("--resample", default="area", choices=list(RESAMPLE),
                   help="filter of the last resampling step (default area)")
    _common(p, workers_default=2)
    p.add_argument("--threads", type=int, default=8, help="concurrent fetches per actor (default 8)")
    p.add_argument("--allow-hosts", default=",".join(X_MEDIA_HOSTS),
                   help="HTTP hosts images may come from, comma-separated (default: X's media hosts)")
    p.add_argument("--allow-local", action="append", type=Path, default=[], metavar="DIR",
                   help="a folder whose files local paths and file:// URLs may name (repeatable; "
                        "default: none, local files are refused)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per connection or read (default 10)")
    p.add_argument("--fetch-retries", type=int, default=3, help="retries after 429/5xx/timeouts (default 3)")
    p.add_argument("--max-bytes", type=int, default=20 * 1024 * 1024, help="largest body accepted")
    p.add_argument("--remote-size", default="auto",
                   help="size variant asked of X's media hosts: auto (per photo, the smallest that still gives "
                        "--size; medium when the API gave no dimensions), a name (small, medium, large, …) "
                        "for every photo, or '' for the original")
    p.add_argument("--retry-failed", action="store_true",
                   help="also fetch again the rows of finished shards that failed with one of --statuses, "
                        "and write those shards anew")
    p.add_argument("--statuses", default=",".join(TRANSIENT),
                   help=f"statuses --retry-failed retries, comma-separated; http_5xx is every 5NN "
                        f"(default {','.join(TRANSIENT)})")
    p.set_defaults(handler=_build)


def shards_parser(prog: str) -> Parser:
    parser = Parser(prog=prog, description="Image shards: WebDataset tars with a Parquet index.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _build_parser(sub)
    for name, help_text, handler in (
            ("verify", "check every member, offset, sha1 and the manifest (exit 1 if damaged)", _verify),
            ("stats", "counts by status, users, sizes and bytes", _stats),
            ("index", "write DALI index files (.idx) beside the tars", _index)):
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        p.add_argument("shards", type=Path, help="shards folder")
        p.set_defaults(handler=handler)
    p = sub.add_parser("rebuild", help="re-shard (by user) and/or re-resize without downloading again",
                       description="Re-shard a shards folder on Ray, grouped by user and/or re-resized.")
    p.add_argument("shards", type=Path, help="shards folder to read")
    p.add_argument("--out", required=True, type=Path, help="folder for the new shards")
    p.add_argument("--by", default="none", choices=["none", "user"], help="user: a user's images share a shard")
    p.add_argument("--size", type=int, help="new shorter side (only ever smaller)")
    _common(p, workers_default=2)
    p.set_defaults(handler=_rebuild)
    return parser


def _build(args) -> int:
    from shards.build import BuildConfig, build_shards
    from shards.build.fetch import FetchConfig
    from shards.build.resize import ResizeConfig

    config = BuildConfig(
        images=args.images, out=args.out, only_paired=args.only_paired, shard_size=args.shard_size,
        workers=args.workers, threads=args.threads, ray_address=args.ray_address,
        fetch=FetchConfig(allow_hosts=tuple(h.strip() for h in args.allow_hosts.split(",") if h.strip()),
                          allow_local=tuple(args.allow_local), timeout=args.timeout, retries=args.fetch_retries,
                          max_bytes=args.max_bytes, remote_size=args.remote_size or None),
        resize=ResizeConfig(size=args.size, quality=args.quality, resample=args.resample),
        retry_failed=args.retry_failed, retry_statuses=tuple(s.strip() for s in args.statuses.split(",") if s.strip()))
    manifest = build_shards(config)
    print(json.dumps({k: manifest[k] for k in ("rows", "ok", "bytes", "status", "built_on_nodes", "retry")
                      if k in manifest}))
    return 0


def _verify(args) -> int:
    from shards.verify import verify_shards

    report = verify_shards(args.shards)
    for shard, problems in report["problems"].items():
        for problem in problems[:20]:
            sys.stderr.write(f"{shard}: {problem}\n")
        if len(problems) > 20:
            sys.stderr.write(f"{shard}: … and {len(problems) - 20} more\n")
    print(json.dumps({k: report[k] for k in ("ok", "shards", "rows", "images")} |
                     {"damaged": sorted(report["problems"])}))
    return 0 if report["ok"] else EXIT_DAMAGED


def _stats(args) -> int:
    from shards.verify import shard_stats

    print(json.dumps(shard_stats(args.shards), indent=2))
    return 0


def _index(args) -> int:
    from shards.dali_index import index_shards

    written = index_shards(args.shards)
    print(json.dumps({"indexes": len(written), "folder": str(args.shards)}))
    return 0


def _rebuild(args) -> int:
    from shards.rebuild import RebuildConfig, rebuild_shards
    from shards.build.resize import ResizeConfig

    config = RebuildConfig(shards=args.shards, out=args.out, by=args.by, size=args.size, shard_size=args.shard_size,
                           workers=args.workers, ray_address=args.ray_address,
                           resize=ResizeConfig(quality=args.quality))
    manifest = rebuild_shards(config)
    print(json.dumps({k: manifest[k] for k in ("rows", "ok", "bytes", "status")} | {"shards": len(manifest["shards"])}))
    return 0


def main(argv=None, prog: str = "iipa shards") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pairs"]:  # `python -m shards pairs build …`
        from shards.pairs.cli import main as pairs_main

        return pairs_main(argv[1:], prog=f"{prog} pairs")
    args = shards_parser(prog).parse_args(argv)
    return run_main(args.handler, args, prog)
