"""The training loop: one process per device, DDP when launched by torchrun, nothing else changed.

The same code runs on one CPU, one GPU, or many nodes: `torchrun` sets RANK/WORLD_SIZE and the
loop joins the process group (gloo on CPU, NCCL on GPU). Every rank runs the same number of
steps (see train.data.rank_batches), so epochs end together and DDP never hangs.
"""
from __future__ import annotations

import logging
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from shards.locate import ShardIndex
from shards.schema import write_json
from train.checkpoint import initialise, load_state, save_model, save_state
from train.config import TrainConfig
from train.data import PairLoader, World, load_pairs, steps_per_epoch
from train.metrics import MetricsLog, write_curve
from train.model import build_model, head_parameters, pair_loss, pair_scores

log = logging.getLogger("iipa.train")


def setup_distributed() -> tuple[World, torch.device]:
    """Join torchrun's process group if there is one; pick this rank's device."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return World(), torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    world = World(rank=dist.get_rank(), world_size=dist.get_world_size(), node=int(os.environ.get("GROUP_RANK", 0)))
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
    optimizer = torch.optim.Adam(groups, weight_decay=config.optim.weight_decay)
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


def checkpoint(model, optimizer, scheduler, config: TrainConfig, world: World, step, epoch, epoch_step, steps):
    """Rank 0 writes model.pth/model.json and state.pt (each atomically); others wait."""
    if world.rank == 0:
        out = Path(config.run.out)
        save_model(model, config, out, step)
        save_state({"model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "step": step, "epoch": epoch, "epoch_step": epoch_step, "steps_per_epoch": steps,
                    "world_size": world.world_size, "config": config.to_dict(),
                    "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}},
                   out)
    if dist.is_initialized():
        dist.barrier()


def train(config: TrainConfig) -> dict:
    """Train the pair ranker as configured; return the final metrics."""
    world, device = setup_distributed()
    out = Path(config.run.out)
    torch.manual_seed(config.run.seed)
    index = ShardIndex(config.data.shards)
    train_pairs = load_pairs(Path(config.data.pairs) / "train.parquet", index)
    val_pairs = load_pairs(Path(config.data.pairs) / "val.parquet", index)
    model = build_model(config.model.arch)
    init = initialise(model, config.model.init)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(model, config)
    state = load_state(out)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    raw_model = model
    if world.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.run.compile:
        model = torch.compile(model)

    steps = steps_per_epoch(len(train_pairs), world.world_size, config.run.batch_pairs)
    step, start_epoch, start_local = resume_position(state, world, steps)
    metrics = MetricsLog(out, world.rank == 0)
    if world.rank == 0:
        write_json(config.to_dict(), out / "config.json")
        log.info("%d train pairs (%d without images), %d val pairs, %d ranks, %d steps/epoch, init %s, device %s",
                 len(train_pairs), train_pairs.missing, len(val_pairs), world.world_size, steps, init, device)
    loader = PairLoader(train_pairs, index, config.data, world, config.run.batch_pairs, True, device, config.run.seed)
    val_loader = PairLoader(val_pairs, index, config.data, world, config.run.batch_pairs * 2, False, device)
    bad_steps, last = 0, {}
    window = {"loss": 0.0, "correct": 0.0, "pairs": 0, "images": 0, "data": 0.0, "total": 0.0, "n": 0}
    done = config.run.max_steps is not None and step >= config.run.max_steps
    for epoch in range(start_epoch, config.run.epochs):
        if done:
            break
        t_wait = time.perf_counter()
        for epoch_step, batch in loader.iterate(epoch, start_local if epoch == start_epoch else 0):
            t_start = time.perf_counter()
            with autocast(config, device):
                s_hi, s_lo = pair_scores(model, batch.images, batch.hi_idx.to(device), batch.lo_idx.to(device))
            loss = pair_loss(s_hi, s_lo, batch.swap.to(device))
            # Every rank must take the same branch, or DDP's all-reduce would hang: agree on finiteness.
            finite = all_sum([float(torch.isfinite(loss))], device)[0] == world.world_size
            optimizer.zero_grad(set_to_none=True)
            if finite:
                loss.backward()
                optimizer.step()
            else:
                bad_steps += 1
                log.warning("step %d: non-finite loss on some rank, step skipped (%d so far)", step, bad_steps)
                if bad_steps > config.run.max_bad_steps:
                    raise FloatingPointError(f"{bad_steps} non-finite losses; stopping (lower the learning rate?)")
            # The CPU waits for the GPU here: .item() synchronises, once per step for the metrics.
            loss_value = float(loss.detach()) if finite else 0.0
            t_end = time.perf_counter()
            step += 1
            window["loss"] += loss_value * len(s_hi)
            window["correct"] += float((s_hi > s_lo).sum())
            window["pairs"] += len(s_hi)
            window["images"] += batch.images.shape[0]
            window["data"] += t_start - t_wait
            window["total"] += t_end - t_wait
            window["n"] += 1
            if step % config.run.log_every == 0:
                loss_sum, correct, pairs = all_sum([window["loss"], window["correct"], window["pairs"]], device)
                metrics.write(step, epoch=epoch, **{
                    "loss/train": loss_sum / pairs, "acc/train": correct / pairs,
                    "time/data": window["data"] / window["n"], "time/step": window["total"] / window["n"],
                    "throughput/pairs_per_s": pairs / window["total"],
                    "throughput/images_per_s": window["images"] * world.world_size / window["total"],
                    "lr/backbone": optimizer.param_groups[0]["lr"]})
                window = dict.fromkeys(window, 0)
            last_of_epoch = epoch_step + 1 == steps
            done = config.run.max_steps is not None and step >= config.run.max_steps
            if step % config.run.val_every == 0 or done or (last_of_epoch and epoch + 1 == config.run.epochs):
                last = validate(raw_model, val_loader, config, device)
                metrics.write(step, epoch=epoch, **last)
                if world.rank == 0 and last:
                    log.info("step %d: val accuracy %.3f over %d pairs", step, last["acc/val"], last["pairs/val"])
            if step % config.run.ckpt_every == 0 or done or last_of_epoch:
                position = (epoch + 1, 0) if last_of_epoch else (epoch, epoch_step + 1)
                if last_of_epoch:
                    scheduler.step()
                checkpoint(raw_model, optimizer, scheduler, config, world, step, *position, steps)
            if done:
                break
            t_wait = time.perf_counter()
    if world.rank == 0:
        write_curve(out)
    result = {"step": step, "rank": world.rank, "world_size": world.world_size, **last}
    if dist.is_initialized():
        dist.destroy_process_group()
    return result
