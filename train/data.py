"""The pair data path: which rank reads which pairs, in what order, and how bytes become tensors.

Stages, each a plain function or small object:
  pairs table ──load_pairs──▶ PairSet (keys, shard per pair)
  PairSet ──epoch_order──▶ permutation grouped by shard, shuffled inside a cross-shard window
  permutation ──rank_batches(World)──▶ this rank's batches: every rank the same number of steps,
                                        every pair exactly once per epoch
  batches ──PairLoader──▶ PairBatch(images of the batch's unique keys, hi/lo rows, swaps)
The splitting functions are pure functions of a World, so tests sweep many layouts without a
process group. Backends share one signature and sit in BACKENDS; the loop never asks which.
"""
from __future__ import annotations

import io
import math
import queue
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from shards.console import UserError
from shards.locate import ShardIndex
from shards.schema import read_table
from train.config import DataConfig


@dataclass(frozen=True)
class World:
    """Where this process sits: its rank among `world_size` ranks (and node, for logs)."""

    rank: int = 0
    world_size: int = 1
    node: int = 0


@dataclass
class PairSet:
    """The pairs of one split whose images are both in the shards."""

    hi: np.ndarray  # keys of the more popular images
    lo: np.ndarray  # keys of the less popular images
    shard: np.ndarray  # shard index (into `shard_names`) of each pair's hi image
    shard_names: np.ndarray
    missing: int  # pairs dropped because an image is not in the shards

    def __len__(self) -> int:
        return len(self.hi)


def load_pairs(path, index: ShardIndex) -> PairSet:
    """Read a pair manifest and keep the pairs whose two images were sharded successfully."""
    table = read_table(path, "pairs")
    hi = table.column("hi_key").to_numpy(zero_copy_only=False)
    lo = table.column("lo_key").to_numpy(zero_copy_only=False)
    present = np.fromiter((a in index and b in index for a, b in zip(hi, lo)), dtype=bool, count=len(hi))
    hi, lo = hi[present], lo[present]
    names, shard = np.unique(index.shard_of(hi), return_inverse=True) if len(hi) else (np.array([]), np.zeros(0, int))
    return PairSet(hi, lo, shard.astype(np.int64), names, int((~present).sum()))


