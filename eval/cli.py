"""Command lines of the eval stage: `iipa eval` and `iipa score` (`python -m eval [score]`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from shards.console import Parser, run_main

# eval.evaluate and eval.score import torch: only a command that runs imports them, so that
# --help and argument errors answer at once.


def eval_parser(prog: str) -> Parser:
    p = Parser(prog=prog, description="Pairwise accuracy of a model on a pair manifest with baselines, "
                                      "correlation, calibration and a bias check, as a report.")
    p.add_argument("--model", required=True, help="a run's model.pth (model.json beside it) or iipa:PATH")
    p.add_argument("--shards", required=True, type=Path, help="shards folder with the pairs' images")
    p.add_argument("--pairs", required=True, type=Path,
                   help="pair manifest (e.g. PAIRS/test.parquet), or a pairs folder (each file a split)")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--iipa", metavar="PATH", help="IIPA's released weights, scored as a baseline without fine-tuning")
    p.add_argument("--images", type=Path, help="images table for user activity (default: the shards' table)")
    p.add_argument("--backend", default="auto",
                   help="decoding: auto (Pillow on the CPU, DALI or nvJPEG on a GPU), torch, dali, nvjpeg")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--no-faces", action="store_true", help="skip the face detector")
    p.add_argument("--threads", type=int, default=2, help="decoding threads")
    return p


def _eval(args) -> int:
    from eval.evaluate import EvalConfig, evaluate

    report = evaluate(EvalConfig(args.model, args.shards, args.pairs, args.out, args.backend, args.batch_size,
                                 args.bootstrap, args.seed, args.iipa, args.images, args.device, not args.no_faces,
                                 args.threads))
    print(json.dumps({"pairs": report["pairs"], "report": str(args.out / "report.md"),
                      "accuracy": {k: round(v["accuracy"], 4) for k, v in report["accuracy"].items()}}))
    return 0


def main(argv=None, prog: str = "iipa eval") -> int:
    args = eval_parser(prog).parse_args(argv)
    return run_main(_eval, args, prog)


def score_parser(prog: str) -> Parser:
    p = Parser(prog=prog, description="Score images (files, folders, or a shards folder) with a model; "
                                      "unreadable images are reported, not fatal.")
    p.add_argument("images", nargs="*", type=Path, help="image files and folders")
    p.add_argument("--model", required=True, help="a run's model.pth (model.json beside it) or iipa:PATH")
    p.add_argument("--shards", type=Path, help="score every image stored in this shards folder")
    p.add_argument("--out", type=Path, help="write scores to this .csv or .parquet (default: a table on stdout)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backend", default="auto",
                   help="decoding: auto (Pillow on the CPU, DALI or nvJPEG on a GPU), torch, dali, nvjpeg")
    p.add_argument("--threads", type=int, default=2, help="reading and decoding threads")
    return p


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
    from eval.score import ScoreConfig, score_images

    table, not_images = score_images(ScoreConfig(args.model, list(args.images), args.shards, args.out,
                                                 args.batch_size, args.device, args.backend, args.threads))
    if args.out is None:
        print_table(table)
    failed = [r for r in table.to_pylist() if r["status"] != "ok"]
    for r in failed:
        sys.stderr.write(f"{r['path']}: {r['status']}: {r['error']}\n")
    summary = {"scored": table.num_rows - len(failed), "failed": len(failed), "not_images": not_images}
    if args.out is not None:
        summary["out"] = str(args.out)
    sys.stderr.write(json.dumps(summary) + "\n")
    return 0


def score_main(argv=None, prog: str = "iipa score") -> int:
    args = score_parser(prog).parse_args(argv)
    return run_main(_score, args, prog)
