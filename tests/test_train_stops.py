"""The trainer's mistakes and stops (issue 14): a bad config or input is one line before any
work, under torchrun too; a resumed run refuses settings that would change its data order or
model; a stop signal reaches the ranks; and one run folder has one trainer at a time."""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from shards.schema import write_table
from tests.conftest import REPO, rank_pid, run_iipa

ARGS = ["--arch", "resnet18", "--resize", "40", "--crop", "32", "--batch-pairs", "16", "--threads", "1",
        "--backend", "torch", "--log-every", "1"]


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


def train(dataset: Path, out: Path, *extra: str, shards: Path | None = None, pairs: Path | None = None,
          timeout: float = 300):
    return run_iipa("train", "--shards", str(shards or dataset / "shards"), "--pairs", str(pairs or dataset / "pairs"),
                    "--out", str(out), *ARGS, *extra, timeout=timeout)


def train_here(capsys, dataset: Path, out: Path, *extra: str, shards: Path | None = None,
               pairs: Path | None = None) -> subprocess.CompletedProcess:
    """The same command run in this process (torch is imported already: seconds faster)."""
    from train.cli import main

    argv = ["--shards", str(shards or dataset / "shards"), "--pairs", str(pairs or dataset / "pairs"),
            "--out", str(out), *ARGS, *extra]
    capsys.readouterr()
    code = main(argv)
    return subprocess.CompletedProcess(argv, code, "", capsys.readouterr().err)


@pytest.fixture(scope="module")
def dataset(train_dataset):
    return train_dataset


@pytest.fixture()
def foreign_pairs(tmp_path) -> Path:
    """Pairs whose keys are all absent from the shards (built from another images table)."""
    for split in ("train", "val"):
        write_table(pa.table({"hi_key": ["nope_1", "nope_2"], "lo_key": ["nope_3", "nope_4"], "hi_pop": [9.0, 9.0],
                              "lo_pop": [1.0, 1.0], "prob": [0.99, 0.99], "user_id": ["u", "u"],
                              "rule": ["base", "base"], "days_apart": [1.0, 1.0]}),
                    tmp_path / "pairs" / f"{split}.parquet", "pairs")
    return tmp_path / "pairs"


# ---- point 5: one line, before any work, under torchrun too ---------------------------------

@pytest.mark.parametrize("launch", ["one-process", "torchrun", "launch"])
def test_pairs_absent_from_the_shards_are_one_line_under_torchrun_too(dataset, foreign_pairs, tmp_path, launch,
                                                                     capsys):
    if launch == "launch":  # `iipa launch train`: one node's torchrun with c10d rendezvous
        from tests.test_cluster import free_port

        result = run_iipa("launch", "train", "--nodes", "1", "--gpus-per-node", "1", "--rdzv",
                          f"127.0.0.1:{free_port()}", "--max-restarts", "0", "--", "--shards", str(dataset / "shards"),
                          "--pairs", str(foreign_pairs), "--out", str(tmp_path / "run"), *ARGS, timeout=300)
    elif launch == "torchrun":
        result = train(dataset, tmp_path / "run", "--nproc-per-node", "1", pairs=foreign_pairs)
    else:
        result = train_here(capsys, dataset, tmp_path / "run", pairs=foreign_pairs)
    line = one_line(result)
    assert "none of its 2 pairs has both images" in line, line
    assert "ChildFailedError" not in result.stderr and "torch.distributed" not in result.stderr


