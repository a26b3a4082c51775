"""Shared fixtures: real recorded API data, real photographs, and a local HTTP server."""
from __future__ import annotations

import http.server
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Real recorded X API responses live outside the repository (CI has them beside the checkout).
REALDATA = Path(os.environ.get("IIPA_REALDATA", REPO.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"no recorded API data at {REALDATA} (set IIPA_REALDATA)")
    return REALDATA


def photo_arrays() -> dict[str, np.ndarray]:
    """Real photographs shipped by scikit-image, as RGB arrays."""
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(), "rocket": data.rocket()}


def jpeg_bytes(array: np.ndarray, quality: int = 92, **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=quality, **save)
    return out.getvalue()


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    return {name: jpeg_bytes(a) for name, a in photo_arrays().items()}


class Routes(http.server.BaseHTTPRequestHandler):
    """Serves `routes[path] = (status, headers, body)`; a callable body is called per request."""

    routes: dict = {}
    hits: dict = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.path.split("?")[0]
        self.hits[path] = self.hits.get(path, 0) + 1
        route = self.routes.get(path)
        if route is None:
            self.send_error(404)
            return
        if callable(route):
            route = route(self, self.hits[path])
            if route is None:
                return
        status, headers, body = route
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(headers.get("Content-Length", len(body))))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def http_server():
    """A threaded HTTP server on 127.0.0.1 with per-test routes; yields (base_url, routes, hits)."""
    routes, hits = {}, {}
    handler = type("Handler", (Routes,), {"routes": routes, "hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes, hits
    server.shutdown()
    server.server_close()


def run_iipa(*args: str, timeout: float = 600, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run the `iipa` command as a user would, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "cluster", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env={**os.environ, **(env or {})})


def rank_pid(rank: int, out: Path) -> int | None:
    """The PID of the training process with RANK=rank writing to `out`."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = str(out).encode() in cmdline and b"-m" in cmdline and f"RANK={rank}".encode() in environ
        if ours and b"torch.distributed.run" not in cmdline:
            return int(proc.name)
    return None


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for a whole session (starting Ray costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def train_dataset(tmp_path_factory, ray_local) -> Path:
    """A small synthetic data set (images, pairs, shards) with deliberately uneven shards (37 rows)."""
    from ingest.archive import ArchiveConfig, ingest_archive
    from ingest.synthetic import SyntheticConfig, generate
    from shards import BuildConfig, build_shards
    from shards.build.fetch import FetchConfig
    from shards.pairs import PairsConfig, build_pairs
    from shards.build.resize import ResizeConfig

    root = tmp_path_factory.mktemp("train-data")
    generate(SyntheticConfig(root / "raw", users=8, tweets_per_user=14, image_size=48, seed=5))
    ingest_archive(ArchiveConfig([root / "raw" / "archive.jsonl"], root / "images.parquet"))
    build_pairs(PairsConfig(images=root / "images.parquet", out=root / "pairs", max_pairs_per_user=20,
                            split_shares=(0.75, 0.125, 0.125), seed=1))
    build_shards(BuildConfig(images=root / "images.parquet", out=root / "shards", only_paired=root / "pairs",
                             shard_size=37, fetch=FetchConfig(allow_hosts=(), allow_local=(root / "raw",)),
                             resize=ResizeConfig(size=40)))
    return root
