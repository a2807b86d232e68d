"""`fastdp distill --policy onedp|consistency|ractd`: turn a teacher into a few-step student."""

from __future__ import annotations

import argparse
import logging

from fastdp_ros.cli.train import add_precision_argument, settings_options
from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)

DISTILLERS = ("onedp", "consistency", "ractd")


def add_parser(sub) -> None:
    p = sub.add_parser("distill", help="distil a Diffusion Policy teacher into a one/few-step policy",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--policy", required=True, help=f"one of: {', '.join(DISTILLERS)}")
    p.add_argument("--teacher", required=True, help="teacher model directory (fastdp train --policy dp)")
    p.add_argument("--dataset", required=True, help="dataset the observations come from (the teacher's)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="windows per optimizer step")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization and the batches")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--half", action="store_true", help="store fp16 weights")
    add_precision_argument(p)
    o = p.add_argument_group("OneDP")
    o.add_argument("--variant", default="s",
                   help="s: stochastic generator + score network | d: deterministic (learns far faster from a "
                        "nearly deterministic teacher, such as the shipped push teacher: models/README.md)")
    o.add_argument("--generator-lr", type=float, default=1e-6)
    o.add_argument("--score-lr", type=float, default=2e-5)
    o.add_argument("--t-init", type=int, default=65, help="fixed step the generator reads the network at")
    c = p.add_argument_group("Consistency Policy and RACTD (EDM teacher)")
    c.add_argument("--lr", type=float, default=1e-4, help="student learning rate")
    c.add_argument("--bins", type=int, default=80, help="Karras levels of the teacher's ODE")
    c.add_argument("--dsm-weight", type=float, default=1.0, help="weight of the denoising auxiliary loss")
    c.add_argument("--inference-steps", type=int, default=1, help="chained steps stored as the default (1 or 3)")
    c.add_argument("--reward-weight", type=float, default=0.7, help="RACTD: weight of -R(first action)")
    c.add_argument("--reward-steps", type=int, default=1000, help="RACTD: reward model fitting steps")
    c.add_argument("--reward-dataset", nargs="+", default=None, metavar="D",
                   help="RACTD: fit the reward model on these datasets instead of --dataset (same observations; "
                        "mixed-quality data, e.g. `fastdp collect --action-noise` or rollouts of a policy from "
                        "`fastdp collect --policy M`, together with the demonstrations)")
    c.add_argument("--reward-discount", type=float, default=0.0,
                   help="RACTD: 0 fits the reward model to the next reward; a discount in (0, 1) to the "
                        "discounted sum of the rewards that follow in the episode")
    p.set_defaults(run=run)


def run(args) -> int:
    from fastdp_ros.policies.training import TrainSettings

    if args.policy not in DISTILLERS:
        raise ConfigError(f"`fastdp distill` knows {', '.join(DISTILLERS)}; got --policy {args.policy!r}")
    from fastdp_ros.data.check import require_dataset

    for dataset in (args.dataset, *(args.reward_dataset or ())):
        require_dataset(dataset)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, warmup_steps=max(1, args.warmup_steps),
                             val_every=args.val_every, ckpt_every=args.ckpt_every, seed=args.seed,
                             device=args.device, num_workers=args.num_workers, **settings_options(args))
    if args.policy == "onedp":
        from fastdp_ros.policies.onedp import OneDPConfig, distill_onedp

        config = OneDPConfig(variant=args.variant, t_init=args.t_init, generator_lr=args.generator_lr,
                             score_lr=args.score_lr)
        result = distill_onedp(args.teacher, args.dataset, args.out, config, settings, resume=args.resume,
                               half=args.half)
    else:
        from fastdp_ros.policies.consistency import ConsistencyConfig, distill_consistency

        config = ConsistencyConfig(bins=args.bins, dsm_weight=args.dsm_weight, inference_steps=args.inference_steps,
                                   lr=args.lr, reward_weight=args.reward_weight if args.policy == "ractd" else 0.0)
        if args.policy == "consistency":
            result = distill_consistency(args.teacher, args.dataset, args.out, config, settings,
                                         resume=args.resume, half=args.half)
        else:
            from fastdp_ros.policies.ractd import distill_ractd

            result = distill_ractd(args.teacher, args.dataset, args.out, config, settings,
                                   reward_steps=args.reward_steps, resume=args.resume, half=args.half,
                                   reward_datasets=args.reward_dataset, reward_discount=args.reward_discount)
    log.info("distilled %d steps in %.0f s: loss %.4f -> %.4f; model in %s", result.steps, result.seconds,
             result.first_loss, result.final_loss, args.out)
    return 0
