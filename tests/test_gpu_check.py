"""The GPU check runs with only what the lent GPU machine has: ray, webdataset, tweepy, duckdb and
DALI made unimportable, the same entry point, tiny sizes on the CPU."""
import json
import subprocess
import sys

from tests.conftest import REPO

BLOCKED = ("ray", "webdataset", "tweepy", "duckdb", "nvidia")

# A meta-path finder that refuses the blocked top-level packages, as if they were not installed.
RUN_BLOCKED = f"""
import runpy, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")
        return None
sys.meta_path.insert(0, Blocked())
sys.argv = ["cluster.gpu_check", *sys.argv[1:]]
runpy.run_module("cluster.gpu_check", run_name="__main__")
mods = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
assert not mods, mods
"""


def test_gpu_check_runs_without_ray_webdataset_tweepy_duckdb_or_dali(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", RUN_BLOCKED, "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("gpu-check:")]
    assert len(summary) == 1 and "images/s per GPU" in summary[0]
    result = json.loads((out / "gpu-check.json").read_text())
    assert [r["batch_pairs"] for r in result["runs"]] == [2, 4] and not result["failed"]
    for run in result["runs"]:
        assert run["images_per_s"] > 0 and 0 <= run["data_wait_share"] < 1
    assert result["model_alone_images_per_s"] > 0 and result["backend"] == "torch"
    assert (out / "gpu-check.png").read_bytes()[:4] == b"\x89PNG"
