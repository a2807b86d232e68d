"""`fastdp train --policy NAME`: train a registered policy on a dataset into a model directory.

The policies a dataset can train are those registered with a `train` builder; each one's
options are flags generated from its configuration dataclass (`--policy NAME --help`).
"""

from __future__ import annotations

import argparse
import logging

from fastdp_ros.cli.options import add_threads_argument
from fastdp_ros.cli.policy_options import (
    add_foreign_flags,
    add_policy_argument,
    builder_for,
    config_from_args,
    log_summary,
)

log = logging.getLogger(__name__)

#: fields of a policy's config the training settings' flags fill (not flags of their own)
SHARED_FIELDS = {"batch_size", "lr", "warmup_steps"}


def _keys(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_precision_argument(p) -> None:
    """`--precision` and `--threads`, shared by `fastdp train` and `fastdp distill` (TrainSettings)."""
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: bfloat16 autocast of the forward pass (weights stay fp32); ~1.5x faster "
                        "on CPUs with AMX / AVX512-BF16 and on recent GPUs. Without such hardware bf16 is "
                        "emulated and slower: the run falls back to fp32 with a warning (recorded in the "
                        "model's provenance)")
    add_threads_argument(p, "training")


def settings_options(args) -> dict:
    """The TrainSettings fields the machine decides: threads set now, the precision that runs here."""
    from fastdp_ros.hardware import configure_threads, resolve_precision

    configure_threads(args.threads, role="training")
    return {"precision": resolve_precision(args.precision, args.device)}


def warmup_steps(args) -> int:
    """--warmup-steps, shortened to a tenth of a run too short for it (else the run ends mid-warm-up)."""
    steps = min(args.warmup_steps, max(1, args.steps // 10))
    if steps < args.warmup_steps:
        log.info("warm-up shortened from %d to %d steps (a tenth of --steps %d)", args.warmup_steps, steps, args.steps)
    return steps


def add_training_arguments(p, steps: int, val_every: int, ckpt_every: int) -> None:
    """The flags of a training run (TrainSettings) that `train` and `distill` share."""
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="windows per optimizer step")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization, the split and the batches")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--val-every", type=int, default=val_every, help="steps between validation losses")
    p.add_argument("--ckpt-every", type=int, default=ckpt_every, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--half", action="store_true", help="store fp16 weights (smaller model files)")
    add_precision_argument(p)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a policy on a dataset (`--policy NAME --help`: its flags)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_policy_argument(p, "train", getattr(sub, "fastdp_argv", None), skip=SHARED_FIELDS)
    p.add_argument("--dataset", required=True, help="zarr dataset (fastdp collect, fastdp import)")
    add_training_arguments(p, steps=20000, val_every=1000, ckpt_every=2000)
    p.add_argument("--lr", type=float, default=1e-4,
                   help="peak learning rate (AdamW): linear warm-up to it, then cosine decay to 0 at --steps")
    p.add_argument("--warmup-steps", type=int, default=500,
                   help="linear warm-up steps, at most a tenth of --steps")
    p.add_argument("--max-episodes", type=int, default=None, help="use only the first N episodes")
    g = p.add_argument_group("observation and action layout")
    g.add_argument("--image-keys", type=_keys, default=("img_front", "img_wrist"),
                   help="comma-separated camera keys; empty ('') for a low-dimensional policy")
    g.add_argument("--lowdim-keys", type=_keys, default=("joint_pos", "gripper"),
                   help="comma-separated low-dimensional keys (add object_state for a state-based policy)")
    g.add_argument("--horizon", type=int, default=16, help="actions predicted per chunk")
    g.add_argument("--n-obs-steps", type=int, default=2, help="observation frames per query")
    g.add_argument("--n-action-steps", type=int, default=8, help="actions executed per chunk")
    add_foreign_flags(p, "train", skip=SHARED_FIELDS)
    p.set_defaults(run=run)


def run(args) -> int:
    from fastdp_ros.data.check import require_dataset
    from fastdp_ros.policies.base import BuildRequest
    from fastdp_ros.policies.training import TrainSettings

    entry, build = builder_for("train", args.policy)
    shared = {"batch_size": args.batch_size, "lr": args.lr, "warmup_steps": args.warmup_steps}
    config = config_from_args(entry.config, args, shared) if entry.config is not None else None
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=warmup_steps(args),
                             val_every=args.val_every, ckpt_every=args.ckpt_every, seed=args.seed,
                             device=args.device, num_workers=args.num_workers, **settings_options(args))
    # every problem of the dataset in one line, before any work (data/check.py)
    require_dataset(args.dataset, keys=(*args.image_keys, *args.lowdim_keys))
    request = BuildRequest(
        verb="train", config=config, out=args.out, dataset=args.dataset, settings=settings,
        image_keys=args.image_keys, lowdim_keys=args.lowdim_keys, horizon=args.horizon,
        n_obs_steps=args.n_obs_steps, n_action_steps=args.n_action_steps, max_episodes=args.max_episodes,
        resume=args.resume, half=args.half, device=args.device,
    )
    log_summary("trained", args.policy, args.out, build(request))
    return 0