def test_a_truncated_tar_is_one_line_before_training(dataset, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(dataset / "shards", shards)
    tar = sorted(shards.glob("*.tar"))[0]
    with open(tar, "r+b") as f:
        f.truncate(tar.stat().st_size // 2)
    line = one_line(train_here(capsys, dataset, tmp_path / "run", shards=shards))
    assert f"{tar}: truncated" in line, line
    assert not (tmp_path / "run" / "model.pth").exists()


@pytest.mark.parametrize("text, message", [
    (b"run: {epochs: [", "not valid YAML at line 1"),
    (b"run:\n  epochs: 2\n  seed: \xff\xfe\n", "not UTF-8 text"),
    (b"- run\n- data\n", "found a list"),
    (b"run: {epochs: ten}\n", "[run] epochs: expected int, got 'ten'"),
    (b"optim: {lr_head: -1}\n", "--lr-head must be ≥ 0"),
    (b"data: 3\n", "[data] must be a mapping of options, got 3"),
], ids=["bad-yaml", "not-utf8", "list", "wrong-type", "impossible", "section-not-a-mapping"])
def test_a_bad_config_file_is_one_line(tmp_path, text, message):
    (tmp_path / "config.yaml").write_bytes(text)
    result = run_iipa("train", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run"))
    assert message in one_line(result)
    assert not (tmp_path / "run").exists()


# ---- point 9: one trainer per run folder; a stop reaches the ranks --------------------------

def test_a_second_trainer_on_a_locked_run_folder_is_refused(dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "w") as held:  # as a running trainer holds it
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        for launch in ([], ["--nproc-per-node", "1"]):
            line = one_line(train(dataset, run, *launch))
            assert "another trainer is running in this run folder (pid 4242)" in line, line
    assert not (run / "model.pth").exists()


def start_long_run(dataset: Path, out: Path) -> subprocess.Popen:
    """`iipa train --nproc-per-node 1` in a process group of its own, as a shell would start it."""
    cmd = [sys.executable, "-m", "cluster", "train", "--shards", str(dataset / "shards"), "--pairs",
           str(dataset / "pairs"), "--out", str(out), *ARGS, "--epochs", "500", "--val-every", "100000",
           "--ckpt-every", "100000", "--nproc-per-node", "1"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(f"{out}.log", "w"),
                            start_new_session=True)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()) is not None and value is not False:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_killing_the_launchers_group_stops_the_rank_and_frees_the_folder(dataset, tmp_path, sig):
    out = tmp_path / "run"
    launcher = start_long_run(dataset, out)
    try:
        worker = wait_for(lambda: rank_pid(0, out), 120, "the rank to start")
        wait_for(lambda: (out / "metrics.jsonl").exists(), 120, "the first step")
        if sig == signal.SIGTERM:  # while the first one runs (once is enough)
            assert "another trainer is running" in one_line(train(dataset, out, "--epochs", "1", timeout=120))
        os.killpg(launcher.pid, sig)
        wait_for(lambda: not alive(worker), 30, f"rank 0 (pid {worker}) to stop after {sig.name}")
        launcher.wait(timeout=30)
        if sig == signal.SIGTERM:
            assert launcher.returncode == 128 + signal.SIGTERM, Path(f"{out}.log").read_text()[-3000:]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    with open(out / ".lock") as lock:  # the folder is free again
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


# ---- point 6: a resumed run keeps its data order and its model -------------------------------

@pytest.fixture(scope="module")
def stopped_run(dataset, tmp_path_factory) -> Path:
    """A run folder with a state.pt after 2 steps of a longer run."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    result = train(dataset, out, "--max-steps", "2", "--ckpt-every", "1", "--val-every", "1000")
    assert result.returncode == 0 and (out / "state.pt").exists(), result.stderr[-3000:]
    return out


@pytest.mark.parametrize("change, flag", [
    (["--batch-pairs", "8"], "--batch-pairs 16"),
    (["--seed", "7"], "--seed 0"),
    (["--arch", "resnet34"], "--arch resnet18"),
], ids=["batch-pairs", "seed", "arch"])
def test_resuming_with_a_setting_that_changes_the_data_order_or_model_is_refused(dataset, stopped_run, change, flag,
                                                                                 capsys):
    before = (stopped_run / "state.pt").read_bytes()
    line = one_line(train_here(capsys, dataset, stopped_run, *change, "--max-steps", "4"))  # a later flag wins
    assert f"state.pt was written with {flag}" in line and f"pass {flag} to resume" in line, line
    assert (stopped_run / "state.pt").read_bytes() == before


def test_resuming_on_rebuilt_pairs_is_refused(dataset, stopped_run, tmp_path, capsys):
    import pyarrow.parquet as pq

    pairs = tmp_path / "pairs"
    shutil.copytree(dataset / "pairs", pairs)
    table = pq.read_table(pairs / "train.parquet")
    pq.write_table(table.slice(0, table.num_rows - 3).replace_schema_metadata(table.schema.metadata),
                   pairs / "train.parquet")
    line = one_line(train_here(capsys, dataset, stopped_run, "--max-steps", "4", pairs=pairs))
    assert f"has {table.num_rows - 3} usable pairs now" in line, line


def test_resuming_on_the_same_number_of_pairs_in_another_order_is_refused(dataset, stopped_run, tmp_path, capsys):
    import pyarrow.parquet as pq

    pairs = tmp_path / "pairs"
    shutil.copytree(dataset / "pairs", pairs)
    table = pq.read_table(pairs / "train.parquet")
    reversed_rows = table.take(pa.array(range(table.num_rows - 1, -1, -1)))
    pq.write_table(reversed_rows.replace_schema_metadata(table.schema.metadata), pairs / "train.parquet")
    line = one_line(train_here(capsys, dataset, stopped_run, "--max-steps", "4", pairs=pairs))
    assert "or its shards changed since the run started" in line, line
