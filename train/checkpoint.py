"""Checkpoints that describe themselves, and model initialisation.

`model.pth` is a plain torchvision state_dict with `fc = Linear(features, 1)` and no `module.`
prefix (IIPA's released layout); `model.json` beside it records the architecture and the
preprocessing the weights were trained with; `state.pt` holds what exact resumption needs.
All three are written to a temporary name and renamed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from shards.console import UserError
from train.config import TrainConfig

# IIPA's released test script feeds a 224×224 resize, scaled to [0, 1], with no mean/std.
IIPA_PREPROCESS = {"resize": 224, "crop": 224, "mode": "squash", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def plain_state_dict(model: torch.nn.Module) -> dict:
    """The underlying model's weights, whatever DDP or compile wrapped around it."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def preprocessing(config: TrainConfig) -> dict:
    d = config.data
    return {"resize": d.resize, "crop": d.crop, "mode": "squash" if d.squash else "shorter_side_center_crop",
            "mean": list(d.mean), "std": list(d.std)}


def save_model(model: torch.nn.Module, config: TrainConfig, out: Path, step: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    _atomic_save(plain_state_dict(model), out / "model.pth")
    meta = {"arch": config.model.arch, "step": step, "preprocess": preprocessing(config)}
    tmp = out / ".model.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "model.json")
    return out / "model.pth"


def save_state(state: dict, out: Path) -> None:
    _atomic_save(state, out / "state.pt")


def load_state(out: Path) -> dict | None:
    path = out / "state.pt"
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def strip_prefixes(state: dict) -> dict:
    """Accept DDP (`module.`) and compiled (`_orig_mod.`) checkpoints too."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def read_weights(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise UserError(f"{path}: not a PyTorch weights file ({type(exc).__name__})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return strip_prefixes(state)


def initialise(model: torch.nn.Module, spec: str) -> str:
    """Load `--init`: random, imagenet:PATH (head left random), iipa:PATH, or a RUN folder."""
    if spec == "random":
        return "random"
    kind, _, path = spec.partition(":")
    if kind == "imagenet" and path:
        state = {k: v for k, v in read_weights(Path(path)).items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise UserError(f"{path}: does not match the architecture ({len(missing)} missing, {len(unexpected)} unexpected)")
        return f"imagenet weights from {path}"
    weights = Path(path) if kind == "iipa" and path else Path(spec) / "model.pth"
    if kind != "iipa" and not Path(spec).is_dir():
        raise UserError(f"--init {spec!r}: expected random, imagenet:PATH, iipa:PATH or a run folder")
    try:
        model.load_state_dict(read_weights(weights))
    except RuntimeError as exc:
        raise UserError(f"{weights}: does not match the architecture: {str(exc).splitlines()[0]}") from exc
    return f"weights from {weights}"


def model_meta(model_path: Path) -> dict:
    """Architecture and preprocessing for a MODEL argument: a run's model.pth or iipa:PATH."""
    text = str(model_path)
    if text.startswith("iipa:"):
        return {"arch": "resnet50", "weights": Path(text[5:]), "preprocess": IIPA_PREPROCESS}
    path = Path(text)
    meta_path = path.with_name("model.json")
    if not meta_path.exists():
        raise UserError(f"{meta_path}: missing (a run's model.pth has its model.json beside it; use iipa:PATH for IIPA weights)")
    meta = json.loads(meta_path.read_text())
    return {"arch": meta["arch"], "weights": path, "preprocess": meta["preprocess"]}

