"""The `iipa` command: one entry point that dispatches to every stage's own command line."""
from __future__ import annotations

import json
import sys

from shards.console import EXIT_USAGE, Parser, run_main
from shards.flags import ConfigFlags

COMMANDS = {
    "demo": "the main job on the embedded synthetic data, every stage end to end",
    "ingest": "tweets in: archives or the synthetic set → images table",
    "pairs": "popularity-discriminable image pairs from an images table",
    "shards": "fetch, decode and resize images into WebDataset shards",
    "train": "train the shared-weight ResNet pair ranker (torchrun DDP)",
    "eval": "pairwise accuracy of a model on a pair manifest",
    "score": "score images with a trained model",
    "launch": "launch training on many nodes (torchrun, Slurm, Ray)",
    "bench": "throughput of each stage against a same-run baseline",
}

USAGE = "usage: iipa COMMAND [options]   (iipa COMMAND --help for each)\n\n" + "\n".join(
    f"  {name:<8} {text}" for name, text in COMMANDS.items()) + "\n"


def demo_main(argv, prog: str = "iipa demo") -> int:
    from cluster.config import DemoConfig

    p = Parser(prog=prog, description="Run every stage end to end on the embedded synthetic data and "
                                      "report pairwise accuracy beside chance, the oracle and simple statistics.")
    flags = ConfigFlags(DemoConfig)
    args = flags.add_to(p).parse_args(argv)

    def handler(args) -> int:
        from cluster.demo import run_demo

        config = flags.build(args)
        summary = run_demo(config)
        print((config.out / "report.md").read_text())
        print(json.dumps({k: round(v["accuracy"], 4) for k, v in summary["accuracy"].items()}))
        return 0

    return run_main(handler, args, prog)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    prog = f"iipa {command}"
    if command == "demo":
        return demo_main(rest, prog)
    if command == "ingest":
        from ingest.cli import main as ingest_main

        return ingest_main(rest, prog)
    if command == "pairs":
        from shards.pairs.cli import main as pairs_main

        return pairs_main(rest, prog)
    if command == "shards":
        from shards.cli import main as shards_main

        return shards_main(rest, prog)
    if command == "train":
        from train.cli import main as train_main

        return train_main(rest, prog)
    if command == "eval":
        from eval.cli import main as eval_main

        return eval_main(rest, prog)
    if command == "score":
        from eval.cli import score_main

        return score_main(rest, prog)
    if command == "launch":
        from cluster.launch import main as launch_main

        return launch_main(rest, prog)
    if command == "bench":
        from cluster.bench import main as bench_main

        return bench_main(rest, prog)
    sys.stderr.write(f"iipa: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}\n")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
