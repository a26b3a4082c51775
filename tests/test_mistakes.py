"""Every user mistake is one line on stderr and exit status 2, never a traceback (issue 14).

One table-driven sweep: every command × {missing input, empty file, random bytes, wrong-schema
Parquet, `--out` under a regular file, impossible flag values}. The commands run in this
process (the `iipa` entry point called as a function) so the sweep takes seconds; a mistake
must be caught before any real work starts, so none of them reaches Ray, torchrun or the X API.
"""
from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.cli import main as iipa
from shards.schema import write_table
from tests.conftest import jpeg_bytes, photo_arrays
from tests.builders import make_run, make_shards

CASES = ("missing", "empty", "random", "wrong_parquet")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """Valid inputs of every kind, so each case spoils exactly one of them: a shards folder (real
    writer, real photographs), a pairs folder naming its keys, a run's model, a trends file."""
    root = tmp_path_factory.mktemp("good")
    images = {f"img_{n}": jpeg_bytes(a[:128, :128]) for n, a in enumerate(photo_arrays().values())}
    shards = make_shards(root, images, {k: "u1" for k in images})
    keys = list(images)
    pairs = {"hi_key": keys[:2], "lo_key": keys[2:4], "hi_pop": [9.0, 8.0], "lo_pop": [1.0, 1.0],
             "prob": [0.99, 0.99], "user_id": ["u1", "u1"], "rule": ["base", "base"], "days_apart": [1.0, 1.0]}
    for split in ("train", "val", "test"):
        write_table(pa.table(pairs), root / "pairs" / f"{split}.parquet", "pairs")
    model, _ = make_run(root)
    images_table = pq.read_table(shards / "shard-000000.parquet")
    pq.write_table(images_table, root / "images.parquet")
    (root / "trends.json").write_text('{"trends": [{"trend_name": "#cats", "tweet_count": 5}]}')
    (root / "a_file").write_text("I am a file\n")
    return {"root": root, "shards": shards, "pairs": root / "pairs", "model": model,
            "images": root / "images.parquet", "trends": root / "trends.json", "file": root / "a_file"}


def spoil(kind: str, where: Path) -> Path:
    """Put the mistake `kind` at `where` (a file path); return it."""
    where.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        where.write_bytes(b"")
    elif kind == "random":
        where.write_bytes(os.urandom(4096))
    elif kind == "wrong_parquet":
        pq.write_table(pa.table({"colour": ["red"], "size": [3]}), where)
    return where


def shards_with(kind: str, tmp: Path, good, spoilt: str = "shard-000000.parquet") -> Path:
    """A shards folder whose file `spoilt` (its Parquet slice or its tar) is the mistake, or no folder."""
    folder = tmp / "bad_shards"
    if kind == "missing":
        return folder
    folder.mkdir()
    for name in ("manifest.json", "shard-000000.tar", "shard-000000.parquet"):
        (folder / name).write_bytes((good["shards"] / name).read_bytes())
    spoil(kind, folder / spoilt)
    return folder


def pairs_with(kind: str, tmp: Path, good) -> Path:
    folder = tmp / "bad_pairs"
    if kind == "missing":
        return folder
    for split in ("train", "val", "test"):
        spoil(kind, folder / f"{split}.parquet")
    return folder


def model_with(kind: str, tmp: Path, good) -> Path:
    run = tmp / "bad_run"
    run.mkdir()
    (run / "model.json").write_text((good["model"].parent / "model.json").read_text())
    return run / "model.pth" if kind == "missing" else spoil(kind, run / "model.pth")


def file_with(kind: str, tmp: Path, name: str) -> Path:
    return tmp / name if kind == "missing" else spoil(kind, tmp / name)


