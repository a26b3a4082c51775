"""Command lines of the eval stage: `iipa eval` and `iipa score` (`python -m eval`)."""
from __future__ import annotations

import json
from pathlib import Path

from eval.evaluate import EvalConfig, evaluate
from shards.console import Parser, run_main


def eval_parser(prog: str) -> Parser:
    p = Parser(prog=prog, description="Pairwise accuracy of a model on a pair manifest, beside chance, as a report.")
    p.add_argument("--model", required=True, help="a run's model.pth (model.json beside it)")
    p.add_argument("--shards", required=True, type=Path, help="shards folder with the pairs' images")
    p.add_argument("--pairs", required=True, type=Path, help="pair manifest, e.g. PAIRS/test.parquet")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--backend", default="torch", help="decoding backend")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    return p


def _eval(args) -> int:
    report = evaluate(EvalConfig(args.model, args.shards, args.pairs, args.out, args.backend, args.batch_size,
                                 args.bootstrap))
    print(json.dumps({"pairs": report["pairs"], "accuracy": report["accuracy"]["model"]}))
    return 0


def main(argv=None, prog: str = "iipa eval") -> int:
    args = eval_parser(prog).parse_args(argv)
    return run_main(_eval, args, prog)
