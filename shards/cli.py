"""Command lines of the shards stage: `iipa shards build|verify|stats|index|rebuild` and
`iipa pairs …` (`python -m shards`). Each handler builds a config and calls one function."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from shards import BuildConfig, build_shards
from shards.build.resize import RESAMPLE
from shards.console import Parser, run_main
from shards.flags import SKIP, ConfigFlags, Flag
from shards.rebuild import RebuildConfig, rebuild_shards

EXIT_DAMAGED = 1  # verify found a problem (2 stays "you used the command wrongly")


# Every field of BuildConfig and RebuildConfig (their fetch and resize sections flattened) is a
# flag of the same name; these depart from that.
BUILD_FLAGS = {"retries": Flag(name="actor_retries"), "retry_statuses": Flag(name="statuses"),
               "fetch.retries": Flag(name="fetch_retries"), "fetch.allow_local": Flag(metavar="DIR"),
               "fetch.remote_size": Flag(parse=lambda text: text or None),  # '': the original
               "resize.resample": Flag(choices=tuple(RESAMPLE))}
REBUILD_FLAGS = {"shards": Flag(positional="1"), "by": Flag(choices=("none", "user")),
                 "retries": Flag(name="actor_retries"), "resize.size": SKIP,  # `size` replaces it
                 "resize.resample": Flag(choices=tuple(RESAMPLE))}


def _build_parser(sub) -> None:
    p = sub.add_parser("build", help="fetch, decode, resize and write shards on Ray",
                       description="Fetch, decode and resize the images of an images table into WebDataset shards.")
    ConfigFlags(BuildConfig, BUILD_FLAGS).add_to(p)
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
    ConfigFlags(RebuildConfig, REBUILD_FLAGS).add_to(p)
    p.set_defaults(handler=_rebuild)
    return parser


def _build(args) -> int:
    manifest = build_shards(ConfigFlags(BuildConfig, BUILD_FLAGS).build(args))
    shown = ("rows", "ok", "bytes", "status", "built_on_nodes", "retry", "cpu_ms_per_image")
    print(json.dumps({k: manifest[k] for k in shown if k in manifest}))
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
    manifest = rebuild_shards(ConfigFlags(RebuildConfig, REBUILD_FLAGS).build(args))
    print(json.dumps({k: manifest[k] for k in ("rows", "ok", "bytes", "status")} | {"shards": len(manifest["shards"])}))
    return 0


def main(argv=None, prog: str = "iipa shards") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pairs"]:  # `python -m shards pairs build …`
        from shards.pairs.cli import main as pairs_main

        return pairs_main(argv[1:], prog=f"{prog} pairs")
    args = shards_parser(prog).parse_args(argv)
    return run_main(args.handler, args, prog)
