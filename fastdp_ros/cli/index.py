"""`fastdp index --policy NAME --teacher M --dataset D --out M2`: a retrieval-accelerated model.

Training-free: the policies registered with an `index` builder (ragdp) embed the
demonstration frames of D with the teacher's encoder into a faiss index and write a
self-contained model directory M2. Each one's options are flags generated from its
configuration dataclass (`--policy NAME --help`).
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


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="build a retrieval-accelerated policy (ragdp) from a teacher and a dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_policy_argument(p, "index", getattr(sub, "fastdp_argv", None))
    p.add_argument("--teacher", required=True,
                   help="model directory to accelerate: a Diffusion Policy (dp), or a consistency / ractd student")
    p.add_argument("--dataset", default=None, help="zarr dataset of demonstrations (None: the teacher's)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--max-episodes", type=int, default=None, help="index only the first N usable episodes")
    p.add_argument("--batch-size", type=int, default=256, help="frames embedded per batch")
    p.add_argument("--device", default="cpu")
    add_threads_argument(p, "training")
    add_foreign_flags(p, "index")
    p.set_defaults(run=run)


def run(args) -> int:
    from fastdp_ros.data.check import require_dataset
    from fastdp_ros.hardware import configure_threads
    from fastdp_ros.policies.base import BuildRequest
    from fastdp_ros.policies.training import TrainSettings

    entry, build = builder_for("index", args.policy)
    config = config_from_args(entry.config, args) if entry.config is not None else None
    if args.dataset is not None:
        require_dataset(args.dataset)
    configure_threads(args.threads, role="training")
    # the index builders read batch_size (frames embedded per batch) from the settings
    settings = TrainSettings(steps=1, batch_size=args.batch_size, device=args.device)
    request = BuildRequest(verb="index", config=config, out=args.out, dataset=args.dataset, teacher=args.teacher,
                           settings=settings, max_episodes=args.max_episodes, device=args.device)
    log_summary("indexed", args.policy, args.out, build(request))
    return 0
