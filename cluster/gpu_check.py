"""The GPU check of the training issue, as one short run: `python -m cluster.gpu_check --out DIR`.

Meant for a lent GPU machine whose image has torch, torchvision, numpy, pillow, pyarrow, pyyaml,
tqdm, matplotlib and scikit-image but none of ray, webdataset, tweepy, duckdb or DALI, so it
touches none of them: the data set is written directly as shards (the scale bench's generator,
real photographs at the stored size), and the trainer runs in this process. It reports images/s
per GPU of the real training step for each pair batch size, with and without `--compile`, the
model alone on synthetic tensors in the same run, and the share of step time waiting for data;
writes gpu-check.json and gpu-check.png to --out (default $OUT) and prints one summary line.
On a CPU, `--quick` runs the same code small, so the test suite proves it before a GPU does.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from cluster.benches.loader import model_rate
from cluster.benches.scale import make_scaleset
from cluster.benches.train import trainer_rate
from train.decode import BACKENDS


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    labels = [f"{r['batch_pairs']} pairs{' compiled' if r['compile'] else ''}" for r in runs]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(runs)))
    ax.barh(labels, [r["images_per_s"] for r in runs], color="tab:blue", label="training step (real data)")
    for y, r in enumerate(runs):
        ax.text(r["images_per_s"], y, f" {r['images_per_s']:.0f} img/s, data {r['data_wait_share']:.0%}",
                va="center", fontsize=8)
    for value, style, name in ((result["model_alone_images_per_s"], "--", "model alone"),
                               (result["target_images_per_s"], ":", "target")):
        ax.axvline(value, color="grey", linestyle=style, label=name)
    ax.set_xlabel(f"images/s per GPU ({result['device']}, {result['backend']}, {result['arch']})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check(out: Path, quick: bool) -> dict:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    backend = ("dali" if "dali" in BACKENDS else "nvjpeg") if cuda else "torch"
    arch = "resnet18" if quick else "resnet50"
    sizes = (2, 4) if quick else (64, 256)
    steps = 2 if quick else 30
    work = out / "work"
    data = make_scaleset(work, 2_000 if quick else 40_000, 2 if quick else 20, 1_000 if quick else 20_000,
                         photo_side=64 if quick else 320)
    runs, failed = [], []
    for batch_pairs in sizes:
        for compiled in (False,) if quick else (False, True):  # compiling on a 2-core CPU takes minutes
            start = time.perf_counter()
            record = {"batch_pairs": batch_pairs, "compile": compiled}
            try:  # one failed setting (say, compile on an unexpected toolchain) must not cost the others
                record.update(trainer_rate(data, backend, batch_pairs, steps, arch=arch, compile=compiled,
                                           crop=32 if quick else 224, resize=48 if quick else 256, run_dir=work))
            except Exception as exc:  # noqa: BLE001 (reported in the JSON, the check goes on)
                record["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            record["seconds"] = round(time.perf_counter() - start, 1)
            (failed if "error" in record else runs).append(record)
            print(json.dumps(record), flush=True)
    if not runs:
        raise RuntimeError(f"every training run failed, e.g. {failed[0]['error']}")
    best = max(runs, key=lambda r: r["images_per_s"])
    alone = model_rate(arch, 2 * best["batch_pairs"], 2 if quick else 10, device, crop=32 if quick else 224)
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "backend": backend, "arch": arch,
            "precision": "bf16" if cuda else "fp32", "runs": runs, "failed": failed, "best": best,
            "model_alone_images_per_s": alone, "ratio_to_model_alone": best["images_per_s"] / alone,
            "target_images_per_s": 3000, "target_data_wait_share": 0.10,
            "torch": torch.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check")), help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny sizes and ResNet-18: a smoke run on a CPU")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = check(args.out, args.quick)
    (args.out / "gpu-check.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "gpu-check.png")
    best = result["best"]
    print(f"gpu-check: {result['device']} {result['arch']} {result['backend']}: best {best['images_per_s']:.0f} "
          f"images/s per GPU ({best['batch_pairs']} pairs{', compiled' if best['compile'] else ''}), "
          f"data wait {best['data_wait_share']:.1%}, model alone {result['model_alone_images_per_s']:.0f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
