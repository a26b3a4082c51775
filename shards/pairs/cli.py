"""Command line of the PDIP builder: `iipa pairs build` (`python -m shards pairs build`)."""
from __future__ import annotations

import json
import sys

from shards.console import Parser, run_main
from shards.flags import ConfigFlags, Flag
from shards.pairs import PairsConfig, build_pairs
from shards.pairs.stats import summary


# Every field of PairsConfig is a flag of the same name; the preset's thresholds apply where a
# flag is not given.
FLAGS = {"preset": Flag(choices=("twitter", "ding")), "split": Flag(choices=("user", "pair"))}


def pairs_parser(prog: str) -> Parser:
    parser = Parser(prog=prog, description="Popularity-discriminable image pairs (PDIPs).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("build", help="build pair manifests from an images table",
                       description="Build PDIP manifests ({train,val,test}.parquet, stats.json) from an images "
                                   "table. Thresholds not given take the --preset's values.")
    ConfigFlags(PairsConfig, FLAGS).add_to(p)
    p.set_defaults(handler=_pairs)
    return parser


def pairs_config(args) -> PairsConfig:
    """The defaults, then the preset's thresholds, then the flags given."""
    preset = getattr(args, "preset", PairsConfig.preset)  # absent when not given
    config = ConfigFlags(PairsConfig, FLAGS).build(args, **PairsConfig.preset_defaults(preset))
    if config.max_pairs_per_user == 0:  # 0 on the command line: no cap
        config.max_pairs_per_user = None
    return config


def _pairs(args) -> int:
    stats = build_pairs(pairs_config(args))
    print(summary(stats))
    print(json.dumps({"pairs": stats["pairs"], **{s: v["pairs"] for s, v in stats["splits"].items()}}))
    return 0


def main(argv=None, prog: str = "iipa pairs") -> int:
    args = pairs_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    return run_main(args.handler, args, prog)
