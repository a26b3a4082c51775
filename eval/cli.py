"""Command lines of the eval stage: `iipa eval` and `iipa score` (`python -m eval [score]`)."""
from __future__ import annotations

import json
import sys

from eval.config import EvalConfig, ScoreConfig
from shards.console import Parser, run_main
from shards.flags import ConfigFlags, Flag

# eval.evaluate and eval.score import torch: only a command that runs imports them, so that
# --help and argument errors answer at once.


# Every field of EvalConfig and ScoreConfig is a flag of the same name; these depart from that.
EVAL_FLAGS = {"iipa": Flag(metavar="PATH")}
SCORE_FLAGS = {"inputs": Flag(positional="*", metavar="images")}


def eval_parser(prog: str) -> Parser:
    p = Parser(prog=prog, description="Pairwise accuracy of a model on a pair manifest with baselines, "
                                      "correlation, calibration and a bias check, as a report.")
    return ConfigFlags(EvalConfig, EVAL_FLAGS).add_to(p)


def _eval(args) -> int:
    from eval.evaluate import evaluate

    config = ConfigFlags(EvalConfig, EVAL_FLAGS).build(args)
    report = evaluate(config)
    print(json.dumps({"pairs": report["pairs"], "report": str(config.out / "report.md"),
                      "accuracy": {k: round(v["accuracy"], 4) for k, v in report["accuracy"].items()}}))
    return 0


def main(argv=None, prog: str = "iipa eval") -> int:
    args = eval_parser(prog).parse_args(argv)
    return run_main(_eval, args, prog)


def score_parser(prog: str) -> Parser:
    p = Parser(prog=prog, description="Score images (files, folders, or a shards folder) with a model; "
                                      "unreadable images are reported, not fatal.")
    return ConfigFlags(ScoreConfig, SCORE_FLAGS).add_to(p)


def print_table(table) -> None:
    rows = table.to_pylist()
    width = max([len(r["path"] + (f"#{r['key']}" if r["key"] else "")) for r in rows] + [5])
    print(f"{'score':>10}  {'status':<12}  image")
    for r in rows:
        name = r["path"] + (f"#{r['key']}" if r["key"] else "")
        score = f"{r['score']:10.4f}" if r["score"] is not None else f"{'–':>10}"
        line = f"{score}  {r['status']:<12}  {name:<{width}}"
        print(line + (f"  {r['error']}" if r["error"] else ""))


def _score(args) -> int:
    from eval.score import score_images

    config = ConfigFlags(ScoreConfig, SCORE_FLAGS).build(args)
    table, not_images = score_images(config)
    if config.out is None:
        print_table(table)
    failed = [r for r in table.to_pylist() if r["status"] != "ok"]
    for r in failed:
        sys.stderr.write(f"{r['path']}: {r['status']}: {r['error']}\n")
    summary = {"scored": table.num_rows - len(failed), "failed": len(failed), "not_images": not_images}
    if config.out is not None:
        summary["out"] = str(config.out)
    sys.stderr.write(json.dumps(summary) + "\n")
    return 0


def score_main(argv=None, prog: str = "iipa score") -> int:
    args = score_parser(prog).parse_args(argv)
    return run_main(_score, args, prog)
