"""The command line as a user meets it: help everywhere, one clear line and exit 2 for mistakes."""
import pytest

from tests.conftest import run_iipa

COMMANDS = [["ingest", "archive"], ["ingest", "synthetic"], ["ingest", "search"], ["pairs", "build"],
            ["shards", "build"], ["shards", "verify"], ["shards", "rebuild"], ["train"], ["eval"], ["score"],
            ["demo"], ["launch", "train"], ["bench"]]


def test_top_level_help_lists_every_command():
    result = run_iipa("--help")
    assert result.returncode == 0
    for command in ("demo", "ingest", "pairs", "shards", "train", "eval", "score", "launch", "bench"):
        assert f"  {command}" in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_each_command_explains_itself(command):
    result = run_iipa(*command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout
    assert len(result.stdout.splitlines()) >= 4  # a description and the options, not just a usage line


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "unknown command"),
    (["pairs", "build", "--images", "x", "--out", "y", "--bogus"], "unrecognized arguments: --bogus"),
    (["ingest", "archive", "/nonexistent.jsonl", "--out", "/tmp/x.parquet"], "/nonexistent.jsonl: no such file"),
    (["pairs", "build", "--images", "/nonexistent", "--out", "/tmp/p"], "/nonexistent: no such file or folder"),
    (["pairs", "build", "--images", "/nonexistent", "--out", "/tmp/p", "--threshold", "2"], "--threshold"),
    (["train", "--shards", "/nonexistent", "--pairs", "/tmp"], "not a shards folder"),
    (["eval", "--model", "/x.pth", "--shards", "/nonexistent", "--pairs", "/p", "--out", "/o"], "not a shards folder"),
])
def test_mistakes_are_one_line_with_exit_status_2(args, message):
    result = run_iipa(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_train_help_imports_neither_torch_nor_ray():
    """`iipa train --help` answers at once: the CLI module imports nothing heavy until a run."""
    import subprocess
    import sys

    code = ("import sys; from cluster.cli import main\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'torchvision', 'ray') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "--batch-pairs" in out.stdout and "HEAVY []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
