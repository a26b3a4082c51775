"""Checkpoints that describe themselves, and model initialisation.

`model.pth` is a plain torchvision state_dict with `fc = Linear(features, 1)` and no `module.`
prefix (IIPA's released layout); `model.json` beside it records the architecture and the
preprocessing the weights were trained with; `state.pt` holds what exact resumption needs.
All three are written to a temporary name and renamed.

Every file is loaded weights-only: a checkpoint is data, and a pickle that asks for anything
beyond tensors, numbers, strings and containers (a planted `state.pt`, a doctored
`model.pth`) is refused in one line before any of it runs. So `state.pt` keeps its RNG states
as tensors, numbers and strings too.
"""
from __future__ import annotations

import json
import pickle
import random
import re
from pathlib import Path

import numpy as np

import torch

from shards.atomic import atomic_path
from shards.console import UserError
from shards.schema import write_json
from train.config import TrainConfig

# IIPA's released test script feeds a 224×224 resize, scaled to [0, 1], with no mean/std.
IIPA_PREPROCESS = {"resize": 224, "crop": 224, "mode": "squash", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
    write_json(meta, out / "model.json")
    return out / "model.pth"


def load_weights_only(path: Path, mmap: bool = False):
    """torch.load that runs nothing: a file needing more than weights is a UserError, in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # what it asked for, e.g. posix.system
        what = f" (it asks for {found.group(1)})" if found else ""
        raise UserError(f"{path}: refused: it needs more than tensors, numbers and strings to load{what}; "
                        "delete it if you did not write it") from exc
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise UserError(f"{path}: not a PyTorch weights file ({type(exc).__name__})") from exc


def rng_state() -> dict:
    """The global RNGs as tensors, numbers and strings (what a weights-only load accepts)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": py_gauss}}


def restore_rng(state: dict) -> None:
    """Set the global RNGs back to what `rng_state` recorded."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))


def save_state(state: dict, out: Path) -> None:
    _atomic_save(state, out / "state.pt")


# What a resumed run must share with the run that wrote state.pt: the settings that decide the
# data order (which pairs a step holds, so resuming at step k continues the same sequence) and
# the model's shape. (section, field, how the user sets it.)
RESUME_FIXED = (("run", "batch_pairs", "--batch-pairs"), ("run", "seed", "--seed"),
                ("data", "shuffle_shards", "[data] shuffle_shards"), ("model", "arch", "--arch"))


def load_state(out: Path, mmap: bool = False, config: TrainConfig | None = None) -> dict | None:
    """RUN/state.pt if there is one (weights-only; `mmap` maps tensors instead of reading them,
    for a cheap check before the ranks start); with `config`, refuse to resume it under
    settings that would change the data order or the model (RESUME_FIXED), naming the setting."""
    path = out / "state.pt"
    if not path.exists():
        return None
    state = load_weights_only(path, mmap)
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "epoch", "epoch_step"} <= set(state):
        raise UserError(f"{path}: not a state.pt of iipa train (delete it to start afresh)")
    saved = state.get("config")
    if config is not None and isinstance(saved, dict):
        now = config.to_dict()
        for section, name, flag in RESUME_FIXED:
            before = (saved.get(section) or {}).get(name, now[section][name])
            if before != now[section][name]:
                raise UserError(f"{path} was written with {flag} {before}, this run asks for {now[section][name]}: "
                                f"resuming would change the {'model' if name == 'arch' else 'data order'}; "
                                f"pass {flag} {before} to resume, or choose another --out")
    return state


def check_same_pairs(state: dict | None, pairs: int, fingerprint: str, path: Path) -> None:
    """A resumed run must read the same training pairs in the same shard layout: a rebuilt pair
    manifest, or shards rebuilt in another grouping, move every step's pairs (train.data's
    pairs_fingerprint tells)."""
    if state is None:
        return
    if state.get("train_pairs", pairs) != pairs:
        raise UserError(f"{path} has {pairs} usable pairs now, the run in progress started with "
                        f"{state['train_pairs']}: resuming would change the data order; choose another --out")
    if state.get("data_fingerprint", fingerprint) != fingerprint:
        raise UserError(f"{path} or its shards changed since the run started (other pairs, or the images in "
                        "another shard layout): resuming would change the data order; choose another --out")


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
    state = load_weights_only(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state_dict (expected names mapped to tensors, found {type(state).__name__})")
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
    load_matching(model, read_weights(weights), weights, "the architecture")
    return f"weights from {weights}"


def load_matching(model: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    """Load a state_dict that must fit `model` exactly, or say in one line how it does not:
    how many names are missing, unexpected or of another shape, with an example of each."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        model.load_state_dict(state)
        return
    parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
             f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
             f"{len(shapes)} of another shape (e.g. {shapes[0]}: {list(state[shapes[0]].shape)} in the file, "
             f"{list(own[shapes[0]].shape)} here)" if shapes else ""]
    raise UserError(f"{path}: does not match {what}: " + ", ".join(p for p in parts if p))


def model_meta(model_path: Path) -> dict:
    """Architecture and preprocessing for a MODEL argument: a run's model.pth or iipa:PATH."""
    text = str(model_path)
    if text.startswith("iipa:"):
        return {"arch": "resnet50", "weights": Path(text[5:]), "preprocess": IIPA_PREPROCESS}
    path = Path(text)
    if not path.is_file():
        raise UserError(f"{path}: no such model file (a run's model.pth, or iipa:PATH for IIPA's weights)")
    meta_path = path.with_name("model.json")
    if not meta_path.exists():
        raise UserError(f"{meta_path}: missing (a run's model.pth has its model.json beside it; use iipa:PATH for IIPA weights)")
    try:
        meta = json.loads(meta_path.read_text())
        return {"arch": meta["arch"], "weights": path, "preprocess": dict(meta["preprocess"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{meta_path}: not a model.json of iipa train ({type(exc).__name__}: {exc})") from exc

