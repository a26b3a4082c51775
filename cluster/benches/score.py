"""`iipa bench score`: images/s for scoring a folder of real photographs with `iipa score`
(batched, threaded decoding through the trainer's decoder), against a one-image-at-a-time loop
like IIPA's released test script (open, convert, Resize([224, 224]), ToTensor, forward), in the
same run on the same model and files. Each method runs in a fresh process (run_isolated), so
its peak memory is its own; model loading is timed apart from scoring.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

from cluster.bench import BenchConfig, run_isolated
from shards.atomic import atomic_path


def make_folder(folder: Path, count: int) -> list[Path]:
    """`count` JPEGs of scikit-image's real photographs at assorted sizes (built once, reused)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.retina()[..., :3]]
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:04d}.jpg"
        if not path.exists():
            img = Image.fromarray(photos[i % len(photos)])
            side = (640, 512, 800, 1024)[i // len(photos) % 4]  # Twitter-like sizes: the decoder's real work
            img = img.resize((side, round(side * img.height / img.width)))
            if i // len(photos) % 2:
                img = Image.fromarray(np.ascontiguousarray(np.asarray(img)[:, ::-1]))
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=90)
            with atomic_path(path) as tmp:
                tmp.write_bytes(out.getvalue())
        paths.append(path)
    return paths


def make_model(folder: Path, arch: str) -> str:
    """A random-weight ResNet with IIPA's layout (fc = Linear(features, 1)), saved once; returns
    the MODEL argument: iipa:PATH for a ResNet-50, else a run-style model.pth whose model.json
    records IIPA's preprocessing (the quick run's small model)."""
    from train.checkpoint import IIPA_PREPROCESS

    path = folder / f"{arch}.pth"
    if not path.exists():
        import torch

        from train.model import build_model

        torch.manual_seed(0)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(build_model(arch).state_dict(), tmp)
    if arch == "resnet50":
        return f"iipa:{path}"
    run = folder / f"run-{arch}"
    run.mkdir(exist_ok=True)
    if not (run / "model.pth").exists():
        (run / "model.pth").symlink_to(path.resolve())
    (run / "model.json").write_text(json.dumps({"arch": arch, "preprocess": IIPA_PREPROCESS}))
    return str(run / "model.pth")


def score_batched(folder: str, model: str, batch_size: int, threads: int) -> dict:
    """`iipa score`'s code path, with IIPA's preprocessing; returns images and scoring seconds."""
    from eval.score import Scorer, score_files

    scorer = Scorer(model, "auto", batch_size, threads, "auto")
    paths = sorted(Path(folder).glob("*.jpg"))
    start = time.perf_counter()
    rows = score_files(scorer, paths, threads)
    return {"images": sum(s == "ok" for s in rows["status"]), "scoring_s": time.perf_counter() - start}


def score_one_by_one(folder: str, model: str, arch: str) -> dict:
    """IIPA's test script, looped: one PIL decode, one resize, one forward pass per image."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from train.model import build_model

    weights = model.removeprefix("iipa:")
    model = build_model(arch)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    transform = transforms.Compose([transforms.Resize([224, 224]), transforms.ToTensor()])
    paths = sorted(Path(folder).glob("*.jpg"))
    start = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            image = Image.open(path).convert("RGB")
            float(model(transform(image).unsqueeze(0).to(device)))
    return {"images": len(paths), "scoring_s": time.perf_counter() - start}


def run(config: BenchConfig) -> dict:
    # The quick run checks the code on a small model and 4 images; it measures nothing.
    count, batch, arch = config.pick((4, 2, "resnet18"), (32, 16, "resnet50"), (96, 32, "resnet50"))
    work = Path(config.workdir)
    folder = work / f"photos-{count}"
    make_folder(folder, count)
    model = make_model(work / "models", arch)
    fast = run_isolated("cluster.benches.score:score_batched", folder=str(folder), model=model,
                        batch_size=batch, threads=2)
    slow = run_isolated("cluster.benches.score:score_one_by_one", folder=str(folder), model=model, arch=arch)
    value, baseline = fast["images"] / fast["scoring_s"], slow["images"] / slow["scoring_s"]
    return {"stage": "score", "unit": "images/s", "value": round(value, 2),
            "baseline": "one image at a time (IIPA's test script)", "baseline_value": round(baseline, 2),
            "ratio": round(value / baseline, 3), "images": count, "arch": arch, "batch_size": batch,
            "preprocess": "IIPA's: 224×224 squash, no normalisation",
            "peak_rss_mb": round(fast["peak_rss_mb"], 1), "baseline_peak_rss_mb": round(slow["peak_rss_mb"], 1),
            "seconds_with_model_load": round(fast["seconds"], 2),
            "baseline_seconds_with_model_load": round(slow["seconds"], 2)}
