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


def test_help_and_argument_errors_import_neither_torch_nor_ray():
    """Every `--help` and every argument error answers at once: no CLI module imports torch,
    torchvision, ray or DALI until a command runs (checked after each, in one fresh process)."""
    import subprocess
    import sys

    commands = COMMANDS + [["ingest", "trends"], ["shards", "index"], ["shards", "stats"], ["pairs"], ["shards"]]
    code = ("import sys; from cluster.cli import main\n"
            f"for command in {commands!r}:\n"
            "    for extra in (['--help'], ['--no-such-flag']):\n"
            "        try:\n            main(command + extra)\n        except SystemExit:\n            pass\n"
            "        heavy = [m for m in ('torch', 'torchvision', 'ray', 'nvidia.dali') if m in sys.modules]\n"
            "        print('HEAVY', ' '.join(command + extra), heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    checked = [line for line in out.stdout.splitlines() if line.startswith("HEAVY")]
    assert len(checked) == 2 * len(commands), out.stdout[-2000:] + out.stderr[-2000:]
    assert all(line.endswith(" []") for line in checked), "\n".join(checked)
