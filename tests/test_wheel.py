"""The package as users install it: a wheel built from this tree, installed into a fresh venv
outside it, runs `iipa` (bench included) and a small real job from the installed files alone."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The installed package alone: no PYTHONPATH pointing back at a source tree (pip would even take
# the tree's egg-info for an installed iipa).
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the wheel (no dependencies: those of this venv are lent to it
    through a .pth file, so nothing is downloaded and the source tree is not on the path)."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and egg-info into the tree it builds.
    source = root / "source"
    anywhere = shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis")
    at_top = {"build", "demo", "out"}  # outputs at the root only: shards/build is a package

    def ignore(folder: str, names: list[str]) -> set[str]:
        return anywhere(folder, names) | (at_top & set(names) if Path(folder) == REPO else set())

    shutil.copytree(REPO, source, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist"), str(source)], check=True, cwd=root, env=CLEAN_ENV)
    env_dir = root / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, env=CLEAN_ENV).stdout.strip()
    # This venv's dependencies, but not its editable install of iipa (a plain path: no .pth runs).
    Path(site, "lent-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((root / "dist").glob("iipa-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, cwd=root, env=CLEAN_ENV)
    return env_dir / "bin"


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "iipa"), *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env=CLEAN_ENV)


def test_the_installed_wheel_runs_from_its_own_files(installed, tmp_path):
    where = subprocess.run([str(installed / "python"), "-c", "import cluster, shards; print(cluster.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True, env=CLEAN_ENV).stdout
    assert str(REPO) not in where and "site-packages" in where
    for args in (["--help"], ["bench", "--help"], ["shards", "--help"], ["train", "--help"]):
        done = run(installed, *args, cwd=tmp_path)
        assert done.returncode == 0 and "usage:" in done.stdout, done.stderr
    assert (Path(where).parent / "gpu_check.sh").is_file()


def test_the_installed_wheel_ingests_and_pairs_a_synthetic_set(installed, tmp_path):
    assert run(installed, "ingest", "synthetic", "--out", "raw", "--users", "4", "--tweets-per-user", "10",
               cwd=tmp_path).returncode == 0
    done = run(installed, "ingest", "archive", "raw/archive.jsonl", "--out", "images.parquet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = run(installed, "pairs", "build", "--images", "images.parquet", "--out", "pairs", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "pairs" / "stats.json").read_text())["pairs"] > 0
