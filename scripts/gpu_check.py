"""The GPU path checked on a CUDA machine: engines of the shipped models, faiss on the GPU, bf16 training.

    bash scripts/gpu_check.sh OUT                 # on the GPU machine (installs what it can, then this)
    python scripts/gpu_check.py --device cpu --out /tmp/gpu_dry --calls 5 --train-steps 3 \
        --faiss-sizes 1000 --models test-made-model      # dry run of every section on a CPU

Sections, each recorded even when it fails (its error in the report, the next one still runs):
- environment: the GPU (nvidia-smi line), driver, CUDA, torch, and which optional GPU libraries
  import (torch-tensorrt, tensorrt, onnxruntime providers, faiss GPUs);
- engines: every model x variant through `fastdp_ros.engines` (eager CUDA, CUDA graph,
  torch.compile, ONNX Runtime CUDA and TensorRT providers, TensorRT fp16/fp32): parity with
  eager on fixed inputs, act() p50/p90/p99, build time, engine size, GPU memory
  (OUT/engines/bench.json, .md, .png);
- faiss: the index the RAGDP and ALT lookups use, at 10k and 1M rows, CPU against GPU: same
  neighbours, single-query latency;
- train: a short training of the push-sized teacher network on a small synthetic dataset, bf16
  autocast against fp32 on the device, then the trained model's act() there.
OUT/gpu_check.json holds every section; OUT/bench.md is the summary to read first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fastdp_ros.engines.base import gpu_driver_version  # noqa: E402
from fastdp_ros.engines.bench import bench_one, host_info, latency_summary, parse_model_entry  # noqa: E402
from fastdp_ros.engines.report import write_reports  # noqa: E402

log = logging.getLogger("gpu_check")

SHIPPED_MODELS = [
    "models/push_onedp",
    "models/push_consistency",
    "models/push_consistency#steps=3",
    "models/push_dp#sampler=ddim,steps=10",
    "models/push_dp#sampler=ddpm",
    "models/push_alt",
]
#: (label, backend, precision, backend options)
VARIANTS = [
    ("eager CUDA", "torch", None, {"cuda_graph": False}),
    ("CUDA graph", "torch", None, {"cuda_graph": True}),
    ("torch.compile", "torch_compile", None, {}),
    ("ORT CUDA EP", "onnxruntime", "fp32", {"provider": "cuda"}),
    ("ORT TensorRT EP fp16", "onnxruntime", "fp16", {"provider": "tensorrt"}),
    ("TensorRT fp16", "tensorrt", "fp16", {}),
    ("TensorRT fp32", "tensorrt", "fp32", {}),
]


def run_section(report: dict, name: str, fn, *args, **kwargs) -> None:
    """fn(*args) into report[name]; an exception is recorded there and the check goes on."""
    t0 = time.perf_counter()
    log.info("== %s", name)
    try:
        report[name] = fn(*args, **kwargs)
    except Exception as e:  # a section that breaks must not cost the device run its other sections
        log.error("%s failed: %s", name, e)
        error = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        # a section run in two passes keeps the first pass's results
        report[name + "_error" if name in report else name] = error
    seconds = report.setdefault("seconds", {})
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 1)


# --- environment -------------------------------------------------------------------------------

def _command(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _version_or_error(module: str) -> str:
    try:
        mod = __import__(module)
    except Exception as e:  # ImportError, or a library that fails to load its shared objects
        return f"not importable: {type(e).__name__}: {e}"
    return str(getattr(mod, "__version__", "?"))


def environment(device: str) -> dict:
    env = {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "nvidia_smi": _command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                                "--format=csv,noheader"]),
        "nvidia_smi_L": _command(["nvidia-smi", "-L"]),
        "torch_tensorrt": _version_or_error("torch_tensorrt"),
        "tensorrt": _version_or_error("tensorrt"),
        "onnxruntime": _version_or_error("onnxruntime"),
        "faiss": _version_or_error("faiss"),
    }
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["capability"] = "sm%d%d" % torch.cuda.get_device_capability(0)
        env["driver"] = gpu_driver_version()
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:
        pass
    try:
        import faiss

        env["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except Exception:
        pass
    return env


# --- engines -----------------------------------------------------------------------------------

def engines(report: dict, out: Path, models: list[str], variants: list[tuple], device: str, calls: int,
            slow_calls: int, warmup: int, compile_models: set[str]) -> dict:
    """Bench every model x variant into report["engines"] (rows appended: the compile pass runs
    last, so a long compile cannot cost the other sections), saving the report after every row."""
    section = report.get("engines")
    if not isinstance(section, dict) or "rows" not in section:
        section = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "host": host_info(device),
                   "calls": calls, "warmup": warmup, "rows_isolated": False,
                   "baseline": "each model's eager CUDA row", "target_hz": 60.0, "rows": [],
                   "command": report["command"]}
        report["engines"] = section
    rows = section["rows"]
    for entry in models:
        path, model_options = parse_model_entry(entry)
        for label, backend, precision, options in variants:
            if backend == "torch_compile" and entry not in compile_models:
                continue
            # eager multi-step loops are launch-bound (~4 ms a U-Net step on the H200's host): 1000 calls
            # of DDPM-100 would spend minutes of the session's device time on the slowest row
            slow = options.get("cuda_graph") is False and (model_options.get("sampler") == "ddpm"
                                                           or model_options.get("steps", 1) >= 10)
            n = slow_calls if slow else calls
            log.info("%s / %s: %d calls", entry, label, n)
            t0 = time.perf_counter()
            (row,) = bench_one(path, backend, calls=n, warmup=min(warmup, 5) if slow else warmup, device=device,
                               precision=precision, backend_options=options or None, **model_options)
            row.name = Path(path).name + (" (" + ", ".join(f"{k}={v}" for k, v in model_options.items()) + ")"
                                          if model_options else "")
            row.backend = label
            result = row.to_dict()
            result["wall_seconds"] = round(time.perf_counter() - t0, 2)
            if row.error:
                log.warning("  not run: %s", row.error)
            else:
                log.info("  p50 %.3f ms, p99 %.3f ms, parity %.2g", row.latency_ms["p50"], row.latency_ms["p99"],
                         row.parity_max_abs_diff if row.parity_max_abs_diff is not None else float("nan"))
            rows.append(result)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            ok = [r for r in rows if not r["error"]]
            for r in ok:  # speedup against the same model's eager CUDA row
                base = next((b for b in ok if b["name"] == r["name"] and b["backend"] == "eager CUDA"), None)
                r["speedup"] = None if base is None else base["latency_ms"]["p50"] / r["latency_ms"]["p50"]
            write_reports(section, out / "engines")
            save(report, out)
    return section


# --- faiss -------------------------------------------------------------------------------------

def faiss_lookups(sizes: list[int], dims: list[int], queries: int, k: int) -> dict:
    """The retrieval index on CPU and (when faiss has CUDA) GPU on the same random embeddings."""
    from fastdp_ros.retrieval.index import EmbeddingIndex, IndexConfig, import_faiss

    faiss = import_faiss()
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    results = {"faiss": getattr(faiss, "__version__", "?"), "gpus_seen_by_faiss": gpus, "cases": []}
    rng = np.random.default_rng(0)
    for n in sizes:
        for dim in dims:
            x = rng.standard_normal((n, dim)).astype(np.float32)
            q = x[rng.integers(0, n, queries)] + 0.05 * rng.standard_normal((queries, dim)).astype(np.float32)
            table = {"episode": np.arange(n) // 100, "frame": np.arange(n) % 100}
            case = {"rows": n, "dim": dim, "queries": queries, "k": k}
            found = {}
            for mode in ("off", "auto"):
                if mode == "auto" and gpus < 1:
                    case["gpu"] = "faiss here has no CUDA support or sees no GPU (faiss-gpu not installed)"
                    continue
                t0 = time.perf_counter()
                index = EmbeddingIndex.build(x, table, model_hash="random", dataset_fingerprint="random",
                                             config=IndexConfig(kind="flat", metric="l2", encoding="float32",
                                                                gpu=mode))
                index.search(q[:1], k)  # moves the index to the GPU on first use
                build_s = time.perf_counter() - t0
                samples = []
                for row in q:
                    t1 = time.perf_counter()
                    index.search(row, k)
                    samples.append(time.perf_counter() - t1)
                t1 = time.perf_counter()
                found[mode] = index.search(q, k)
                batch_s = time.perf_counter() - t1
                case["cpu" if mode == "off" else "gpu"] = {
                    "build_seconds": round(build_s, 3), "single_query_ms": latency_summary(samples),
                    "batch_ms": round(batch_s * 1e3, 3)}
            if "auto" in found:
                a, b = found["off"], found["auto"]
                case["same_neighbours"] = float(np.mean(a.ids == b.ids))
                case["max_score_diff"] = float(np.abs(a.scores - b.scores).max())
            log.info("faiss %d x %d: single-query p50 ms %s", n, dim,
                     {m: case[m]["single_query_ms"]["p50"] for m in ("cpu", "gpu") if isinstance(case.get(m), dict)})
            results["cases"].append(case)
    return results


# --- training ----------------------------------------------------------------------------------

def synthetic_push_dataset(path: Path, episodes: int, length: int, size: int) -> Path:
    """Episodes in the push dataset's layout (two cameras, joints, gripper): actions follow the
    image's colour, so the loss can only fall if the network reads the cameras."""
    from fastdp_ros.data import ReplayBuffer

    rng = np.random.default_rng(1)
    buf = ReplayBuffer.create(path, attrs={"task": "push", "dt": 0.1, "robot": "panda"})
    for e in range(episodes):
        direction = rng.choice([-1.0, 1.0])
        joints = (direction * np.linspace(0, 0.5, length)[:, None] * np.ones((1, 7))).astype(np.float32)
        colour = np.zeros((length, size, size, 3), np.uint8)
        colour[..., 0 if direction > 0 else 2] = 200
        buf.add_episode({
            "img_front": colour + rng.integers(0, 20, colour.shape, dtype=np.uint8),
            "img_wrist": colour[:, ::-1] + rng.integers(0, 20, colour.shape, dtype=np.uint8),
            "joint_pos": joints, "gripper": np.full((length, 1), 0.04, np.float32),
            "action": np.concatenate([joints + 0.05 * direction, np.full((length, 1), 0.04, np.float32)], 1),
        }, episode_seed=e, episode_success=True)
    return path


