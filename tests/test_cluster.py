"""Many nodes on one machine: two torchrun "nodes" with c10d rendezvous on 127.0.0.1, a Ray
cluster of a head and a second node, and the launchers' scripts."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from shards.locate import ShardIndex
from shards.schema import read_table
from tests.conftest import REPO, rank_pid, run_iipa
from train.data import load_pairs

TRAIN = ["--arch", "resnet18", "--resize", "40", "--crop", "32", "--batch-pairs", "16", "--max-steps", "3",
         "--lr-backbone", "1e-3", "--lr-head", "1e-3", "--val-every", "1000", "--threads", "1",
         "--backend", "torch", "--audit"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(dataset: Path, out: Path) -> list[str]:
    return ["--shards", str(dataset / "shards"), "--pairs", str(dataset / "pairs"), "--out", str(out), *TRAIN]


def check_two_rank_run(dataset: Path, out: Path) -> None:
    """Both ranks end with identical parameters and trained on disjoint pairs."""
    ranks = {}
    for path in sorted((out / "audit").glob("rank-*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        ranks[path.stem] = ({i for r in records if not r.get("final") for i in r["pairs"]},
                            [r for r in records if r.get("final")][-1])
    assert set(ranks) == {"rank-0", "rank-1"}
    (pairs0, final0), (pairs1, final1) = ranks["rank-0"], ranks["rank-1"]
    assert final0["params_sha1"] == final1["params_sha1"] and final0["step"] == final1["step"] == 3
    assert pairs0 and pairs1 and not pairs0 & pairs1
    n = len(load_pairs(dataset / "pairs" / "train.parquet", ShardIndex(dataset / "shards")))
    assert max(pairs0 | pairs1) < n


def test_two_torchrun_nodes_share_one_job(train_dataset, tmp_path):
    out, port = tmp_path / "run", free_port()
    cmd = [sys.executable, "-m", "cluster", "launch", "train", "--nodes", "2", "--gpus-per-node", "1",
           "--rdzv", f"127.0.0.1:{port}", "--run-id", "two-nodes", "--max-restarts", "0", "--",
           *train_args(train_dataset, out)]
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]
    nodes = [subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    try:
        codes = [p.wait(timeout=300) for p in nodes]
    finally:
        for p in nodes:
            p.kill() if p.poll() is None else None
    assert codes == [0, 0], (tmp_path / "node0.log").read_text()[-3000:]
    check_two_rank_run(train_dataset, out)


def test_two_nodes_restart_in_place_after_a_rank_dies(train_dataset, tmp_path):
    """Rank 1 is SIGKILLed on its node; both nodes' torchrun restart their workers in a new
    rendezvous round, which resume from state.pt and finish in step."""
    out, port = tmp_path / "run", free_port()
    args = [*train_args(train_dataset, out), "--epochs", "2", "--max-steps", "6", "--ckpt-every", "2"]
    cmd = [sys.executable, "-m", "cluster", "launch", "train", "--nodes", "2", "--gpus-per-node", "1",
           "--rdzv", f"127.0.0.1:{port}", "--run-id", "restart", "--max-restarts", "1", "--", *args]
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    nodes = [subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT) for log in logs]
    try:
        deadline = time.time() + 300
        while not (out / "state.pt").exists() and time.time() < deadline and all(p.poll() is None for p in nodes):
            time.sleep(0.2)
        victim = rank_pid(1, out)
        assert victim is not None, "rank 1 never started: " + "".join(log.read_text() for log in logs)[-3000:]
        os.kill(victim, signal.SIGKILL)
        codes = [p.wait(timeout=300) for p in nodes]
    finally:
        for p in nodes:
            p.kill() if p.poll() is None else None
    text = "".join(log.read_text() for log in logs)
    assert codes == [0, 0], text[-4000:]
    assert "exitcode: -9" in text and "resuming from state.pt at step" in text
    finals = [[json.loads(line) for line in path.read_text().splitlines() if '"final"' in line][-1]
              for path in sorted((out / "audit").glob("rank-*.jsonl"))]
    assert len(finals) == 2 and finals[0]["params_sha1"] == finals[1]["params_sha1"]
    assert finals[0]["step"] == finals[1]["step"] == 6


def test_launch_dry_runs_print_what_would_run(tmp_path):
    args = ["launch", "train", "--nodes", "4", "--gpus-per-node", "8", "--rdzv", "head:29400", "--run-id", "r1"]
    result = run_iipa(*args, "--dry-run", "--", "--shards", "/s", "--pairs", "/p")
    assert result.returncode == 0, result.stderr
    assert all(f in result.stdout for f in ("--nnodes=4", "--nproc-per-node=8", "--rdzv-backend=c10d",
                                            "--rdzv-endpoint=head:29400", "--rdzv-id=r1", "--max-restarts=3",
                                            "-m train --shards /s --pairs /p"))
    # The printed line runs what the launcher runs, environment included.
    assert result.stdout.startswith("env OMP_NUM_THREADS=8 TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 ")
    script = tmp_path / "job.sbatch"
    result = run_iipa(*args, "--scheduler", "slurm", "--slurm-script", str(script), "--dry-run", "--", "--out", "/r")
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert "#SBATCH --nodes=4" in text and "#SBATCH --gpus-per-node=8" in text
    assert "srun" in text and "--rdzv-endpoint=$HEAD:29400" in text and "scontrol show hostnames" in text
    assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in text  # restarts get a fresh store
    bad = run_iipa("launch", "train", "--nodes", "2", "--gpus-per-node", "1", "--rdzv", "nohostport")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray head and a second Ray node on 127.0.0.1, one CPU each, stopped at the end."""
    temp = tmp_path_factory.mktemp("ray")
    port = free_port()
    ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--num-cpus=1", "--disable-usage-stats"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run([*ray, "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}",
                    "--node-ip-address=127.0.0.1"], check=True, capture_output=True, env=env, timeout=120)
    subprocess.run([*ray, f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1"],
                   check=True, capture_output=True, env=env, timeout=120)
    yield f"127.0.0.1:{port}", env
    for proc in Path("/proc").iterdir():  # stop only this cluster's processes, not other Ray instances
        try:
            if str(temp).encode() in (proc / "cmdline").read_bytes() or f"127.0.0.1:{port}".encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def test_shards_build_on_a_two_node_ray_cluster_equals_a_local_build(train_dataset, ray_cluster, tmp_path):
    address, env = ray_cluster
    common = ["shards", "build", "--images", str(train_dataset / "images.parquet"), "--only-paired",
              str(train_dataset / "pairs"), "--size", "40", "--shard-size", "37", "--allow-hosts", "",
              "--allow-local", str(train_dataset / "raw")]
    result = run_iipa(*common, "--out", str(tmp_path / "remote"), "--ray-address", address, "--workers", "4",
                      env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(summary["built_on_nodes"]) == 2, summary
    remote = read_table(tmp_path / "remote", "images")
    local = read_table(train_dataset / "shards", "images")
    cols = ["key", "status", "shard", "offset", "size", "sha1"]
    sort = [("key", "ascending")]
    assert remote.select(cols).sort_by(sort).equals(local.select(cols).sort_by(sort))
    assert pc.all(pc.equal(remote.column("status"), "ok")).as_py()



def test_training_as_a_ray_job_on_two_nodes(train_dataset, ray_cluster, tmp_path):
    """`--scheduler ray`: one launcher actor per Ray node, each running its node's torchrun."""
    address, env = ray_cluster
    out = tmp_path / "run"
    result = run_iipa("launch", "train", "--scheduler", "ray", "--ray-address", address, "--nodes", "2",
                      "--gpus-per-node", "1", "--rdzv", f"127.0.0.1:{free_port()}", "--max-restarts", "0",
                      "--", *train_args(train_dataset, out), env=env, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    check_two_rank_run(train_dataset, out)


def test_ray_cluster_config_is_a_local_provider_with_head_and_workers():
    import yaml

    config = yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and len(config["provider"]["worker_ips"]) >= 1
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("--address" in c for c in config["worker_start_ray_commands"])