# command → (argv from (good inputs, tmp) with its valid inputs, the slots a case may spoil,
#            impossible flag values). A slot is (its flag, or None for a positional, how to spoil it).
def commands(good, tmp):
    out = str(tmp / "out")
    shards, pairs, model = str(good["shards"]), str(good["pairs"]), str(good["model"])
    return {
        "ingest archive": (lambda a: ["ingest", "archive", a.get("paths", str(good["images"])), "--out", out],
                           {"paths": lambda k, d: file_with(k, d, "archive.jsonl")},
                           [["--collected-at", "yesterday"], ["--columns", "bogus"], ["--set", "x"], ["--media", "audio"],
                            ["--format", "docx"]]),
        "ingest synthetic": (lambda a: ["ingest", "synthetic", "--out", out, "--users", "1", "--tweets-per-user", "1"],
                             {}, [["--users", "0"], ["--tweets-per-user", "-2"], ["--image-size", "8"], ["--seed", "-1"]]),
        "ingest search": (lambda a: ["ingest", "search", "--trending", a.get("trending", str(good["trends"])),
                                     "--out", out], {"trending": lambda k, d: file_with(k, d, "trends.json")},
                          [["--page-size", "5"], ["--max-tweets", "0"], ["--top", "0"], ["--since", "yesterday"]]),
        "ingest trends": (lambda a: ["ingest", "trends", "--woeid", "1", "--out", out + ".json"], {},
                          [["--woeid", "0"], ["--top", "-1"]]),
        "pairs build": (lambda a: ["pairs", "build", "--images", a.get("images", str(good["images"])), "--out", out],
                        {"images": lambda k, d: file_with(k, d, "images.parquet")},
                        [["--threshold", "1.5"], ["--sigma", "0"], ["--seed", "-1"], ["--max-days", "-1"],
                         ["--weights", "-1,0"], ["--split-shares", "0.5,0.5,0.5"], ["--min-likes", "-5"],
                         ["--extra-share", "2"], ["--max-pairs-per-user", "-1"], ["--min-age-days", "-1"],
                         ["--max-caption-diff", "-1"], ["--sigma", "nan"]]),
        "shards build": (lambda a: ["shards", "build", "--images", a.get("images", str(good["images"])), "--out", out,
                                    *(["--only-paired", a["pairs"]] if "pairs" in a else [])],
                         {"images": lambda k, d: file_with(k, d, "images.parquet"),
                          "pairs": lambda k, d: pairs_with(k, d, good)},
                         [["--quality", "500"], ["--size", "0"], ["--shard-size", "0"], ["--workers", "0"],
                          ["--threads", "0"], ["--timeout", "0"], ["--fetch-retries", "-1"], ["--max-bytes", "0"]]),
        "shards verify": (lambda a: ["shards", "verify", a.get("shards", shards)],
                          {"shards": lambda k, d: shards_with(k, d, good)}, []),
        "shards stats": (lambda a: ["shards", "stats", a.get("shards", shards)],
                         {"shards": lambda k, d: shards_with(k, d, good)}, []),
        "shards index": (lambda a: ["shards", "index", a.get("shards", shards)],
                         {"shards": lambda k, d: shards_with(k, d, good, spoilt="shard-000000.tar")}, []),
        "shards rebuild": (lambda a: ["shards", "rebuild", a.get("shards", shards), "--out", out],
                           {"shards": lambda k, d: shards_with(k, d, good)},
                           [["--quality", "500"], ["--size", "0"], ["--shard-size", "0"], ["--workers", "0"]]),
        "train": (lambda a: ["train", "--shards", a.get("shards", shards), "--pairs", a.get("pairs", pairs),
                             "--out", out, "--arch", "resnet18", "--init", a.get("init", "random"),
                             "--backend", "torch", "--resize", "64", "--crop", "56", "--max-steps", "1"],
                  {"shards": lambda k, d: shards_with(k, d, good), "pairs": lambda k, d: pairs_with(k, d, good),
                   "init": lambda k, d: "iipa:" + str(file_with(k, d, "init.pth"))},
                  [["--threads", "0"], ["--max-steps", "-1"], ["--lr-head", "-1"], ["--lr-backbone", "nan"],
                   ["--weight-decay", "-1"], ["--lr-decay", "0"], ["--epochs", "0"], ["--batch-pairs", "0"],
                   ["--resize", "0"], ["--crop", "0"], ["--seed", "-1"], ["--nproc-per-node", "0"],
                   ["--max-restarts", "-3"], ["--backend", "nope"], ["--val-every", "0"], ["--ckpt-every", "0"],
                   ["--log-every", "0"], ["--lr-decay", "inf"]]),
        "eval": (lambda a: ["eval", "--model", a.get("model", model), "--shards", a.get("shards", shards),
                            "--pairs", a.get("pairs", pairs), "--out", out, "--no-faces", "--bootstrap", "10"],
                 {"model": lambda k, d: model_with(k, d, good), "shards": lambda k, d: shards_with(k, d, good),
                  "pairs": lambda k, d: file_with(k, d, "test.parquet")},
                 [["--batch-size", "0"], ["--bootstrap", "0"], ["--threads", "0"], ["--seed", "-1"],
                  ["--device", "tpu"]]),
        "score": (lambda a: ["score", "--model", a.get("model", model), "--shards", a.get("shards", shards),
                             "--out", out + ".csv"],
                  {"model": lambda k, d: model_with(k, d, good), "shards": lambda k, d: shards_with(k, d, good)},
                  [["--batch-size", "0"], ["--threads", "0"]]),
        "launch train": (lambda a: ["launch", "train", "--nodes", "2", "--gpus-per-node", "1", "--rdzv", "h:29500",
                                    "--scheduler", "slurm", "--slurm-script", out + ".sbatch", "--dry-run",
                                    "--", "--shards", shards, "--pairs", pairs, "--out", out], {},
                         [["--nodes", "0"], ["--gpus-per-node", "0"], ["--rdzv", "h:99999"], ["--rdzv", "h:0"],
                          ["--max-restarts", "-3"]]),
        "bench": (lambda a: ["bench", "pairs", "--quick", "--json", out + ".json"], {}, [["--workdir", good["file"]]]),
        "demo": (lambda a: ["demo", "--quick", "--out", out], {}, [["--nproc", "0"], ["--seed", "-1"]]),
    }


