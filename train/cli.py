"""Command line of the trainer: `iipa train`, `python -m train`, and `torchrun -m train`.

Without torchrun, `--nproc-per-node N` re-launches this same command under
`torchrun --standalone`; under torchrun (RANK is set) it trains as one rank of the job.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

from shards.console import EXIT_USAGE, PROGRESS, WORKER_ERRORS, Parser, UserError, check_out, run_main
from shards.flags import ConfigFlags, Flag
from train.config import ARCHS, BACKEND_NAMES, DECODE_DEVICES, PRECISIONS, TrainConfig

# Every field of TrainConfig is a flag of the same name (its sections flattened); these only
# list the allowed values in --help (validate checks every value, from a flag or a file alike).
FLAGS = {"model.arch": Flag(choices=ARCHS), "run.precision": Flag(choices=PRECISIONS),
         "data.decode_device": Flag(choices=DECODE_DEVICES)}


def build_parser(prog: str = "iipa train") -> Parser:
    p = Parser(prog=prog, description="Train the shared-weight ResNet pair ranker on shard-streamed PDIPs "
                                      "(one CPU, one GPU, or many nodes under torchrun). Flags override "
                                      "the --config file, which overrides the defaults.")
    p.add_argument("--config", type=Path, help="YAML file with sections data, optim, model, run")
    ConfigFlags(TrainConfig, FLAGS).add_to(p)
    p.add_argument("--nproc-per-node", type=int, help="launch this many ranks under torchrun --standalone")
    p.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts after a rank dies (default 0)")
    return p


def check_train_args(argv: list[str], prog: str) -> None:
    """Parse and check a trainer's arguments without reading its inputs (for `iipa launch`)."""
    resolve_config(build_parser(prog).parse_args(argv), files=False)


def read_config_file(path: Path) -> TrainConfig:
    """A YAML --config file as a TrainConfig (its missing options at their defaults)."""
    import yaml

    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise UserError(f"{path}: not valid YAML{at} ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected sections (data, optim, model, run) as a mapping, "
                        f"found a {type(raw).__name__}")
    try:
        return TrainConfig.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: {exc}") from exc


def resolve_config(args, files: bool = True) -> TrainConfig:
    base = read_config_file(args.config) if args.config else TrainConfig()
    config = ConfigFlags(TrainConfig, FLAGS).build(args, base=base)
    validate(config, args.nproc_per_node, args.max_restarts, files)
    return config


def at_least(minimum, **values) -> None:
    """Each flag's value must be a number ≥ minimum (NaN is not)."""
    for flag, value in values.items():
        if not value >= minimum:  # also false for NaN
            raise UserError(f"--{flag.replace('_', '-')} must be ≥ {minimum}, got {value}")


def validate(config: TrainConfig, nproc_per_node: int | None = None, max_restarts: int = 0,
             files: bool = True) -> None:
    """Reject impossible or inconsistent options before any process starts (the one place for
    every flag and YAML value of the trainer, and the launcher's own two); with `files`, also
    the inputs and the run folder (`iipa launch` leaves those to the nodes that will see them)."""
    d, o, m, r = config.data, config.optim, config.model, config.run
    at_least(1, threads=d.threads, resize=d.resize, crop=d.crop, shuffle_shards=d.shuffle_shards,
             prefetch=d.prefetch, epochs=r.epochs, batch_pairs=r.batch_pairs, ckpt_every=r.ckpt_every,
             val_every=r.val_every, log_every=r.log_every)
    at_least(0, lr_backbone=o.lr_backbone, lr_head=o.lr_head, weight_decay=o.weight_decay, seed=r.seed,
             max_bad_steps=r.max_bad_steps, max_restarts=max_restarts)
    if not 0 < o.lr_decay < float("inf"):
        raise UserError(f"--lr-decay must be a factor > 0, got {o.lr_decay}")
    if not all(v < float("inf") for v in (o.lr_backbone, o.lr_head, o.weight_decay)):
        raise UserError("--lr-backbone, --lr-head and --weight-decay must be finite")
    if r.max_steps is not None:
        at_least(1, max_steps=r.max_steps)
    if nproc_per_node is not None:
        at_least(1, nproc_per_node=nproc_per_node)
    if d.backend not in BACKEND_NAMES:
        raise UserError(f"--backend {d.backend}: choose from {', '.join(BACKEND_NAMES)}")
    for flag, value, choices in (("arch", m.arch, ARCHS), ("precision", r.precision, PRECISIONS),
                                 ("decode-device", d.decode_device, DECODE_DEVICES)):
        if value not in choices:
            raise UserError(f"--{flag} {value}: choose from {', '.join(choices)}")
    if not all(s > 0 for s in d.std):
        raise UserError(f"[data] std must be > 0, got {list(d.std)}")
    if config.data.crop > config.data.resize:
        raise UserError(f"--crop {config.data.crop} is larger than --resize {config.data.resize}")
    if not files:
        return
    check_out(config.run.out)
    if not (Path(config.data.shards) / "manifest.json").exists():
        raise UserError(f"{config.data.shards}: not a shards folder (no manifest.json); pass --shards")
    for split in ("train", "val"):
        if not (Path(config.data.pairs) / f"{split}.parquet").exists():
            raise UserError(f"{config.data.pairs}: no {split}.parquet; pass --pairs")
    # A state.pt to resume from is checked here, once, weights-only and memory-mapped, so a
    # planted or foreign one is refused in one line before any rank (or torchrun) starts.
    if (Path(config.run.out) / "state.pt").exists():
        from train.checkpoint import load_state  # torch, only when there is something to check

        load_state(Path(config.run.out), mmap=True, config=config)