def epoch_order(shard: np.ndarray, epoch: int, seed: int, window: int) -> np.ndarray:
    """A permutation of pair indices: shards in a shuffled order, pairs shuffled within each
    window of `window` consecutive shards, so reads stay sequential yet batches mix shards."""
    rng = np.random.default_rng([seed, epoch])
    n_shards = int(shard.max()) + 1 if len(shard) else 0
    position = np.empty(n_shards, dtype=np.int64)
    position[rng.permutation(n_shards)] = np.arange(n_shards)
    return np.lexsort((rng.random(len(shard)), position[shard] // max(1, window)))


def steps_per_epoch(n_pairs: int, world_size: int, batch_pairs: int) -> int:
    """The same on every rank: the largest rank share divided into batches."""
    return math.ceil(math.ceil(n_pairs / world_size) / batch_pairs)


def rank_batches(order: np.ndarray, world: World, batch_pairs: int) -> list[np.ndarray]:
    """This rank's batches: a contiguous, balanced slice of `order` cut into exactly
    `steps_per_epoch` batches, so no rank waits for another at epoch end and no pair is dropped
    or repeated (the last batches of a smaller share are one pair shorter)."""
    n, size = len(order), world.world_size
    steps = steps_per_epoch(n, size, batch_pairs)
    start, stop = n * world.rank // size, n * (world.rank + 1) // size
    if stop - start < steps:
        raise UserError(f"{n} pairs are too few for {size} ranks of {batch_pairs} pairs per batch")
    return np.array_split(order[start:stop], steps)


@dataclass
class PairBatch:
    """One step's input: each distinct image once, and which rows are each pair's hi and lo."""

    images: torch.Tensor  # [N, 3, crop, crop], normalised
    hi_idx: torch.Tensor  # [B] rows of `images`
    lo_idx: torch.Tensor  # [B]
    swap: torch.Tensor  # [B] 1 where the pair is presented lo-first (balances labels)
    pair_ids: np.ndarray  # [B] indices into the PairSet (for bookkeeping and tests)


class TorchDecoder:
    """Pillow decoding on the CPU with torch transforms; available everywhere."""

    def __init__(self, config: DataConfig, train: bool, device: torch.device):
        self.config, self.train, self.device = config, train, device
        self.pool = ThreadPoolExecutor(max(1, config.threads))
        self.mean = torch.tensor(config.mean).view(3, 1, 1)
        self.std = torch.tensor(config.std).view(3, 1, 1)

    def _one(self, data: bytes, seed: int) -> torch.Tensor:
        c = self.config
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        scale = c.resize / min(w, h)
        size = (c.crop, c.crop) if c.squash else (max(c.crop, round(w * scale)), max(c.crop, round(h * scale)))
        img.draft("RGB", size)  # DCT-domain downscale first where the JPEG is much larger
        img = img.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        if self.train:
            rng = np.random.default_rng(seed)
            x, y = int(rng.integers(0, size[0] - c.crop + 1)), int(rng.integers(0, size[1] - c.crop + 1))
            flip = bool(rng.integers(0, 2))
        else:
            x, y, flip = (size[0] - c.crop) // 2, (size[1] - c.crop) // 2, False
        img = img.crop((x, y, x + c.crop, y + c.crop))
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (t - self.mean) / self.std

    def __call__(self, encoded: list[bytes], seed: int) -> torch.Tensor:
        seeds = [seed * 1_000_003 + i for i in range(len(encoded))]
        return torch.stack(list(self.pool.map(self._one, encoded, seeds))).to(self.device, non_blocking=True)


class DaliDecoder:
    """NVIDIA DALI fed by `fn.external_source` with encoded bytes: `mixed` decoding on a GPU,
    the same pipeline on the CPU without one."""

    def __init__(self, config: DataConfig, train: bool, device: torch.device):
        from nvidia.dali import fn, pipeline_def, types

        self.config, self.train, self.device = config, train, device
        decode_device = config.decode_device
        if decode_device == "auto":
            decode_device = "mixed" if device.type == "cuda" else "cpu"
        self.max_batch = 1024

        @pipeline_def(batch_size=self.max_batch, num_threads=max(1, config.threads),
                      device_id=device.index or 0 if decode_device == "mixed" else None,
                      exec_dynamic=True, prefetch_queue_depth=1)
        def pipe():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
            images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
            if config.squash:
                images = fn.resize(images, resize_x=config.crop, resize_y=config.crop, antialias=True)
            else:
                images = fn.resize(images, resize_shorter=config.resize, antialias=True)
            if train:
                pos_x, pos_y = fn.random.uniform(range=(0.0, 1.0)), fn.random.uniform(range=(0.0, 1.0))
                mirror = fn.random.coin_flip()
            else:
                pos_x = pos_y = 0.5
                mirror = 0
            return fn.crop_mirror_normalize(
                images, crop=(config.crop, config.crop), crop_pos_x=pos_x, crop_pos_y=pos_y, mirror=mirror,
                mean=[m * 255 for m in config.mean], std=[s * 255 for s in config.std],
                dtype=types.FLOAT, output_layout="CHW", out_of_bounds_policy="pad")

        self.pipe = pipe(seed=1234)
        self.pipe.build()

    def __call__(self, encoded: list[bytes], seed: int) -> torch.Tensor:
        arrays = [np.frombuffer(b, dtype=np.uint8) for b in encoded]
        out = []
        for start in range(0, len(arrays), self.max_batch):
            self.pipe.feed_input("jpegs", arrays[start:start + self.max_batch])
            (images,) = self.pipe.run()
            if hasattr(images, "as_cpu"):
                images = images.as_cpu()  # the CPU waits for the GPU here: DALI hands back a copy
            out.append(torch.from_numpy(np.stack([np.array(t) for t in images])))
        return torch.cat(out).to(self.device, non_blocking=True)


def _dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = {"torch": TorchDecoder}
if _dali_available():
    BACKENDS["dali"] = DaliDecoder


def make_decoder(config: DataConfig, train: bool, device: torch.device):
    """The configured backend; `auto` prefers DALI where it is installed."""
    name = config.backend
    if name == "auto":
        name = "dali" if "dali" in BACKENDS and device.type == "cuda" else "torch"
    if name not in BACKENDS:
        raise UserError(f"backend {name!r} is not available here; choose from {', '.join(BACKENDS)} or auto")
    return BACKENDS[name](config, train, device)


class ShardCache:
    """Whole shards read sequentially and kept while their pairs are being served."""

    def __init__(self, index: ShardIndex, capacity: int):
        self.index, self.capacity = index, max(1, capacity)
        self.shards: OrderedDict[str, bytes] = OrderedDict()

    def load(self, shard: str) -> None:
        if shard in self.shards:
            self.shards.move_to_end(shard)
            return
        self.shards[shard] = self.index.read_shard(shard)
        while len(self.shards) > self.capacity:
            self.shards.popitem(last=False)

    def get(self, key: str) -> bytes:
        loc = self.index.locate(key)
        data = self.shards.get(loc.shard)
        if data is None:  # the image sits in a shard we are not streaming: read it by offset
            return self.index.read(key)
        return data[loc.offset:loc.offset + loc.size]


class PairLoader:
    """Iterates this rank's batches of one epoch from `start_step`, decoding ahead in a thread."""

    def __init__(self, pairs: PairSet, index: ShardIndex, config: DataConfig, world: World, batch_pairs: int,
                 train: bool, device: torch.device, seed: int = 0):
        self.pairs, self.index, self.config, self.world = pairs, index, config, world
        self.batch_pairs, self.train, self.seed = batch_pairs, train, seed
        self.decoder = make_decoder(config, train, device)
        self.cache = ShardCache(index, config.shuffle_shards + 1)

    def batches(self, epoch: int) -> list[np.ndarray]:
        if self.train:
            order = epoch_order(self.pairs.shard, epoch, self.seed, self.config.shuffle_shards)
        else:
            order = np.argsort(self.pairs.shard, kind="stable")
        return rank_batches(order, self.world, self.batch_pairs)

    def make_batch(self, ids: np.ndarray, seed: int) -> PairBatch:
        for shard in dict.fromkeys(self.pairs.shard_names[self.pairs.shard[ids]]):
            self.cache.load(shard)
        keys, inverse = np.unique(np.concatenate([self.pairs.hi[ids], self.pairs.lo[ids]]), return_inverse=True)
        images = self.decoder([self.cache.get(k) for k in keys], seed)
        rng = np.random.default_rng(seed)
        swap = rng.integers(0, 2, len(ids)) if self.train else np.zeros(len(ids), dtype=np.int64)
        inverse = torch.from_numpy(inverse.astype(np.int64))
        return PairBatch(images, inverse[:len(ids)], inverse[len(ids):], torch.from_numpy(swap), ids)

    def iterate(self, epoch: int, start_step: int = 0):
        """Yield (step, PairBatch) from `start_step`; a background thread keeps `prefetch` ready."""
        batches = self.batches(epoch)
        q: queue.Queue = queue.Queue(maxsize=max(1, self.config.prefetch))
        stop = threading.Event()

        def produce():
            try:
                for step in range(start_step, len(batches)):
                    seed = hash((self.seed, epoch, self.world.rank, step)) & 0x7FFFFFFF
                    item = (step, self.make_batch(batches[step], seed))
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as exc:  # surfaced in the consumer, never swallowed
                q.put(exc)
                return
            q.put(None)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)
