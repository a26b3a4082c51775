"""`iipa launch train`: the same training on many nodes, through torchrun, Slurm or Ray.

All three start one `torchrun` per node with c10d rendezvous at HOST:PORT, a run id shared by the
nodes and `--max-restarts`; torchrun then starts one rank per GPU. Nothing in the training code
changes with the launcher.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from shards.console import Parser, UserError, check_out, run_main
from shards.flags import SKIP, ConfigFlags, Flag

SCHEDULERS = ("torchrun", "slurm", "ray")


@dataclass
class LaunchConfig:
    """Options of `iipa launch train`."""

    nodes: int
    """Nodes in the job."""
    gpus_per_node: int
    """Ranks per node (one per GPU; on CPU machines, processes per node)."""
    rdzv: str
    """HOST:PORT of the c10d rendezvous, HOST one of the nodes (Slurm uses PORT alone: the first node
    hosts it; Ray takes `:PORT` to let the first launcher's node host it)."""
    train_args: list[str] = field(default_factory=list)
    """Arguments passed to `python -m train` on every rank."""
    scheduler: str = "torchrun"
    """torchrun (run this node's launcher here), slurm (sbatch script) or ray (a Ray job)."""
    run_id: str = ""
    """Shared id of the rendezvous; generated when empty."""
    max_restarts: int = 3
    """torchrun restarts of the whole job after a rank or node fails."""
    ray_address: str | None = None
    """Ray cluster address for the ray scheduler (default: RAY_ADDRESS or a local instance)."""
    slurm_script: Path = Path("iipa-train.sbatch")
    """Where the Slurm batch script is written."""
    omp_threads: int = 8
    """OMP_NUM_THREADS per rank (torchrun's default of 1 starves CPU-side decoding)."""


def validate(config: LaunchConfig) -> None:
    if config.scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler must be one of {', '.join(SCHEDULERS)}")
    if config.nodes < 1 or config.gpus_per_node < 1:
        raise UserError("--nodes and --gpus-per-node must be ≥ 1")
    host, _, port = config.rdzv.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535 or (config.scheduler == "torchrun" and not host):
        raise UserError(f"--rdzv must be HOST:PORT with PORT in 1..65535, got {config.rdzv!r}")
    if config.max_restarts < 0:
        raise UserError(f"--max-restarts must be ≥ 0, got {config.max_restarts}")
    if config.scheduler == "slurm":
        check_out(config.slurm_script, "--slurm-script", folder=False)
    if not config.train_args:
        raise UserError("give the training arguments after --, e.g. -- --shards S --pairs P --out RUN")
    from train.cli import check_train_args

    check_train_args(config.train_args, "iipa launch train --")


def launch_env(config: LaunchConfig) -> dict[str, str]:
    """Environment every node's torchrun gets, under what that node's environment already sets."""
    return {
        "OMP_NUM_THREADS": str(config.omp_threads),
        # torchrun keeps one rendezvous store across restarts and torch writes the ranks' addresses
        # into it without the attempt, so a restarted rank could connect to a killed peer's old
        # address (pytorch/pytorch#135712). A fresh store each round; train/loop.py covers the
        # one-node case when torchrun is started by hand.
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }


def torchrun_command(config: LaunchConfig, endpoint: str | None = None) -> list[str]:
    """The launcher command every node runs; identical on all nodes (c10d assigns node ranks)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={config.nodes}",
            f"--nproc-per-node={config.gpus_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint or config.rdzv}", f"--rdzv-id={config.run_id}",
            f"--max-restarts={config.max_restarts}", "-m", "train", *config.train_args]


def slurm_script(config: LaunchConfig) -> str:
    """An sbatch script: one task per node, each running torchrun against the first node."""
    port = config.rdzv.rpartition(":")[2]
    cmd = torchrun_command(config, endpoint=f"$HEAD:{port}")
    quoted = " ".join(c if c.startswith("--rdzv-endpoint=") else shlex.quote(c) for c in cmd)
    return "\n".join([
        "#!/bin/bash",
        "#SBATCH --job-name=iipa-train",
        f"#SBATCH --nodes={config.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={config.gpus_per_node}",
        "#SBATCH --exclusive",
        "set -euo pipefail",
        "# The first node of the allocation hosts the c10d rendezvous.",
        'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        *(f"export {name}={shlex.quote(value)}" for name, value in launch_env(config).items()),
        "export NCCL_ASYNC_ERROR_HANDLING=1  # a failed rank aborts collectives instead of hanging",
        f"srun --kill-on-bad-exit=0 {quoted}",
        "",
    ])


def node_env(config: LaunchConfig) -> dict[str, str]:
    """launch_env as this node runs it: what its own environment sets wins."""
    return {name: os.environ.get(name, value) for name, value in launch_env(config).items()}


def run_torchrun(config: LaunchConfig, dry_run: bool) -> int:
    """This node's torchrun, supervised: a stop reaches its ranks, a rank's mistake is one line."""
    from train.cli import supervise

    cmd, env = torchrun_command(config), node_env(config)
    print(shlex.join(["env", *(f"{name}={value}" for name, value in env.items()), *cmd]), flush=True)  # runnable as printed
    if dry_run:
        return 0
    return supervise(cmd, {**os.environ, **env}, "iipa launch train")


def run_slurm(config: LaunchConfig, dry_run: bool) -> int:
    script = slurm_script(config)
    config.slurm_script.write_text(script)
    print(f"# written to {config.slurm_script}\n{script}")
    if dry_run:
        return 0
    if shutil.which("sbatch") is None:
        raise UserError("sbatch not found: run on a Slurm login node, or submit the written script there")
    return subprocess.call(["sbatch", str(config.slurm_script)])


def run_ray(config: LaunchConfig, dry_run: bool) -> int:
    """One actor per node (placement group, strictly spread), each running this node's torchrun."""
    print(f"# ray: {config.nodes} node actor(s), each running:\n{shlex.join(torchrun_command(config))}")
    if dry_run:
        return 0
    from cluster.ray_launch import run_on_ray

    return run_on_ray(config, torchrun_command(config), launch_env(config))


LAUNCHERS = {"torchrun": run_torchrun, "slurm": run_slurm, "ray": run_ray}


def launch(config: LaunchConfig, dry_run: bool = False) -> int:
    validate(config)
    config.run_id = config.run_id or f"iipa-{uuid.uuid4().hex[:8]}"
    return LAUNCHERS[config.scheduler](config, dry_run)


def main(argv=None, prog: str = "iipa launch") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = Parser(prog=prog, description="Launch training on many nodes: one torchrun per node with c10d "
                                      "rendezvous (directly, as a Slurm job, or as a Ray job).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    t = sub.add_parser("train", help="launch `iipa train` on every node",
                       description="Launch `iipa train` on every node; training arguments follow `--`.")
    flags = ConfigFlags(LaunchConfig, {"train_args": SKIP, "scheduler": Flag(choices=SCHEDULERS)})
    flags.add_to(t)
    t.add_argument("--dry-run", action="store_true", help="print (and for Slurm write) what would run")
    args = p.parse_args(argv)

    def handler(args) -> int:
        config = flags.build(args, train_args=train_args)
        return launch(config, args.dry_run)

    return run_main(handler, args, prog)
