"""The pair data path: which rank reads which pairs, in what order, and how bytes become tensors.

Stages, each a plain function or small object:
  pairs table ──load_pairs──▶ PairSet (hi/lo rows of a compact index, shard per pair; cached)
  PairSet ──epoch_order──▶ permutation grouped by shard, shuffled inside a cross-shard window
  permutation ──rank_batches(World)──▶ this rank's batches: every rank the same number of steps,
                                        every pair exactly once per epoch
  batches ──PairLoader──▶ PairBatch(images of the batch's unique images, hi/lo rows, swaps)
The splitting functions are pure functions of a World, so tests sweep many layouts without a
process group. Backends share one signature and sit in BACKENDS; the loop never asks which.
"""
from __future__ import annotations

import hashlib
import logging
import math
import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shards.console import UserError
from shards.locate import ShardIndex, resolve_pairs
from shards.build.resize import image_error
from train.config import DataConfig
from train.decode import make_decoder

log = logging.getLogger("iipa.train")


@dataclass(frozen=True)
class World:
    """Where this process sits: its rank among `world_size` ranks (and node, for logs)."""

    rank: int = 0
    world_size: int = 1
    node: int = 0


@dataclass
class PairSet:
    """The pairs of one split whose images are both in the shards."""

    index: ShardIndex  # the images these pairs use, and where their bytes sit
    hi: np.ndarray  # rows of `index`: the more popular images
    lo: np.ndarray  # rows of `index`: the less popular images
    shard: np.ndarray  # shard index (into `shard_names`) of each pair's hi image
    shard_names: np.ndarray
    missing: int  # pairs dropped because an image is not in the shards

    def __len__(self) -> int:
        return len(self.hi)


def load_pairs(path, shards: Path | ShardIndex, cache: bool = True) -> PairSet:
    """Read a pair manifest and keep the pairs whose two images were sharded successfully.

    `shards` is a shards folder or its index (share one between splits: it reads the slices
    only when a split's cache beside the pairs is cold; see shards.locate.resolve_pairs)."""
    index = shards if isinstance(shards, ShardIndex) else ShardIndex(shards)
    resolved = resolve_pairs(path, index, cache)
    index, hi, lo = resolved.index, resolved.hi, resolved.lo
    index.check_files()
    hi_shard = index.shard[hi]
    used = np.flatnonzero(np.bincount(hi_shard, minlength=len(index.shard_names)))
    number = np.zeros(len(index.shard_names), dtype=np.int64)
    number[used] = np.arange(len(used))  # the shards of hi images, numbered in name order
    return PairSet(index, hi, lo, number[hi_shard], index.shard_names[used], resolved.missing)


def pairs_fingerprint(pairs: PairSet) -> str:
    """What the data order is a function of, besides the seed, the epoch and the settings: each
    pair's two images and its shard. A resumed run must find the same (0.1 s at 5 M pairs)."""
    digest = hashlib.sha1()
    for array in (pairs.hi, pairs.lo, pairs.shard):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return digest.hexdigest()