def command_names() -> list[str]:
    """The commands of the sweep (the table's keys, read without building its inputs)."""
    return list(commands({k: Path("/") for k in ("shards", "pairs", "model", "images", "trends", "file")}, Path("/")))


def run(argv: list[str], capsys, caplog) -> tuple[int, list[str]]:
    """Run `iipa argv` here; (exit status, lines on stderr or logged), a traceback as lines too."""
    caplog.clear()
    try:
        status = iipa([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    except BaseException:  # what a user would see as a traceback
        status, tb = "traceback", traceback.format_exc()
        return status, ["Traceback"] + tb.splitlines()
    err = capsys.readouterr().err
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    return status, err.strip().splitlines() + logged


class Sweep:
    """Runs the cases of one command, collecting every failure so one run shows them all."""

    def __init__(self, capsys, caplog):
        self.capsys, self.caplog, self.failures, self.tried = capsys, caplog, [], 0

    def check(self, argv, must_name: str, expect: int = 2) -> None:
        """`iipa argv` must exit 2 with one line (no traceback) that names `must_name`; or, for
        `expect` 1 (verify finding damage), exit 1 with one line per problem, no traceback."""
        self.tried += 1
        status, lines = run(argv, self.capsys, self.caplog)
        one = len(lines) == 1 or (expect == 1 and lines)
        if status != expect or not one or "Traceback" in lines[0] or must_name not in lines[0]:
            self.failures.append(f"{' '.join(map(str, argv[:2]))} … {must_name}: exit {status}: "
                                 + " | ".join(lines[-3:])[:600])


@pytest.mark.parametrize("command", command_names())
def test_every_mistake_is_one_line_and_exit_2(command, good, tmp_path, capsys, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("X_BEARER_TOKEN", "not-a-real-token")  # the X API is never reached: mistakes come first
    monkeypatch.chdir(tmp_path)
    argv_of, slots, impossible = commands(good, tmp_path)[command]
    sweep = Sweep(capsys, caplog)
    for slot, make in slots.items():
        for kind in CASES:
            case = tmp_path / f"{slot}-{kind}"
            case.mkdir()
            spoilt = str(make(kind, case))
            # verify's job is to find damage: a spoilt slice is reported (exit 1), not a usage error
            expect = 1 if command == "shards verify" and kind != "missing" else 2
            sweep.check(argv_of({slot: spoilt}), spoilt.split(":")[-1] if kind == "missing" else "", expect)
    base = argv_of({})
    own = base[:base.index("--")] if "--" in base else base  # launch's own flags, not the trainer's
    out_flags = [i for i, a in enumerate(own) if a in ("--out", "--json", "--slurm-script")]
    assert out_flags or command in ("shards verify", "shards stats", "shards index"), command
    for i in out_flags:  # every output path under an existing regular file
        argv = list(base)
        argv[i + 1] = str(good["file"] / "sub" / Path(argv[i + 1]).name)
        sweep.check(argv, str(good["file"]))
    for flag_value in impossible:  # before a `--` (launch passes what follows to the trainer)
        cut = base.index("--") if "--" in base else len(base)
        sweep.check([*base[:cut], *flag_value, *base[cut:]], flag_value[0])
    assert not sweep.failures, f"{len(sweep.failures)} of {sweep.tried} cases:\n" + "\n".join(sweep.failures)
    assert good["file"].read_text() == "I am a file\n"  # the file an --out was put under is untouched
    assert not (tmp_path / "out").exists(), "a refused command left output behind"


def test_launch_checks_the_trainers_flags_before_starting_anything(good, tmp_path, capsys, caplog):
    """`iipa launch train … -- TRAIN-ARGS`: the trainer's flags are checked on the launching node
    (its inputs are not: they may live on the cluster's file system only)."""
    caplog.set_level(logging.INFO)
    sweep = Sweep(capsys, caplog)
    base = ["launch", "train", "--nodes", "2", "--gpus-per-node", "1", "--rdzv", "h:29500", "--dry-run", "--",
            "--shards", "/on/the/cluster", "--pairs", "/on/the/cluster", "--out", str(tmp_path / "run")]
    for flag_value in (["--batch-pairs", "0"], ["--lr-head", "-1"], ["--bogus", "1"], ["--arch", "resnet9"]):
        sweep.check([*base, *flag_value], flag_value[0])
    assert not sweep.failures, "\n".join(sweep.failures)
    assert run(base, capsys, caplog)[0] == 0  # inputs absent here: still a valid dry run


def test_shards_index_of_a_truncated_tar_is_one_line_and_leaves_no_partial_set(good, tmp_path, capsys, caplog):
    folder = tmp_path / "shards"
    folder.mkdir()
    tar = (good["shards"] / "shard-000000.tar").read_bytes()
    for n in range(3):
        (folder / f"shard-00000{n}.tar").write_bytes(tar)
    with open(folder / "shard-000002.tar", "r+b") as f:  # the last one read: two indexes are done by then
        f.truncate(len(tar) // 2)
    sweep = Sweep(capsys, caplog)
    sweep.check(["shards", "index", str(folder)], f"{folder / 'shard-000002.tar'}: ")
    assert not sweep.failures, sweep.failures
    assert sorted(p.name for p in folder.iterdir()) == [f"shard-00000{n}.tar" for n in range(3)]
    (folder / "shard-000002.tar").write_bytes(tar)
    assert run(["shards", "index", str(folder)], capsys, caplog)[0] == 0
    assert len(list(folder.glob("*.idx"))) == 3
