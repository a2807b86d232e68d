"""`fastdp bench MODEL... --backend torch,onnxruntime --out DIR`: latency, re-plan rate, memory.

Writes DIR/bench.json, DIR/bench.md (a Markdown table) and DIR/bench.png. Engines are built
(or reused) as `fastdp export` does. --eval adds success rates from `fastdp eval --out`
reports, matched to the models by path, and a latency-vs-success plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from pathlib import Path

from fastdp_ros.cli.export import add_engine_options, engine_options
from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _loads(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="act() latency / re-plan rate / memory of models x backends: JSON, Markdown, PNG",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", nargs="+",
                   help="model directories, each optionally with its own load options after '#' "
                        "(models/push_dp#sampler=ddim,steps=10); the first one's torch row is the baseline (teacher)")
    p.add_argument("--backend", type=_names, default=["torch", "onnxruntime"],
                   help="comma-separated backends: torch, torch_compile, onnxruntime, tensorrt")
    p.add_argument("--calls", type=int, default=200, help="timed act() calls per model and backend")
    p.add_argument("--warmup", type=int, default=20, help="untimed act() calls first")
    p.add_argument("--out", required=True, help="folder for bench.json, bench.md, bench.png")
    p.add_argument("--eval", nargs="*", default=[], help="`fastdp eval --out` reports to take success rates from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--load", type=_loads, default=[0], metavar="N[,N...]",
                   help="run every row beside N busy competing processes (one core's worth each), once per N: "
                        "0,2 measures quiet and loaded p99")
    p.add_argument("--in-process", action="store_true",
                   help="run every row in this process instead of a fresh one per row (faster start; an "
                        "engine export in the process slows the eager rows after it)")
    add_engine_options(p)
    p.set_defaults(run=run)


def read_eval_reports(paths: list[str]) -> dict[tuple[str, int], dict]:
    """{(resolved model path, NFE): {success_rate, success_ci95, mean_return, mode_coverage}} from
    evaluation reports (the NFE tells a teacher's DDPM-100 report from its DDIM-10 one)."""
    summaries = {}
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
            model, nfe = report["extra"]["model"], int(report["nfe"])
            summary = {"success_rate": float(report["success_rate"]),
                       "success_ci95": [float(x) for x in report["success_ci95"]],
                       "mean_return": float(report["mean_return"]),
                       "mode_coverage": dict(report.get("mode_coverage") or {})}
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{path} is not a `fastdp eval` report ({type(e).__name__}: {e})") from None
        summaries[(str(Path(model).resolve()), nfe)] = summary
    return summaries


def command_line(args) -> str:
    """The command that reproduces this run (recorded in the reports)."""
    argv = ["fastdp", "bench", *args.models, "--backend", ",".join(args.backend), "--calls", str(args.calls),
            "--warmup", str(args.warmup), "--out", args.out]
    for flag in ("device", "precision", "provider", "threads", "sampler", "steps", "seed"):
        value = getattr(args, flag)
        if value is not None and not (flag == "device" and value == "cpu") and not (flag == "seed" and value == 0):
            argv += [f"--{flag}", str(value)]
    if args.load != [0]:
        argv += ["--load", ",".join(str(n) for n in args.load)]
    if args.in_process:
        argv += ["--in-process"]
    if args.eval:
        argv += ["--eval", *args.eval]
    return shlex.join(argv)


def run(args) -> int:
    import torch

    from fastdp_ros.engines import BACKENDS
    from fastdp_ros.engines.bench import run_bench
    from fastdp_ros.engines.report import write_reports
    from fastdp_ros.hardware import configure_threads

    unknown = [b for b in args.backend if b not in BACKENDS]
    if unknown or not args.backend:
        raise ConfigError(f"unknown backend(s) {unknown}; known backends: {', '.join(BACKENDS)}")
    if args.calls < 1 or args.warmup < 0:
        raise ConfigError(f"--calls must be >= 1 and --warmup >= 0, got {args.calls} and {args.warmup}")
    if not args.load or any(n < 0 for n in args.load):
        raise ConfigError(f"--load takes numbers of busy processes >= 0 (e.g. 0,2), got {args.load}")
    if args.calls < 200:
        log.warning("p99 from %d calls is noisy; use --calls 200 or more for numbers to report", args.calls)
    evaluations = read_eval_reports(args.eval)
    # the same intra-op threads for every backend, so the comparison is between engines, not thread counts
    previous = torch.get_num_threads()
    threads = configure_threads(args.threads)
    try:
        options = {**engine_options(args, ""), "threads": threads}
        per_backend = {"onnxruntime": {"provider": args.provider}} if args.provider else None
        report = run_bench(args.models, args.backend, calls=args.calls, warmup=args.warmup, seed=args.seed,
                           eval_reports=evaluations, backend_options=per_backend,
                           isolate=not args.in_process, loads=tuple(args.load), **options)
    finally:
        torch.set_num_threads(previous)
    report["command"] = command_line(args)
    paths = write_reports(report, args.out)
    for row in report["rows"]:
        if row["error"]:
            log.warning("%s / %s: not run: %s", row["name"], row["backend"], row["error"])
        else:
            lat = row["latency_ms"]
            log.info("%s / %s%s: p50 %.2f ms, p99 %.2f ms (%.0f Hz), %.2fx", row["name"], row["description"],
                     f" (load {row['load']})" if row["load"] else "", lat["p50"], lat["p99"], row["replan_hz"],
                     row["speedup"])
    for c in report.get("contention", []):
        log.info("%s / %s: p99 %.2f ms beside %d busy process(es), %.2fx the quiet %.2f ms", c["name"], c["backend"],
                 c["p99_ms"], c["load"], c["p99_ratio"], c["quiet_p99_ms"])
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    if all(row["error"] for row in report["rows"]):
        raise ConfigError("no model/backend pair could be run: " + "; ".join(
            f"{r['name']}/{r['backend']}: {r['error']}" for r in report["rows"]))
    return 0
