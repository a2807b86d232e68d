"""`fastdp export MODEL --backend B`: build (or verify) a model's engine in its engine cache."""

from __future__ import annotations

import argparse
import logging

from fastdp_ros.cli.options import add_threads_argument

log = logging.getLogger(__name__)


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `fastdp export` and `fastdp bench`."""
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--precision", default=None, help="fp32 | fp16 (default: the backend's; tensorrt: fp16)")
    p.add_argument("--provider", default=None,
                   help="onnxruntime execution provider: cpu | cuda | tensorrt (default: from --device)")
    add_threads_argument(p)
    p.add_argument("--sampler", default=None, help="dp: ddpm | ddim | edm (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (ddim / edm)")
    p.add_argument("--cache-dir", default=None, help="engine cache folder (default: MODEL/engines)")
    p.add_argument("--parity-tol", type=float, default=None,
                   help="parity tolerance vs eager, relative to max(1, max|action|) (default: 1e-3 fp32, 5e-2 fp16)")


def engine_options(args, backend: str) -> dict:
    """load_engine_policy keyword arguments from the shared options."""
    options = {"device": args.device, "precision": args.precision, "threads": args.threads,
               "cache_dir": args.cache_dir, "parity_tol": args.parity_tol}
    if args.provider is not None and backend == "onnxruntime":
        options["backend_options"] = {"provider": args.provider}
    if args.sampler is not None:
        options["sampler"] = args.sampler
    if args.steps is not None:
        options["steps"] = args.steps
    return options


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export/compile a model's act() step for a backend, checked against eager",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="model directory")
    p.add_argument("--backend", default="onnxruntime", help="torch | torch_compile | onnxruntime | tensorrt")
    add_engine_options(p)
    p.add_argument("--rebuild", action="store_true", help="build even when a cached engine matches")
    p.set_defaults(run=run)


def run(args) -> int:
    from fastdp_ros.engines import load_engine_policy
    from fastdp_ros.hardware import configure_threads

    args.threads = configure_threads(args.threads)
    policy = load_engine_policy(args.model, args.backend, rebuild=args.rebuild, warmup=1,
                                **engine_options(args, args.backend))
    info = policy.info
    if info.engine_path is None:
        log.info("backend %s runs %s eagerly (%s): nothing to export (NFE %d)", info.backend, args.model,
                 info.description, policy.nfe)
        return 0
    action = f"built in {info.build_seconds:.1f} s" if info.built else "reused from the cache (checked)"
    log.info("%s engine of %s %s: %s", info.description, args.model, action, info.engine_path)
    log.info("parity: max |engine - eager| = %.3g (tolerance %.3g); NFE %d; load %.2f s",
             info.parity_max_abs_diff, info.parity_tolerance, policy.nfe, info.load_seconds)
    return 0