def epoch_order(shard: np.ndarray, epoch: int, seed: int, window: int) -> np.ndarray:
    """A permutation of pair indices: shards in a shuffled order, pairs shuffled within each
    window of `window` consecutive shards, so reads stay sequential yet batches mix shards."""
    rng = np.random.default_rng([seed, epoch])
    n_shards = int(shard.max()) + 1 if len(shard) else 0
    position = np.empty(n_shards, dtype=np.int64)
    position[rng.permutation(n_shards)] = np.arange(n_shards)
    # One sort of a 64-bit key (window number, then a random tie-break) instead of a lexsort over
    # floats: 0.5 s rather than 1.8 s at 5 M pairs, on every epoch's start.
    key = (position[shard] // max(1, window)) << 32 | rng.integers(0, 1 << 32, len(shard), dtype=np.int64)
    return np.argsort(key)


def steps_per_epoch(n_pairs: int, world_size: int, batch_pairs: int) -> int:
    """The same on every rank: the largest rank share divided into batches."""
    return math.ceil(math.ceil(n_pairs / world_size) / batch_pairs)


class Batches(Sequence):
    """`steps` consecutive slices of `pairs` as np.array_split cuts them (the first ones one longer),
    made when asked for: at 5 M pairs of 4 a batch, splitting all at once took 2.3 s of start-up."""

    def __init__(self, pairs: np.ndarray, steps: int):
        self.pairs, self.steps = pairs, steps
        self.size, self.longer = divmod(len(pairs), steps)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> np.ndarray:
        if not 0 <= step < self.steps:
            raise IndexError(step)
        start = step * self.size + min(step, self.longer)
        return self.pairs[start:start + self.size + (step < self.longer)]


def rank_batches(order: np.ndarray, world: World, batch_pairs: int) -> Batches:
    """This rank's batches: a contiguous, balanced slice of `order` cut into exactly
    `steps_per_epoch` batches, so no rank waits for another at epoch end and no pair is dropped
    or repeated (the last batches of a smaller share are one pair shorter)."""
    n, size = len(order), world.world_size
    steps = steps_per_epoch(n, size, batch_pairs)
    start, stop = n * world.rank // size, n * (world.rank + 1) // size
    if stop - start < steps:
        raise UserError(f"{n} pairs are too few for {size} ranks of {batch_pairs} pairs per batch")
    return Batches(order[start:stop], steps)


@dataclass
class PairBatch:
    """One step's input: each distinct image once, and which rows are each pair's hi and lo."""

    images: torch.Tensor  # [N, 3, crop, crop], normalised
    hi_idx: torch.Tensor  # [B] rows of `images`
    lo_idx: torch.Tensor  # [B]
    swap: torch.Tensor  # [B] 1 where the pair is presented lo-first (balances labels)
    pair_ids: np.ndarray  # [B] indices into the PairSet (for bookkeeping and tests)


class ShardCache:
    """Whole shards read sequentially and kept while their pairs are being served."""

    def __init__(self, index: ShardIndex, capacity: int):
        self.index, self.capacity = index, max(1, capacity)
        self.shards: OrderedDict[int, bytes] = OrderedDict()  # shard id → the tar's bytes

    def load(self, shard: int) -> None:
        if shard in self.shards:
            self.shards.move_to_end(shard)
            return
        self.shards[shard] = self.index.read_shard(self.index.shard_names[shard])
        while len(self.shards) > self.capacity:
            self.shards.popitem(last=False)

    def get(self, row: int) -> bytes:
        data = self.shards.get(int(self.index.shard[row]))
        if data is None:  # the image sits in a shard we are not streaming: read it by offset
            return self.index.read_row(row)
        return self.index.slice(data, row)


class PairLoader:
    """Iterates this rank's batches of one epoch from `start_step`, decoding ahead in a thread."""

    def __init__(self, pairs: PairSet, config: DataConfig, world: World, batch_pairs: int,
                 train: bool, device: torch.device, seed: int = 0):
        self.pairs, self.index, self.config, self.world = pairs, pairs.index, config, world
        self.batch_pairs, self.train, self.seed = batch_pairs, train, seed
        self.decoder = make_decoder(config, train, device)
        self.cache = ShardCache(self.index, config.shuffle_shards + 1)
        self.bad_keys: set[str] = set()

    def batches(self, epoch: int) -> Batches:
        if self.train:
            order = epoch_order(self.pairs.shard, epoch, self.seed, self.config.shuffle_shards)
        else:
            order = np.argsort(self.pairs.shard, kind="stable")
        return rank_batches(order, self.world, self.batch_pairs)

    def decode(self, rows: np.ndarray, seed: int) -> tuple[torch.Tensor, np.ndarray]:
        """The decoded images of `rows` that could be decoded, and the mask of which those are.

        A batch holding an unreadable image fails as a whole; only then are its images decoded
        one at a time to find the culprit, which is reported, remembered and left out.
        """
        encoded = [self.cache.get(r) for r in rows]
        try:
            return self.decoder(encoded, seed), np.ones(len(rows), dtype=bool)
        except Exception:  # Pillow raises OSError and friends, DALI RuntimeError: find the image
            ok = np.ones(len(rows), dtype=bool)
            for i, data in enumerate(encoded):
                try:
                    self.decoder([data], seed)
                except Exception as exc:
                    ok[i] = False
                    log.warning("unreadable image %s skipped (%s)", self.index.key(rows[i]), image_error(exc))
            self.bad_keys.update(self.index.key(r) for r in rows[~ok])
            if not ok.any():
                raise RuntimeError(f"no image of this batch could be decoded (e.g. {self.index.key(rows[0])}): "
                                   "damaged shards? "
                                   "run `iipa shards verify`") from None
            return self.decoder([e for e, good in zip(encoded, ok) if good], seed), ok

    def make_batch(self, ids: np.ndarray, seed: int) -> PairBatch:
        for shard in dict.fromkeys(self.index.shard[self.pairs.hi[ids]].tolist()):
            self.cache.load(shard)
        rows, inverse = np.unique(np.concatenate([self.pairs.hi[ids], self.pairs.lo[ids]]), return_inverse=True)
        images, ok = self.decode(rows, seed)
        hi, lo = inverse[:len(ids)], inverse[len(ids):]
        usable = ok[hi] & ok[lo]  # a pair with an unreadable image is dropped from this step
        if not usable.any():
            raise RuntimeError(f"every pair of a batch has an unreadable image (e.g. {self.index.key(rows[~ok][0])})")
        row = np.cumsum(ok) - 1  # row of each decoded key in `images`
        ids, hi, lo = ids[usable], row[hi[usable]], row[lo[usable]]
        rng = np.random.default_rng(seed)
        swap = rng.integers(0, 2, len(ids)) if self.train else np.zeros(len(ids), dtype=np.int64)
        return PairBatch(images, torch.from_numpy(hi), torch.from_numpy(lo), torch.from_numpy(swap), ids)

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
