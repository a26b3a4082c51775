"""The trainer under real torchrun with gloo: ranks in sync, every pair once, exact resume."""
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torchvision

from shards.console import UserError
from shards.locate import ShardIndex
from tests.conftest import REPO, rank_pid
from train.checkpoint import initialise
from train.config import TrainConfig
from train.data import load_pairs
from train.decode import BACKENDS
from train.model import build_model

TRAIN_ARGS = ["--arch", "resnet18", "--resize", "40", "--crop", "32", "--batch-pairs", "16", "--epochs", "2",
              "--lr-backbone", "1e-3", "--lr-head", "1e-3", "--val-every", "1000", "--log-every", "1",
              "--ckpt-every", "2", "--threads", "1", "--backend", "torch", "--audit"]


@pytest.fixture(scope="module")
def dataset(train_dataset):
    return train_dataset


def torchrun(dataset: Path, out: Path, *extra: str, backend: str = "torch") -> subprocess.Popen:
    """Start a 2-rank job writing its output to OUT.log."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *extra,
           "-m", "train", "--shards", str(dataset / "shards"), "--pairs", str(dataset / "pairs"),
           "--out", str(out), *TRAIN_ARGS, "--backend", backend]
    return subprocess.Popen(cmd, cwd=REPO, stdout=open(f"{out}.log", "w"), stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, out: Path, timeout: float = 300) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = Path(f"{out}.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    return log


def audit(run: Path) -> dict:
    """Per rank: the latest pair ids per (epoch, step), and the final record."""
    ranks = {}
    for path in sorted((run / "audit").glob("rank-*.jsonl")):
        steps, final = {}, None
        for record in map(json.loads, path.read_text().splitlines()):
            if record.get("final"):
                final = record
            else:
                steps[(record["epoch"], record["step"])] = record["pairs"]
        ranks[path.stem] = {"steps": steps, "final": final}
    return ranks


@pytest.fixture(scope="module")
def clean_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean-run")
    finish(torchrun(dataset, out), out)
    return out


def test_ranks_stay_in_sync_and_see_every_pair_once_per_epoch(dataset, clean_run):
    ranks = audit(clean_run)
    assert set(ranks) == {"rank-0", "rank-1"}
    finals = [r["final"] for r in ranks.values()]
    assert finals[0]["params_sha1"] == finals[1]["params_sha1"] and finals[0]["step"] == finals[1]["step"]
    n_pairs = len(load_pairs(dataset / "pairs" / "train.parquet", ShardIndex(dataset / "shards"), cache=False))
    shards = {s.name for s in (dataset / "shards").glob("*.tar")}
    assert n_pairs % 2 == 1 or len(shards) >= 3  # the layout really is uneven
    for epoch in (0, 1):
        seen = collections.Counter()
        for r in ranks.values():
            seen.update(i for (e, _), ids in r["steps"].items() if e == epoch for i in ids)
        assert sorted(seen) == list(range(n_pairs)) and set(seen.values()) == {1}
    steps = {name: len(r["steps"]) for name, r in ranks.items()}
    assert len(set(steps.values())) == 1


def kill_and_resume(dataset: Path, out: Path, backend: str) -> tuple[dict, int]:
    """Run a 2-rank job, SIGKILL rank 1 after the first checkpoint; torchrun restarts the workers
    in place (--max-restarts 1) and they resume from state.pt. Returns its audit and resume step."""
    proc = torchrun(dataset, out, "--max-restarts=1", backend=backend)
    deadline = time.time() + 300
    while not (out / "state.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    pid = rank_pid(1, out)
    assert pid is not None, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)
    log = finish(proc, out)
    assert "exitcode: -9" in log
    resumed_at = [int(step) for step in re.findall(r"resuming from state.pt at step (\d+)", log)]
    assert len(resumed_at) == 1, log[-4000:]
    return audit(out), resumed_at[0]


def assert_same_run(resumed: dict, clean: dict) -> None:
    for name in ("rank-0", "rank-1"):
        assert resumed[name]["steps"] == clean[name]["steps"]
        assert resumed[name]["final"]["step"] == clean[name]["final"]["step"]
    # Same data, same order, same augmentation, optimizer state restored: the very same weights.
    assert resumed["rank-0"]["final"]["params_sha1"] == clean["rank-0"]["final"]["params_sha1"]


def test_killed_rank_restarts_in_place_and_ends_at_the_same_step_and_data_position(dataset, clean_run, tmp_path):
    """A rank is SIGKILLed mid-run: the job ends as the clean run did."""
    resumed, at = kill_and_resume(dataset, tmp_path / "run", "torch")
    clean = audit(clean_run)
    assert 0 < at < clean["rank-0"]["final"]["step"]
    assert_same_run(resumed, clean)


@pytest.mark.skipif("dali" not in BACKENDS, reason="DALI is not installed")
def test_dali_cpu_run_resumes_exactly(dataset, tmp_path):
    """DALI's crops and flips follow each rank's step seed, so a resumed DALI run ends with the
    same weights as an uninterrupted one (with DALI's own seeded operators it could not)."""
    clean_out = tmp_path / "clean"
    finish(torchrun(dataset, clean_out, backend="dali"), clean_out)
    resumed, at = kill_and_resume(dataset, tmp_path / "run", "dali")
    clean = audit(clean_out)
    assert 0 < at < clean["rank-0"]["final"]["step"]
    assert_same_run(resumed, clean)


def test_a_restart_does_not_see_the_store_keys_of_the_attempt_before(monkeypatch):
    """torchrun keeps one store across restarts; stale peer addresses in it broke the restart."""
    from train.loop import attempt_store

    agent = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10))
    for name, value in {"TORCHELASTIC_USE_AGENT_STORE": "True", "GROUP_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(agent.port)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    attempt_store().set("peer-address", "of a killed worker")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not attempt_store().check(["peer-address"])
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")  # agents count restarts apart: torch's own keys
    assert attempt_store() is None


def test_plain_torchvision_checkpoint_loads_through_iipa_init(tmp_path):
    """IIPA's released layout: torchvision ResNet-50 keys, fc = Linear(2048, 1)."""
    reference = torchvision.models.resnet50(weights=None)
    reference.fc = torch.nn.Linear(2048, 1)
    torch.save(reference.state_dict(), tmp_path / "model-resnet50.pth")
    model = build_model("resnet50")
    assert initialise(model, f"iipa:{tmp_path / 'model-resnet50.pth'}").startswith("weights from")
    reference.eval(), model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    ddp_style = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save(ddp_style, tmp_path / "ddp.pth")
    initialise(build_model("resnet50"), f"iipa:{tmp_path / 'ddp.pth'}")  # the prefix is accepted
    with pytest.raises(UserError, match="does not match"):
        initialise(build_model("resnet18"), f"iipa:{tmp_path / 'model-resnet50.pth'}")


def test_run_folder_init_and_checkpoint_layout(clean_run):
    state = torch.load(clean_run / "model.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    model = build_model("resnet18")
    initialise(model, str(clean_run))
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert json.loads((clean_run / "model.json").read_text())["preprocess"]["crop"] == 32


def test_unreadable_image_is_skipped_and_a_missing_shard_is_a_clear_stop(dataset, tmp_path):
    from train.loop import train

    shards = tmp_path / "shards"
    shards.mkdir()
    for f in (dataset / "shards").iterdir():
        os.symlink(f, shards / f.name)
    pairs = load_pairs(dataset / "pairs" / "train.parquet", dataset / "shards")
    victim = pairs.index.locate_row(pairs.hi[0])
    tar = shards / victim.shard
    data = bytearray(tar.read_bytes())
    data[victim.offset:victim.offset + victim.size] = b"\0" * victim.size  # a damaged image
    tar.unlink()
    tar.write_bytes(bytes(data))
    config = TrainConfig.from_dict({
        "data": {"shards": str(shards), "pairs": str(dataset / "pairs"), "resize": 40, "crop": 32, "threads": 1},
        "model": {"arch": "resnet18"}, "run": {"out": str(tmp_path / "run"), "batch_pairs": 32, "log_every": 1}})
    result = train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result["step"] >= 1 and max(r.get("data/bad_images", 0) for r in records) == 1
    os.remove(shards / victim.shard)
    with pytest.raises(UserError, match="shard"):
        train(config)


def test_loss_of_swapped_pairs_is_symmetric():
    from train.model import pair_loss

    s_hi, s_lo = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.0])
    straight = pair_loss(s_hi, s_lo, torch.tensor([0, 0]))
    swapped = pair_loss(s_hi, s_lo, torch.tensor([1, 1]))
    assert torch.allclose(straight, swapped)
    expected = -np.log(1 / (1 + np.exp(-np.array([1.5, -1.0])))).mean()
    assert abs(straight.item() - expected) < 1e-6


def test_non_finite_loss_is_skipped_then_stops(dataset, tmp_path):
    from train.data import PairBatch
    from train.loop import Trainer

    config = TrainConfig.from_dict({
        "data": {"shards": str(dataset / "shards"), "pairs": str(dataset / "pairs"), "resize": 40, "crop": 32},
        "model": {"arch": "resnet18"}, "run": {"out": str(tmp_path / "run"), "max_bad_steps": 1}})
    trainer = Trainer(config)
    before = [p.detach().clone() for p in trainer.raw_model.parameters()]
    images = torch.full((2, 3, 32, 32), float("nan"))
    batch = PairBatch(images, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), np.array([0]))
    loss, _, _ = trainer.train_step(batch)
    assert loss == 0.0 and trainer.bad_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.raw_model.parameters()))
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.train_step(batch)
