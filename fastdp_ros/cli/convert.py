"""`fastdp convert MODEL --to edm --out MODEL2`: a DDPM Diffusion Policy as an EDM one, no training.

The EDM model keeps the network and its weights and reads them through VP preconditioning
(D(x; sigma) = x - sigma eps(x / sqrt(sigma^2 + 1), t(sigma))), so its probability-flow ODE is
the DDPM model's own. Consistency distillation (`fastdp distill --policy consistency`) and
RAGDP's VE variant take it as their EDM teacher.
"""

from __future__ import annotations

import argparse
import logging

from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)

TARGETS = ("edm",)


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="write a DDPM Diffusion Policy as an EDM one (VP preconditioning, no training)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="DDPM Diffusion Policy model directory (epsilon prediction)")
    p.add_argument("--to", required=True, help=f"one of: {', '.join(TARGETS)}")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--steps", type=int, default=18, help="Karras levels of the stored default Heun sampler")
    p.add_argument("--sigma-max", type=float, default=None,
                   help="highest noise level, where sampling and consistency distillation start "
                        "(None: the source's, 80)")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.to not in TARGETS:
        raise ConfigError(f"`fastdp convert` writes {', '.join(TARGETS)} models; got --to {args.to!r}")
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    from fastdp_ros.policies.dp import convert_to_edm

    out = convert_to_edm(args.model, args.out, steps=args.steps, sigma_max=args.sigma_max)
    log.info("wrote %s: %s as an EDM model (VP preconditioning, Heun over %d levels)", out, args.model, args.steps)
    return 0
