"""`fastdp index --policy ragdp --teacher M --dataset D --out M2`: a retrieval-accelerated model.

Training-free: embeds every demonstration frame of D with the teacher's encoder into a faiss
index and writes the self-contained RAGDP model directory M2 (config, a copy of the teacher's
weights, index/). The leap ratio, sampler and k are stored defaults; `fastdp eval` and the
policy loader may override them.
"""

from __future__ import annotations

import argparse
import logging

from fastdp_ros.cli.options import add_threads_argument
from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)

INDEXABLE = ("ragdp",)


def add_parser(sub) -> None:
    from fastdp_ros.retrieval.index import ENCODINGS, INDEX_KINDS, METRICS

    p = sub.add_parser("index", help="build a retrieval-accelerated policy (ragdp) from a teacher and a dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--policy", required=True, help=f"one of: {', '.join(INDEXABLE)}")
    p.add_argument("--teacher", required=True,
                   help="model directory to accelerate: a Diffusion Policy (dp), or a consistency / ractd student")
    p.add_argument("--dataset", default=None, help="zarr dataset of demonstrations (None: the teacher's)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--leap", default="1/10",
                   help="fraction of the sampler's steps run after noising the retrieved chunk (1/10, 0.05, 5%%)")
    p.add_argument("--sampler", default=None,
                   help="ddim | ddpm | edm (None: DDIM over every training step for a DDPM teacher, "
                        "the teacher's EDM schedule for an EDM one)")
    p.add_argument("--steps", type=int, default=None, help="length of the sampler's full schedule")
    p.add_argument("--k", type=int, default=1, help="neighbours retrieved")
    p.add_argument("--choice", default="nearest", help="nearest | sample (uniformly among the k nearest)")
    p.add_argument("--index", dest="index_kind", default="flat", help=f"{' | '.join(INDEX_KINDS)}")
    p.add_argument("--metric", default="l2", help=f"{' | '.join(METRICS)}")
    p.add_argument("--encoding", default="float32", help=f"{' | '.join(ENCODINGS)}")
    p.add_argument("--nlist", type=int, default=None, help="IVF cells (None: about 4 sqrt(N))")
    p.add_argument("--nprobe", type=int, default=16, help="IVF cells searched per query")
    p.add_argument("--max-episodes", type=int, default=None, help="index only the first N usable episodes")
    p.add_argument("--batch-size", type=int, default=256, help="frames embedded per batch")
    p.add_argument("--device", default="cpu")
    add_threads_argument(p, "training")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.policy not in INDEXABLE:
        raise ConfigError(f"`fastdp index` builds {', '.join(INDEXABLE)} models; got --policy {args.policy!r} "
                          "(ALT builds its table during `fastdp train --policy alt`)")
    from fastdp_ros.data.check import require_dataset
    from fastdp_ros.hardware import configure_threads
    from fastdp_ros.policies.ragdp import RAGDPConfig, RAGDPPolicy, build_ragdp, parse_leap_ratio
    from fastdp_ros.retrieval import IndexConfig

    if args.dataset is not None:
        require_dataset(args.dataset)
    configure_threads(args.threads, role="training")

    index = IndexConfig(kind=args.index_kind, metric=args.metric, encoding=args.encoding, nlist=args.nlist,
                        nprobe=args.nprobe)
    config = RAGDPConfig(leap_ratio=parse_leap_ratio(args.leap), sampler=args.sampler, steps=args.steps, k=args.k,
                         choice=args.choice, index=index.to_dict())
    out = build_ragdp(args.teacher, args.dataset, args.out, config, max_episodes=args.max_episodes,
                      batch_size=args.batch_size, device=args.device)
    policy = RAGDPPolicy.from_model_dir(out, device=args.device)  # proves the directory loads
    log.info("RAGDP model in %s: %d indexed frames, NFE %d per chunk", out, len(policy.index), policy.nfe)
    return 0
