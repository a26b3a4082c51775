"""The training loop: one process per device, DDP when launched by torchrun, nothing else changed.

The same code runs on one CPU, one GPU, or many nodes: `torchrun` sets RANK/WORLD_SIZE and the
loop joins the process group (gloo on CPU, NCCL on GPU). Every rank runs the same number of
steps (see train.data.rank_batches), so epochs end together and DDP never hangs.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from shards.console import UserError, progress
from shards.locate import ShardIndex
from shards.schema import write_json
from train.checkpoint import (check_same_pairs, initialise, load_state, restore_rng, rng_state, save_model,
                              save_state)
from train.config import TrainConfig
from train.data import PairLoader, World, load_pairs, pairs_fingerprint, steps_per_epoch
from train.metrics import AuditLog, MetricsLog, process_age, write_curve
from train.model import build_model, head_parameters, pair_loss, pair_scores

log = logging.getLogger("iipa.train")


def attempt_store() -> dist.Store | None:
    """The store of torchrun's agent with keys scoped to this restart, or None for torch's default.

    torchrun (c10d rendezvous, as with --standalone) hands every restart of the workers the same
    agent-hosted TCPStore, and init_process_group keys it without the attempt: restarted workers
    can read the addresses their killed predecessors published and fail to connect (gloo
    "Connection refused" or a hang; pytorch/pytorch#135712). TORCHELASTIC_RESTART_COUNT tells the
    attempts apart, but each agent counts its own restarts, so it is only shared by all ranks when
    one agent runs them all (one node); other layouts keep torch's default.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or os.environ.get("GROUP_WORLD_SIZE") != "1":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=default_pg_timeout)
    return dist.PrefixStore(f"iipa/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def setup_distributed() -> tuple[World, torch.device]:
    """Join torchrun's process group if there is one; pick this rank's device."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return World(), torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend, store = "nccl" if cuda else "gloo", attempt_store()
        if store is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]))
    world = World(rank=dist.get_rank(), world_size=dist.get_world_size(), node=int(os.environ.get("GROUP_RANK", "0")))
    return world, device


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum numbers over ranks (identity without a process group)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def make_optimizer(model: torch.nn.Module, config: TrainConfig):
    head = head_parameters(model)
    groups = [
        {"params": [p for n, p in model.named_parameters() if n not in head], "lr": config.optim.lr_backbone},
        {"params": [p for n, p in model.named_parameters() if n in head], "lr": config.optim.lr_head},
    ]
    # Fused: one kernel over every parameter instead of a loop of small ones (on the CPU, a
    # ResNet-18 step's Adam update takes 6 ms instead of 32; on a GPU it saves launches alike).
    optimizer = torch.optim.Adam(groups, weight_decay=config.optim.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.optim.lr_decay)
    return optimizer, scheduler


def autocast(config: TrainConfig, device: torch.device):
    precision = config.run.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


@torch.no_grad()
def validate(model, loader: PairLoader, config: TrainConfig, device) -> dict:
    """Pairwise accuracy and loss over this split, summed across ranks (ties count half)."""
    if len(loader.pairs) < loader.world.world_size:
        return {}
    model.eval()
    correct = total = loss_sum = 0.0
    for _, batch in loader.iterate(epoch=0):
        with autocast(config, device):
            s_hi, s_lo = pair_scores(model, batch.images, batch.hi_idx.to(device), batch.lo_idx.to(device))
        correct += float((s_hi > s_lo).sum() + 0.5 * (s_hi == s_lo).sum())
        total += len(s_hi)
        loss_sum += float(pair_loss(s_hi, s_lo, batch.swap.to(device))) * len(s_hi)
    model.train()
    correct, total, loss_sum = all_sum([correct, total, loss_sum], device)
    return {"acc/val": correct / total, "loss/val": loss_sum / total, "pairs/val": int(total)}


def resume_position(state: dict | None, world: World, steps: int) -> tuple[int, int, int]:
    """(global step, epoch, step within epoch) to start from; a changed world size keeps the
    epoch and maps the position proportionally (exact only when the world size is unchanged)."""
    if state is None:
        return 0, 0, 0
    epoch, local = state["epoch"], state["epoch_step"]
    if state["world_size"] != world.world_size:
        log.warning("world size changed from %d to %d: resuming epoch %d at the same fraction",
                    state["world_size"], world.world_size, epoch)
        local = round(local / max(1, state["steps_per_epoch"]) * steps)
    return state["step"], epoch, local


def checkpoint(model, optimizer, scheduler, config: TrainConfig, world: World, step, epoch, epoch_step, steps,
               data: tuple[int, str]):
    """Rank 0 writes model.pth/model.json and state.pt (each atomically); others wait."""
    if world.rank == 0:
        out = Path(config.run.out)
        save_model(model, config, out, step)
        save_state({"model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "step": step, "epoch": epoch, "epoch_step": epoch_step, "steps_per_epoch": steps,
                    "world_size": world.world_size, "config": config.to_dict(),
                    "train_pairs": data[0], "data_fingerprint": data[1],
                    "rng": rng_state()},
                   out)
    if dist.is_initialized():
        dist.barrier()


@dataclass
class StepWindow:
    """Sums over the steps since the last metrics line (data wait measured apart from compute)."""

    loss: float = 0.0
    correct: float = 0.0
    pairs: int = 0
    images: int = 0
    data: float = 0.0
    total: float = 0.0
    steps: int = 0

    def add(self, loss: float, s_hi, s_lo, images: int, data_s: float, total_s: float) -> None:
        self.loss += loss * len(s_hi)
        self.correct += float((s_hi > s_lo).sum())
        self.pairs += len(s_hi)
        self.images += images
        self.data += data_s
        self.total += total_s
        self.steps += 1

    def metrics(self, world: World, device) -> dict:
        loss, correct, pairs = all_sum([self.loss, self.correct, self.pairs], device)
        return {"loss/train": loss / pairs, "acc/train": correct / pairs,
                "time/data": self.data / self.steps, "time/step": self.total / self.steps,
                "time/data_share": self.data / self.total,
                "throughput/pairs_per_s": pairs / self.total,
                "throughput/images_per_s": self.images * world.world_size / self.total}


class Trainer:
    """One rank's share of a training job: set up from the config (and state.pt if present), then `fit`."""

    def __init__(self, config: TrainConfig, resolving: Future | None = None):
        self.config = config
        self.world, self.device = setup_distributed()
        self.resolving = resolving
        self.out = Path(config.run.out)
        torch.manual_seed(config.run.seed)
        self.raw_model = build_model(config.model.arch)  # first: the pairs may still be resolving
        init = initialise(self.raw_model, config.model.init)
        shards = ShardIndex(config.data.shards)  # read on first use: not at all when the pair caches are warm
        self.train_pairs = self.load_split("train", shards)
        if len(self.train_pairs) == 0:
            raise UserError(f"{Path(config.data.pairs) / 'train.parquet'}: none of its {self.train_pairs.missing} "
                            f"pairs has both images in {config.data.shards}; were these shards built from the "
                            "images table of these pairs?")
        val_pairs = self.load_split("val", shards)
        self.raw_model.to(self.device)
        if self.device.type == "cuda":
            self.raw_model.to(memory_format=torch.channels_last)
        self.optimizer, self.scheduler = make_optimizer(self.raw_model, config)
        self.state = load_state(self.out, config=config)
        self.data_fingerprint = pairs_fingerprint(self.train_pairs)
        check_same_pairs(self.state, len(self.train_pairs), self.data_fingerprint,
                         Path(config.data.pairs) / "train.parquet")
        if self.state is not None:
            self.raw_model.load_state_dict(self.state["model"])
            self.optimizer.load_state_dict(self.state["optimizer"])
            self.scheduler.load_state_dict(self.state["scheduler"])
            restore_rng(self.state["rng"])
        self.model = self.raw_model
        if self.world.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if config.run.compile:
            self.model = torch.compile(self.model)
        self.steps = steps_per_epoch(len(self.train_pairs), self.world.world_size, config.run.batch_pairs)
        self.loader = PairLoader(self.train_pairs, config.data, self.world, config.run.batch_pairs, True,
                                 self.device, config.run.seed)
        self.val_loader = PairLoader(val_pairs, config.data, self.world, config.run.batch_pairs * 2, False,
                                     self.device)
        self.metrics = MetricsLog(self.out, self.world.rank == 0)
        self.audit = AuditLog(self.out, self.world.rank) if config.run.audit else None
        self.bad_steps = 0
        if self.world.rank == 0:
            if len(val_pairs) < self.world.world_size:
                log.warning("only %d validation pairs: no validation (and no accuracy curve) in this run", len(val_pairs))
            write_json(config.to_dict(), self.out / "config.json")
            log.info("%d train pairs (%d without images), %d val pairs, %d ranks, %d steps/epoch, init %s, device %s",
                     len(self.train_pairs), self.train_pairs.missing, len(val_pairs), self.world.world_size,
                     self.steps, init, self.device)
            if self.state is not None:
                log.info("resuming from state.pt at step %d (epoch %d, step %d of it)",
                         self.state["step"], self.state["epoch"], self.state["epoch_step"])

    def load_split(self, split: str, shards: ShardIndex):
        """One split's pairs, resolved against the shards. Under torchrun the first rank of each
        node resolves them and writes the cache while the others wait, then every rank maps it:
        one resolution and one copy in memory per node, not one per rank."""
        path = Path(self.config.data.pairs) / f"{split}.parquet"
        if self.resolving is not None:
            self.resolving.result()  # the caches are written: what follows maps them
        if dist.is_initialized():
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                load_pairs(path, shards)
            dist.barrier()
        return load_pairs(path, shards)

    def train_step(self, batch) -> tuple[float, torch.Tensor, torch.Tensor]:
        """Forward over the batch's unique images, loss on score differences, backward, update."""
        device = self.device
        with autocast(self.config, device):
            s_hi, s_lo = pair_scores(self.model, batch.images, batch.hi_idx.to(device), batch.lo_idx.to(device))
        loss = pair_loss(s_hi, s_lo, batch.swap.to(device))
        # Every rank must take the same branch, or DDP's all-reduce would hang: agree on finiteness.
        finite = all_sum([float(torch.isfinite(loss))], device)[0] == self.world.world_size
        self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            self.bad_steps += 1
            log.warning("non-finite loss on some rank, step skipped (%d so far)", self.bad_steps)
            if self.bad_steps > self.config.run.max_bad_steps:
                raise FloatingPointError(f"{self.bad_steps} non-finite losses; stopping (lower the learning rate?)")
            return 0.0, s_hi.detach(), s_lo.detach()
        loss.backward()
        self.optimizer.step()
        # The CPU waits for the GPU here: float() synchronises, once per step, for the metrics.
        return float(loss.detach()), s_hi.detach(), s_lo.detach()

    def is_done(self, step: int) -> bool:
        return self.config.run.max_steps is not None and step >= self.config.run.max_steps

    def fit(self) -> dict:
        """Run the remaining epochs; validate, log and checkpoint as configured; return final metrics."""
        run = self.config.run
        step, start_epoch, start_local = resume_position(self.state, self.world, self.steps)
        startup = True
        total = self.steps * run.epochs if run.max_steps is None else min(run.max_steps, self.steps * run.epochs)
        bar = progress(total=total, initial=step, desc="train", unit="step") if self.world.rank == 0 else None
        window, last = StepWindow(), {}
        for epoch in range(start_epoch, run.epochs):
            if self.is_done(step):
                break
            t_wait = time.perf_counter()
            for epoch_step, batch in self.loader.iterate(epoch, start_local if epoch == start_epoch else 0):
                t_start = time.perf_counter()
                if startup:  # the first batch of this process is ready: start-up ends here
                    self.metrics.write(step, **{"time/startup": process_age()})
                    startup = False
                loss, s_hi, s_lo = self.train_step(batch)
                step += 1
                window.add(loss, s_hi, s_lo, batch.images.shape[0], t_start - t_wait, time.perf_counter() - t_wait)
                if self.audit:
                    self.audit.step(epoch, step, batch.pair_ids)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}")
                if step % run.log_every == 0:
                    self.metrics.write(step, epoch=epoch, **window.metrics(self.world, self.device),
                                       **{"lr/backbone": self.optimizer.param_groups[0]["lr"],
                                          "data/bad_images": len(self.loader.bad_keys)})
                    window = StepWindow()
                last_of_epoch = epoch_step + 1 == self.steps
                if step % run.val_every == 0 or self.is_done(step) or (last_of_epoch and epoch + 1 == run.epochs):
                    last = self.validate(step, epoch)
                if last_of_epoch:
                    self.scheduler.step()  # × lr_decay once an epoch, before the epoch's checkpoint records it
                if step % run.ckpt_every == 0 or self.is_done(step) or last_of_epoch:
                    position = (epoch + 1, 0) if last_of_epoch else (epoch, epoch_step + 1)
                    checkpoint(self.raw_model, self.optimizer, self.scheduler, self.config, self.world, step,
                               *position, self.steps, (len(self.train_pairs), self.data_fingerprint))
                if self.is_done(step):
                    break
                t_wait = time.perf_counter()
        if bar is not None:
            bar.close()
        return self.finish(step, last)

    def validate(self, step: int, epoch: int) -> dict:
        result = validate(self.raw_model, self.val_loader, self.config, self.device)
        self.metrics.write(step, epoch=epoch, **result)
        if self.world.rank == 0 and result:
            log.info("step %d: val accuracy %.3f over %d pairs", step, result["acc/val"], result["pairs/val"])
        return result

    def finish(self, step: int, last: dict) -> dict:
        if self.audit:
            self.audit.final(step, self.raw_model)
        if self.world.rank == 0:
            write_curve(self.out)
        result = {"step": step, "rank": self.world.rank, "world_size": self.world.world_size, **last}
        if dist.is_initialized():
            dist.destroy_process_group()
        return result


def train(config: TrainConfig, resolving: Future | None = None) -> dict:
    """Train the pair ranker as configured (resuming from RUN/state.pt if present); return final
    metrics. `resolving`: the pair caches being written in the background (shards.locate)."""
    return Trainer(config, resolving).fit()
