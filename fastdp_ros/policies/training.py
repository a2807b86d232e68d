"""The training loop every trainable policy shares.

AdamW, linear warm-up then cosine decay, EMA of the weights, gradient clipping, periodic
validation loss, checkpoints (safetensors + JSON, never pickle) and resume, a progress bar,
a CSV log, a seed, and optional bfloat16 autocast (mixed precision: the weights, the optimizer
and the EMA stay float32). Started under `torchrun`, it trains with DistributedDataParallel (one
process per GPU, or gloo on CPU); only rank 0 logs and writes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fastdp_ros.errors import ConfigError, ModelFileError
from fastdp_ros.nn import EMAModel

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainSettings:
    steps: int = 20000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.95, 0.999)
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema: bool = True
    ema_power: float = 0.75
    ema_max: float = 0.9999
    val_every: int = 1000
    ckpt_every: int = 2000
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 (autocast of the forward pass; no loss scaling needed)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


PRECISIONS = ("fp32", "bf16")


def autocast(settings: TrainSettings):
    """The forward pass's autocast context: bfloat16 on CPU (AMX / AVX512-BF16 kernels) or CUDA
    for `bf16`, a no-op for `fp32`. bfloat16 has float32's exponent range, so the gradients need
    no scaling."""
    device_type = torch.device(settings.device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=settings.precision == "bf16")


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    first_loss: float
    val_loss: float | None
    seconds: float

    def summary(self) -> dict:
        """What a builder returns for `fastdp train | distill` to log (cli/policy_options.log_summary)."""
        return {"steps": self.steps, "seconds": self.seconds, "first_loss": self.first_loss,
                "final_loss": self.final_loss, "val_loss": self.val_loss}


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return f


def _dist_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _infinite(loader: DataLoader, sampler):
    epoch = 0
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _to(batch, device):
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in state["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, model: nn.Module, ema: EMAModel | None, opt, step: int, extra: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    tmp = folder / "train_state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / "train_state.safetensors")
    (folder / "train_state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, **extra}, indent=1))


def load_checkpoint(folder: Path, model: nn.Module, ema: EMAModel | None, opt) -> dict:
    try:
        meta = json.loads((folder / "train_state.json").read_text())
        tensors = load_file(str(folder / "train_state.safetensors"))
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ModelFileError(f"cannot resume from {folder}: {e}") from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    _load_optimizer(opt, tensors, meta["optimizer"])
    return meta


@torch.no_grad()
def validation_loss(loss_fn, model: nn.Module, dataset: Dataset, settings: TrainSettings,
                    max_batches: int = 20) -> float:
    """Mean loss over up to `max_batches` batches with a fixed seed (comparable across calls)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(12345)
    losses = []
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        with autocast(settings):
            losses.append(float(loss_fn(model, _to(batch, settings.device))))
    torch.random.set_rng_state(state)
    model.train(was_training)
    return float(np.mean(losses)) if losses else float("nan")


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor],
    train_set: Dataset,
    val_set: Dataset | None,
    settings: TrainSettings,
    out: str | os.PathLike,
    save_model: Callable[[nn.Module, int], None],
    resume: bool = False,
    params: list[nn.Parameter] | None = None,
) -> TrainResult:
    """Train `model` by minimizing loss_fn(model, batch); calls save_model(ema_or_model, step)
    at every checkpoint and at the end (rank 0 only). Returns the loss trajectory summary."""
    out = Path(out)
    rank, local_rank, world = _dist_info()
    distributed = world > 1
    device = torch.device(settings.device)
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    settings.device = str(device)
    torch.manual_seed(settings.seed + rank)
    np.random.seed(settings.seed + rank)
    if len(train_set) == 0:
        raise ConfigError("the training set has no windows (episodes too short for the horizon?)")

    model.to(device).train()
    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    opt = torch.optim.AdamW(params if params is not None else model.parameters(), lr=settings.lr,
                            betas=settings.betas, weight_decay=settings.weight_decay)
    ema = EMAModel(model, power=settings.ema_power, max_value=settings.ema_max) if settings.ema else None
    start = 0
    ckpt = out / CHECKPOINT_DIR
    if resume and (ckpt / "train_state.json").exists():
        start = int(load_checkpoint(ckpt, model, ema, opt)["step"])
        log.info("resumed from %s at step %d", ckpt, start)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(settings.warmup_steps, settings.steps),
                                              last_epoch=start - 1 if start else -1)
    if start:
        for g, base in zip(opt.param_groups, sched.base_lrs):
            g["lr"] = base * lr_lambda(settings.warmup_steps, settings.steps)(start)

    sampler = torch.utils.data.DistributedSampler(train_set, seed=settings.seed) if distributed else None
    loader = DataLoader(train_set, batch_size=settings.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=settings.num_workers, drop_last=len(train_set) >= settings.batch_size,
                        persistent_workers=settings.num_workers > 0)
    batches = _infinite(loader, sampler)

    main = rank == 0
    log_file = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        new_log = not (resume and (out / "train_log.csv").exists())
        log_file = open(out / "train_log.csv", "a" if not new_log else "w", newline="")
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(["step", "loss", "lr", "val_loss", "seconds"])
    t0 = time.perf_counter()
    first_loss = final_loss = float("nan")
    val = None
    running: list[float] = []
    bar = tqdm(range(start, settings.steps), desc="train", unit="step", disable=not main, initial=start,
               total=settings.steps)
    try:
        for step in bar:
            batch = _to(next(batches), device)
            with autocast(settings):
                loss = loss_fn(net, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {float(loss)} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            lr_used = opt.param_groups[0]["lr"]  # this step's; the scheduler then sets the next one's
            sched.step()
            if ema is not None:
                ema.step(model)
            value = float(loss.detach())
            running.append(value)
            if step == start:
                first_loss = value
            done = step + 1
            if main and (done % 50 == 0 or done == settings.steps):
                final_loss = float(np.mean(running[-50:]))
                bar.set_postfix(loss=f"{final_loss:.4f}", lr=f"{lr_used:.2e}")
                val_now = None
                if val_set is not None and (done % settings.val_every == 0 or done == settings.steps):
                    val_now = val = validation_loss(loss_fn, _eval_model(model, ema), val_set, settings)
                    log.info("step %d: train loss %.4f, validation loss %.4f", done, final_loss, val)
                writer.writerow([done, f"{final_loss:.6f}", f"{lr_used:.3e}",
                                 "" if val_now is None else f"{val_now:.6f}", f"{time.perf_counter() - t0:.1f}"])
                log_file.flush()
            if main and (done % settings.ckpt_every == 0 or done == settings.steps):
                save_checkpoint(ckpt, model, ema, opt, done, {"settings": jsonable(asdict(settings))})
                save_model(_eval_model(model, ema), done)
        if distributed:  # every rank says what it did: a rank that never stepped would stall the others
            log.info("rank %d of %d: %d optimizer steps", rank, world, len(running))
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    if running:
        final_loss = float(np.mean(running[-50:]))
    return TrainResult(steps=settings.steps, final_loss=final_loss, first_loss=first_loss, val_loss=val,
                       seconds=time.perf_counter() - t0)


def _eval_model(model: nn.Module, ema: EMAModel | None) -> nn.Module:
    return ema.averaged_model if ema is not None else model


def jsonable(d):
    """A JSON-safe copy (tuples to lists, unknown objects to strings)."""
    return json.loads(json.dumps(d, default=str))