RUN_LOCK = "IIPA_RUN_LOCK"  # set for torchrun's ranks when their launcher holds the run folder's lock
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextmanager
def run_lock(out: Path):
    """Hold RUN/.lock while the block runs: a second trainer on the same run folder would
    interleave checkpoints with this one, so it is refused in one line. The kernel drops the
    lock when its holder dies, however it dies (kill -9 included). A folder this call created
    and nothing else wrote to (the run failed at once) is removed again."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise UserError(f"{out}: another trainer is running in this run folder (pid {holder}); "
                        "wait for it to end or choose another --out") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    try:
        yield
    finally:
        if created and [p.name for p in out.iterdir()] == [".lock"]:
            (out / ".lock").unlink()  # still holding it: no other trainer is inside
            out.rmdir()
        lock.close()


def die_with_parent(libc=None) -> None:
    """Linux: receive SIGTERM when the parent process dies, even by SIGKILL. torchrun starts its
    ranks in sessions of their own, so a signal to the launcher's process group never reaches them."""
    try:
        (libc or ctypes.CDLL(None)).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: nothing to arrange
        pass


def launch_torchrun(config: TrainConfig, nproc_per_node: int, max_restarts: int, prog: str) -> int:
    """Run `config` as `torchrun --standalone --nproc-per-node N -m train --config FILE` and wait:
    FILE holds the config resolved here, so every rank trains on the same options however they
    were given."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="iipa-config-") as tmp:
        path = Path(tmp) / "train.yaml"
        path.write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
        # --out repeats the file's, so that `ps` shows which run each rank belongs to.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
               f"--max-restarts={max_restarts}", "-m", "train", "--config", str(path), "--out", str(config.run.out)]
        return supervise(cmd, {**os.environ, RUN_LOCK: "held"}, prog)


def supervise(cmd: list[str], env: dict[str, str], prog: str) -> int:
    """Run a torchrun command and wait for it, so that stopping this process stops the job and
    a rank's mistake reads as this command's one line.

    torchrun runs in a session of its own: a stop signal to this process (or its group) is
    forwarded once, torchrun stops its ranks and exits, and this process waits for that; if this
    process is killed outright, torchrun gets SIGTERM from the kernel (die_with_parent). A rank's
    user error comes back as this command's one line: the ranks record it in a file, and what
    torchrun prints after it (its ChildFailedError traceback) is not passed on."""
    libc = ctypes.CDLL(None)  # loaded before the fork: the child only calls it
    with tempfile.TemporaryDirectory(prefix="iipa-train-") as tmp:
        errors = Path(tmp) / "errors"
        env = {**env, "PYTHONUNBUFFERED": "1", WORKER_ERRORS: str(errors),
               PROGRESS: "1" if sys.stderr.isatty() else "0"}
        child = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, start_new_session=True,
                                 preexec_fn=lambda: die_with_parent(libc))
        stopped = []

        def forward(signum, frame):
            if not stopped:  # once: a second signal would interrupt torchrun's own clean-up
                stopped.append(signum)
                os.killpg(child.pid, signum)

        previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
        relay = threading.Thread(target=relay_stderr, args=(child.stderr, errors), daemon=True)
        relay.start()
        try:
            code = child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        relay.join(timeout=10)
        first = errors.read_text(encoding="utf-8").splitlines()[:1] if errors.exists() else []
    if first:
        sys.stderr.write(f"{prog}: error: {first[0]}\n")
        return EXIT_USAGE
    if stopped:
        sys.stderr.write(f"{prog}: stopped by {signal.Signals(stopped[0]).name}\n")
        return 128 + stopped[0]
    return code


def relay_stderr(stream, errors: Path) -> None:
    """Copy torchrun's stderr (its ranks' too) to ours as it comes, until a rank records a user error."""
    out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    while chunk := os.read(stream.fileno(), 65536):
        if errors.exists() and errors.stat().st_size:
            continue  # the rest is the failure's echo: the launcher says it in one line
        if out is not None:
            out.write(chunk)
            out.flush()
        else:
            sys.stderr.write(chunk.decode(errors="replace"))


def run_training(config: TrainConfig, nproc_per_node: int | None = None, max_restarts: int = 0,
                 prog: str = "iipa train") -> int:
    """Train with a checked config: as this process (or as one rank, under torchrun), or as
    `nproc_per_node` ranks under torchrun --standalone. The demo and benches call it too."""
    under_torchrun = "RANK" in os.environ
    if under_torchrun:
        die_with_parent()  # no rank outlives its torchrun
    # One trainer per run folder: this process holds the lock unless it is a rank whose
    # launcher holds it (or, under a torchrun started by hand, any rank but rank 0).
    locks = not under_torchrun or (os.environ.get(RUN_LOCK) is None and os.environ["RANK"] == "0")
    with run_lock(Path(config.run.out)) if locks else nullcontext():
        if nproc_per_node and not under_torchrun:
            return launch_torchrun(config, nproc_per_node, max_restarts, prog)
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


def main(argv=None, prog: str = "iipa train") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    return run_main(lambda args: run_training(resolve_config(args), args.nproc_per_node, args.max_restarts, prog),
                    args, prog)
