"""`iipa score`: scores for images given as files, folders or shards, with the preprocessing
recorded beside the model (IIPA's own for `iipa:PATH`).

For our own models an image file is first stored as `shards build` stores it (the same
`shards.build.resize.resize_image`: EXIF orientation applied, transparency over white, the shorter side
at the shards' size, re-encoded as JPEG), since the model learned those pixels; `iipa:` weights
get the file as it is, as IIPA's own script reads it. Images are then decoded in batches through
the trainer's own decoders (train.decode), so a score here is the score the model gives the same
photo in shards. An image that does not decode is a row with a status and a message; the rest of
its batch is still scored.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import torch

from eval.config import ScoreConfig
from shards.atomic import atomic_path
from shards.console import UserError, check_out, progress
from shards.build.resize import ResizeConfig, image_error, resize_image
from train.checkpoint import load_matching, model_meta, read_weights
from train.config import DataConfig
from train.decode import make_decoder
from train.model import build_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
log = logging.getLogger("iipa.score")


def pick_device(name: str) -> torch.device:
    """auto (a GPU where there is one), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device here")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from exc


def stored_as(model_path: Path) -> ResizeConfig:
    """How the shards a run trained on stored their images (the run's config.json names the
    shards, their manifest.json records the settings), else `shards build`'s defaults."""
    try:
        run = json.loads((Path(model_path).parent / "config.json").read_text())
        manifest = json.loads((Path(run["data"]["shards"]) / "manifest.json").read_text())
        return ResizeConfig(**manifest["resize"])
    except (OSError, ValueError, KeyError, TypeError):
        log.info("score: images are stored with shards build's defaults (the run's shards settings are not at hand)")
        return ResizeConfig()


class Scorer:
    """Loads MODEL (a run's model.pth with its model.json, or iipa:PATH) and scores encoded images."""

    def __init__(self, model_path: str | Path, backend: str = "auto", batch_size: int = 128, threads: int = 2,
                 device: str = "auto"):
        meta = model_meta(Path(model_path) if not str(model_path).startswith("iipa:") else model_path)
        self.device = pick_device(device)
        self.model = build_model(meta["arch"])
        load_matching(self.model, read_weights(Path(meta["weights"])), Path(meta["weights"]), meta["arch"])
        self.model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        pre = meta["preprocess"]
        data = DataConfig(backend=backend, resize=pre["resize"], crop=pre["crop"], mean=tuple(pre["mean"]),
                          std=tuple(pre["std"]), squash=pre.get("mode") == "squash", threads=threads)
        self.decoder = make_decoder(data, train=False, device=self.device)
        self.batch_size = batch_size
        self.meta = meta
        self.model_path = str(model_path)

    @cached_property
    def store(self) -> ResizeConfig | None:
        """How an image file is stored before decoding: as our shards store it, or, for IIPA's
        weights, not at all (IIPA's script reads the file as it is: no EXIF orientation, alpha dropped)."""
        return None if self.model_path.startswith("iipa:") else stored_as(Path(self.model_path))

    def prepare(self, data: bytes) -> tuple[bytes | None, str, str | None]:
        """An image file's bytes as this model was trained on them: (bytes, "ok", None), or
        (None, status, message) where `shards build` would have refused the image."""
        if self.store is None:
            return data, "ok", None
        stored = resize_image(data, self.store)
        return stored.data, stored.status, stored.error

    @torch.no_grad()
    def _forward(self, encoded: list[bytes]) -> np.ndarray:
        images = self.decoder(encoded, seed=0)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        # The CPU waits for the GPU here: the scores come back to the host once per batch.
        return self.model(images).squeeze(1).float().cpu().numpy()

    def score(self, encoded: list[bytes]) -> np.ndarray:
        """Scores of images known to decode (shards hold only decoded images); raises otherwise."""
        parts = [self._forward(encoded[i:i + self.batch_size]) for i in range(0, len(encoded), self.batch_size)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)

    def score_safe(self, encoded: list[bytes]) -> tuple[np.ndarray, list[str | None]]:
        """Scores and per-image errors: a batch that fails is retried image by image, so one bad
        file costs its own row only (NaN score, the decoder's message)."""
        try:
            return self.score(encoded), [None] * len(encoded)
        except Exception:  # which image broke the batch is only known by trying each
            pass
        scores, errors = np.full(len(encoded), np.nan), [None] * len(encoded)
        for i, data in enumerate(encoded):
            try:
                scores[i] = self._forward([data])[0]
            except Exception as exc:  # decoders raise many types for a bad file; recorded, not lost
                errors[i] = image_error(exc, 300)  # one line: DALI's run over several
        return scores, errors


