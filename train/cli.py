"""Command line of the trainer: `iipa train`, `python -m train`, and `torchrun -m train`.

Without torchrun, `--nproc-per-node N` re-launches this same command under
`torchrun --standalone`; under torchrun (RANK is set) it trains as one rank of the job.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shards.console import Parser, UserError, run_main
from train.config import ARCHS, TrainConfig

# flag → (section, field); each flag overrides the YAML file, which overrides the defaults.
FLAGS = {
    "shards": ("data", "shards"), "pairs": ("data", "pairs"), "backend": ("data", "backend"),
    "decode_device": ("data", "decode_device"), "resize": ("data", "resize"), "crop": ("data", "crop"),
    "threads": ("data", "threads"), "lr_backbone": ("optim", "lr_backbone"), "lr_head": ("optim", "lr_head"),
    "weight_decay": ("optim", "weight_decay"), "lr_decay": ("optim", "lr_decay"), "arch": ("model", "arch"),
    "init": ("model", "init"), "out": ("run", "out"), "epochs": ("run", "epochs"), "max_steps": ("run", "max_steps"),
    "batch_pairs": ("run", "batch_pairs"), "val_every": ("run", "val_every"), "ckpt_every": ("run", "ckpt_every"),
    "log_every": ("run", "log_every"), "seed": ("run", "seed"), "precision": ("run", "precision"),
    "compile": ("run", "compile"), "audit": ("run", "audit"),
}


def build_parser(prog: str = "iipa train") -> Parser:
    p = Parser(prog=prog, description="Train the shared-weight ResNet pair ranker on shard-streamed PDIPs "
                                      "(one CPU, one GPU, or many nodes under torchrun).")
    p.add_argument("--config", type=Path, help="YAML file with sections data, optim, model, run")
    p.add_argument("--shards", type=Path, help="shards folder")
    p.add_argument("--pairs", type=Path, help="pairs folder (train.parquet, val.parquet)")
    p.add_argument("--out", type=Path, help="run folder")
    p.add_argument("--arch", choices=ARCHS, help="torchvision ResNet (default resnet50)")
    p.add_argument("--init", help="random, imagenet:PATH, iipa:PATH or an earlier RUN folder")
    p.add_argument("--backend", help="decoding backend: auto, dali, torch")
    p.add_argument("--decode-device", choices=["auto", "mixed", "cpu"], help="where DALI decodes")
    p.add_argument("--resize", type=int, help="shorter side after resizing (default 256)")
    p.add_argument("--crop", type=int, help="square crop fed to the model (default 224)")
    p.add_argument("--threads", type=int, help="decoding threads per rank")
    p.add_argument("--epochs", type=int, help="passes over the training pairs")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--batch-pairs", type=int, help="pairs per step per rank (default 64)")
    p.add_argument("--lr-backbone", type=float, help="learning rate of the backbone (default 1e-5)")
    p.add_argument("--lr-head", type=float, help="learning rate of the head (default 1e-4)")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default 1e-4)")
    p.add_argument("--lr-decay", type=float, help="learning-rate factor per epoch (default 0.95)")
    p.add_argument("--val-every", type=int, help="validate every N steps")
    p.add_argument("--ckpt-every", type=int, help="checkpoint every N steps")
    p.add_argument("--log-every", type=int, help="log training metrics every N steps")
    p.add_argument("--seed", type=int, help="seed of data order, swaps and initialisation")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="autocast precision")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--audit", action="store_true", default=None,
                   help="record pair ids per step and a final parameter digest per rank (RUN/audit/)")
    p.add_argument("--nproc-per-node", type=int, help="launch this many ranks under torchrun --standalone")
    p.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts after a rank dies")
    return p


def resolve_config(args) -> TrainConfig:
    raw = {}
    if args.config:
        import yaml

        if not args.config.is_file():
            raise UserError(f"{args.config}: no such config file")
        raw = yaml.safe_load(args.config.read_text()) or {}
    try:
        config = TrainConfig.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{args.config}: {exc}") from exc
    for flag, (section, name) in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(getattr(config, section), name, value)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Reject inconsistent options before any process starts."""
    if not (Path(config.data.shards) / "manifest.json").exists():
        raise UserError(f"{config.data.shards}: not a shards folder (no manifest.json); pass --shards")
    for split in ("train", "val"):
        if not (Path(config.data.pairs) / f"{split}.parquet").exists():
            raise UserError(f"{config.data.pairs}: no {split}.parquet; pass --pairs")
    if config.data.crop > config.data.resize:
        raise UserError(f"--crop {config.data.crop} is larger than --resize {config.data.resize}")
    if config.run.batch_pairs < 1 or config.run.epochs < 1:
        raise UserError("--batch-pairs and --epochs must be ≥ 1")
    for flag in ("ckpt_every", "val_every", "log_every"):
        if getattr(config.run, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be ≥ 1")
    # A state.pt to resume from is checked here, once, weights-only and memory-mapped, so a
    # planted or foreign one is refused in one line before any rank (or torchrun) starts.
    if (Path(config.run.out) / "state.pt").exists():
        from train.checkpoint import load_state  # torch, only when there is something to check

        load_state(Path(config.run.out), mmap=True)


def launch_torchrun(args, argv: list[str]) -> int:
    """Re-run this command as `torchrun --standalone --nproc-per-node N -m train …`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc_per_node}",
           f"--max-restarts={args.max_restarts}", "-m", "train", *argv]
    return subprocess.call(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def main(argv=None, prog: str = "iipa train") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)

    def handler(args) -> int:
        config = resolve_config(args)
        if args.nproc_per_node and "RANK" not in os.environ:
            return launch_torchrun(args, argv)
        resolving = None
        if os.environ.get("LOCAL_RANK", "0") == "0":  # one rank a node resolves; the others map its caches
            from shards.locate import resolve_in_background

            pairs = Path(config.data.pairs)
            resolving = resolve_in_background(config.data.shards, [pairs / "train.parquet", pairs / "val.parquet"])
        from train.loop import train  # imports torch while the pairs resolve

        result = train(config, resolving)
        if result.get("rank", 0) == 0:
            print(json.dumps(result))
        return 0

    return run_main(handler, args, prog)