def train_precisions(device: str, steps: int, batch: int, image_size: int, down_dims: str) -> dict:
    from fastdp_ros.cli.main import main as fastdp
    from fastdp_ros.policies import load_policy

    results = {"device": device, "steps": steps, "batch_size": batch, "image_size": image_size,
               "down_dims": down_dims, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_push_dataset(Path(tmp) / "data", episodes=8, length=40, size=image_size)
        for precision in ("fp32", "bf16"):
            out = Path(tmp) / f"teacher_{precision}"
            argv = ["train", "--policy", "dp", "--dataset", str(data), "--out", str(out), "--steps", str(steps),
                    "--batch-size", str(batch), "--lr", "3e-4", "--device", device, "--precision", precision,
                    "--down-dims", down_dims, "--val-every", str(10**6), "--ckpt-every", str(10**6)]
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            code = fastdp(argv)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            run = {"exit_code": code, "seconds": round(seconds, 2), "command": "fastdp " + " ".join(argv)}
            log_csv = out / "train_log.csv"
            if log_csv.is_file():
                lines = log_csv.read_text().strip().splitlines()
                header = lines[0].split(",")
                rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
                losses = [float(r["loss"]) for r in rows if r.get("loss")]
                run["first_loss"], run["last_loss"] = (losses[0], losses[-1]) if losses else (None, None)
                run["logged_rows"] = len(rows)
            config = json.loads((out / "config.json").read_text())
            run["provenance_precision"] = json.dumps(config.get("provenance", {}).get("training", {}))[:300]
            policy = load_policy(out, device=device)
            obs = {k: v[:2] for k, v in buf_first_frames(data).items()}
            chunk = policy.act(obs)
            run["act_finite"] = bool(np.isfinite(chunk).all())
            run["act_shape"] = list(chunk.shape)
            results["runs"][precision] = run
            log.info("train %s: %.1f s for %d steps, loss %s -> %s", precision, seconds, steps,
                     run.get("first_loss"), run.get("last_loss"))
    fp32, bf16 = results["runs"]["fp32"]["seconds"], results["runs"]["bf16"]["seconds"]
    results["bf16_speedup"] = round(fp32 / bf16, 3) if bf16 else None
    return results


def buf_first_frames(path: Path) -> dict:
    from fastdp_ros.data import ReplayBuffer

    episode = ReplayBuffer.open(path).get_episode(0)
    return {k: episode[k] for k in ("img_front", "img_wrist", "joint_pos", "gripper")}


# --- summary -----------------------------------------------------------------------------------

def summary(report: dict) -> str:
    env = report.get("environment", {})
    lines = ["# GPU check", "", f"`{report['command']}`", "",
             f"{report['created']} · nvidia-smi: `{env.get('nvidia_smi')}` · torch {env.get('torch')} "
             f"(CUDA {env.get('torch_cuda')}) · driver {env.get('driver')}", "",
             "Optional GPU libraries: " + ", ".join(f"{k} {env.get(k)}" for k in
                                                    ("torch_tensorrt", "tensorrt", "onnxruntime", "faiss")), ""]
    eng = report.get("engines", {})
    if "rows" in eng:
        lines += ["## Engines (act(): observation in, action chunk out)", "",
                  "| model | variant | NFE | calls | p50 ms | p90 ms | p99 ms | vs eager | parity max Δ | "
                  "build s | engine MB | GPU peak MB |", "|" + "---|" * 12]
        for r in eng["rows"]:
            if r["error"]:
                lines.append(f"| {r['name']} | {r['backend']} | not run: {r['error'][:160]} |" + " |" * 9)
                continue
            lat = r["latency_ms"]
            lines.append("| " + " | ".join([
                r["name"], r["backend"], str(r["nfe"]), str(r["calls"]), f"{lat['p50']:.3f}", f"{lat['p90']:.3f}",
                f"{lat['p99']:.3f}", "–" if r.get("speedup") is None else f"{r['speedup']:.1f}x",
                "–" if r["parity_max_abs_diff"] is None else f"{r['parity_max_abs_diff']:.1e}",
                "–" if r["build_seconds"] is None else f"{r['build_seconds']:.1f}",
                "–" if r["engine_bytes"] is None else f"{r['engine_bytes'] / 1e6:.1f}",
                "–" if r["gpu_peak_mb"] is None else f"{r['gpu_peak_mb']:.0f}"]) + " |")
        lines.append("")
    else:
        lines += ["## Engines", "", f"failed: {eng['error']}" if eng else "not run", ""]
    fa = report.get("faiss", {})
    lines += ["## faiss lookups (flat L2, k=8: the retrieval index of RAGDP and ALT)", ""]
    if "cases" in fa:
        lines += ["| rows | dim | CPU 1-query p50 / p99 ms | GPU 1-query p50 / p99 ms | same neighbours |",
                  "|---|---|---|---|---|"]
        for c in fa["cases"]:
            def lat(m):
                s = c.get(m)
                return f"{s['single_query_ms']['p50']:.3f} / {s['single_query_ms']['p99']:.3f}" if isinstance(
                    s, dict) else (s or "–")
            lines.append(f"| {c['rows']} | {c['dim']} | {lat('cpu')} | {lat('gpu')} | "
                         f"{c.get('same_neighbours', '–')} |")
    else:
        lines.append(f"failed: {fa['error']}" if fa else "not run")
    tr = report.get("train", {})
    lines += ["", "## Training (push-sized teacher network, synthetic data)", ""]
    if "runs" in tr:
        for p, r in tr["runs"].items():
            lines.append(f"- {p}: {r['seconds']} s for {tr['steps']} steps at batch {tr['batch_size']}, "
                         f"loss {r.get('first_loss')} -> {r.get('last_loss')}, act() finite: {r.get('act_finite')}")
        lines.append(f"- bf16 speed-up over fp32: {tr.get('bf16_speedup')}x")
    else:
        lines.append(f"failed: {tr['error']}" if tr else "not run")
    if report.get("kept"):
        kept = report["kept"]
        lines += ["", f"Sections {', '.join(kept['sections'])} are from an earlier run ({kept['created']}: "
                  f"`{kept['from']}`)."]
    lines += ["", "Section times (s): " + json.dumps(report.get("seconds", {}))]
    return "\n".join(lines) + "\n"


def save(report: dict, out: Path) -> None:
    """gpu_check.json and bench.md as they stand: a run cut short keeps what it measured."""
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "bench.md").write_text(summary(report))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_check.json, bench.md and engines/")
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="*", default=SHIPPED_MODELS, help="model entries as `fastdp bench` takes them")
    p.add_argument("--compile-models", nargs="*", default=["models/push_onedp", "models/push_alt"],
                   help="entries also run through torch.compile (its compile time is minutes for long loops)")
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--slow-calls", type=int, default=100,
                   help="calls for the eager rows of 10 or more steps (DDIM-10, DDPM-100)")
    p.add_argument("--keep", default=None, metavar="GPU_CHECK_JSON",
                   help="an earlier run's gpu_check.json whose sections this run does not measure are kept")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--faiss-sizes", type=int, nargs="*", default=[10_000, 1_000_000])
    p.add_argument("--faiss-dims", type=int, nargs="*", default=[24, 256],
                   help="24: ALT's embedding; 256: of the order of RAGDP's observation embedding")
    p.add_argument("--faiss-queries", type=int, default=500)
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--train-image-size", type=int, default=96)
    p.add_argument("--train-down-dims", default="64,128,256")
    p.add_argument("--sections", default="environment,engines,faiss,train")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # model entries are relative to the repository
    sections = set(args.sections.split(","))
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": "python scripts/gpu_check.py "
              + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.keep:
        earlier = json.loads(Path(args.keep).read_text())
        report["kept"] = {"from": earlier.get("command"), "created": earlier.get("created"), "sections": []}
        for name in ("faiss", "train"):
            if name not in sections and name in earlier:
                report[name] = earlier[name]
                report["kept"]["sections"].append(name)
    run_section(report, "environment", environment, args.device)
    save(report, out)
    engine_args = (report, out, args.models)
    engine_opts = (args.device, args.calls, args.slow_calls, args.warmup, set(args.compile_models))
    compiled = [v for v in VARIANTS if v[1] == "torch_compile"]
    if "engines" in sections:
        run_section(report, "engines", engines, *engine_args, [v for v in VARIANTS if v not in compiled],
                    *engine_opts)
        save(report, out)
    if "faiss" in sections:
        run_section(report, "faiss", faiss_lookups, args.faiss_sizes, args.faiss_dims, args.faiss_queries, 8)
        save(report, out)
    if "train" in sections:
        run_section(report, "train", train_precisions, args.device, args.train_steps, args.train_batch,
                    args.train_image_size, args.train_down_dims)
        save(report, out)
    if "engines" in sections and args.compile_models:  # last: a compile can take minutes
        run_section(report, "engines", engines, *engine_args, compiled, *engine_opts)
        save(report, out)
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