def list_images(inputs: list[Path]) -> tuple[list[Path], int]:
    """Files as given (whatever their suffix) and the image files under each folder, sorted; and
    how many other files the folders held (counted, not scored)."""
    paths: list[Path] = []
    not_images = 0
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            entries = [p for p in item.rglob("*") if not p.is_dir()]
            # A link to nowhere with an image's name is kept: its row says not_found.
            found = sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink()))
            if not found:
                raise UserError(f"{item}: no image files in this folder")
            paths.extend(found)
            not_images += len(entries) - len(found)
        else:
            paths.append(item)  # a missing file becomes a row with status not_found
    return paths, not_images


def _read(path: Path, scorer: Scorer) -> tuple[bytes | None, str, str | None]:
    """(bytes as the model takes them, "ok", None), or (None, status, message)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        status = "not_found" if not path.exists() else "read_error"
        return None, status, f"{type(exc).__name__}: {exc.strerror or exc}"
    return scorer.prepare(data)


def score_files(scorer: Scorer, paths: list[Path], threads: int = 2) -> dict[str, list]:
    """One row per path: path, score, status (ok, not_found, read_error, decode_error, or what
    `shards build` would have said of the image: too_small, too_large), error."""
    rows: dict[str, list] = {"path": [], "score": [], "status": [], "error": []}
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in progress(range(0, len(paths), scorer.batch_size), desc="scoring", unit="batch"):
            chunk = paths[start:start + scorer.batch_size]
            read = list(pool.map(_read, chunk, [scorer] * len(chunk)))
            good = [i for i, (data, _, _) in enumerate(read) if data is not None]
            scores, errors = scorer.score_safe([read[i][0] for i in good]) if good else (np.zeros(0), [])
            by_index = {i: (s, e) for i, s, e in zip(good, scores, errors)}
            for i, path in enumerate(chunk):
                rows["path"].append(str(path))
                if i in by_index:
                    score, error = by_index[i]
                    rows["score"].append(None if error else float(score))
                    rows["status"].append("decode_error" if error else "ok")
                    rows["error"].append(error)
                else:
                    rows["score"].append(None)
                    rows["status"].append(read[i][1])
                    rows["error"].append(read[i][2])
    return rows


def score_shards(scorer: Scorer, shards: Path) -> dict[str, list]:
    """Every stored image of a shards folder, reading each tar once, in order."""
    from shards.locate import ShardIndex

    index = ShardIndex(shards)
    rows: dict[str, list] = {"key": [], "shard": [], "score": [], "status": [], "error": []}
    for shard in progress(np.unique(index.shard).tolist(), desc="shards", unit="shard"):
        name = index.shard_names[shard]
        data = index.read_shard(name)
        members = np.flatnonzero(index.shard == shard)
        for start in range(0, len(members), scorer.batch_size):
            chunk = members[start:start + scorer.batch_size]
            encoded = [index.slice(data, r) for r in chunk]
            scores, errors = scorer.score_safe(encoded)
            for k, s, e in zip(index.keys_of(chunk), scores, errors):
                rows["key"].append(str(k))
                rows["shard"].append(str(name))
                rows["score"].append(None if e else float(s))
                rows["status"].append("decode_error" if e else "ok")
                rows["error"].append(e)
    return rows


def write_scores(table: pa.Table, out: Path) -> Path:
    """CSV or Parquet by suffix, written to a temporary name and renamed."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise UserError(f"--out {out}: expected a .csv or .parquet file")
    with atomic_path(out) as tmp:
        if suffix == ".csv":
            pcsv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)
    return out


# One row per input: the file (or the tar, with the sample key), its score, status and message.
SCORES = pa.schema([("path", pa.string()), ("key", pa.string()), ("score", pa.float64()),
                    ("status", pa.string()), ("error", pa.string())])


class Scored(NamedTuple):
    """The scores (one row per input) and how many files in the folders were not images."""

    table: pa.Table
    not_images: int


def score_images(config: ScoreConfig) -> Scored:
    """Score every input image (files, folders, or a shards folder); one row per input."""
    if not config.inputs and config.shards is None:
        raise UserError("give images or folders to score, or --shards DIR")
    if config.batch_size < 1 or config.threads < 1:
        raise UserError("--batch-size and --threads must be ≥ 1")
    if config.out is not None and Path(config.out).suffix.lower() not in (".csv", ".parquet"):
        raise UserError(f"--out {config.out}: expected a .csv or .parquet file")
    if config.out is not None:
        check_out(config.out, folder=False)
    pick_device(config.device)  # a bad --device fails before any file is listed or read
    paths, not_images = list_images(config.inputs)
    scorer = Scorer(config.model, config.backend, config.batch_size, config.threads, config.device)
    tables = []
    if paths:
        rows = score_files(scorer, paths, config.threads)
        tables.append(pa.table({**rows, "key": [None] * len(rows["path"])}, schema=SCORES))
    if config.shards is not None:
        rows = score_shards(scorer, Path(config.shards))
        rows["path"] = [str(Path(config.shards) / s) for s in rows.pop("shard")]
        tables.append(pa.table(rows, schema=SCORES))
    table = pa.concat_tables(tables)
    if config.out is not None:
        write_scores(table, Path(config.out))
    return Scored(table, not_images)
