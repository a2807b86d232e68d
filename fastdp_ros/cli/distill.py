"""`fastdp distill --policy NAME`: turn a Diffusion Policy teacher into a few-step student.

The students are the policies registered with a `distill` builder (onedp, consistency,
ractd, ...); each one's options are flags generated from its configuration dataclass.
"""

from __future__ import annotations

import argparse
import logging

from fastdp_ros.cli.policy_options import (
    add_foreign_flags,
    add_policy_argument,
    builder_for,
    config_from_args,
    log_summary,
)
from fastdp_ros.cli.train import add_training_arguments, settings_options

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("distill", help="distil a Diffusion Policy teacher into a one/few-step policy",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_policy_argument(p, "distill", getattr(sub, "fastdp_argv", None))
    p.add_argument("--teacher", required=True, help="teacher model directory (fastdp train --policy dp)")
    p.add_argument("--dataset", required=True, help="dataset the observations come from (the teacher's)")
    add_training_arguments(p, steps=1000, val_every=500, ckpt_every=500)
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps")
    add_foreign_flags(p, "distill")
    p.set_defaults(run=run)


def run(args) -> int:
    from fastdp_ros.data.check import require_dataset
    from fastdp_ros.policies.base import BuildRequest
    from fastdp_ros.policies.training import TrainSettings

    entry, build = builder_for("distill", args.policy)
    config = config_from_args(entry.config, args) if entry.config is not None else None
    require_dataset(args.dataset)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, warmup_steps=max(1, args.warmup_steps),
                             val_every=args.val_every, ckpt_every=args.ckpt_every, seed=args.seed,
                             device=args.device, num_workers=args.num_workers, **settings_options(args))
    request = BuildRequest(verb="distill", config=config, out=args.out, dataset=args.dataset, teacher=args.teacher,
                           settings=settings, resume=args.resume, half=args.half, device=args.device)
    log_summary("distilled", args.policy, args.out, build(request))
    return 0
