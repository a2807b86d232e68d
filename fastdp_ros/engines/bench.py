"""Latency, re-plan rate and memory of policies x backends: what `fastdp bench` measures.

Each (model, backend) is loaded through load_engine_policy (building or reusing its engine),
warmed up, then act() is timed on a small pool of random observations (validation and
preprocessing included: observation in, action chunk out). Resident memory is the process's
peak during that row: the kernel's high-water mark is reset before each row where Linux allows
it (/proc/self/clear_refs), so a row's peak includes the interpreter and libraries already
loaded but not earlier rows' models, which are released first.

`fastdp bench` runs every row in a fresh process (isolate=True): an engine export earlier in the
same process was measured to slow the eager torch rows after it (1.3x after a DDIM-10 export,
about 2x after the 100-step DDPM one), which inflated every later speedup.

A robot computer is never idle: `loads` times every row also beside N busy competing processes
(pure spinning, one core's worth each), and the report compares each row's p99 with its quiet one
(`contention`). The calls of the different loads alternate in blocks of LOAD_BLOCK within the
row, so that whatever else the machine runs meanwhile weighs on quiet and loaded calls alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import os
import platform
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import fastdp_ros
from fastdp_ros.console import configure_logging, own_level
from fastdp_ros.engines.policy import load_engine_policy
from fastdp_ros.errors import ConfigError, FastDPError
from fastdp_ros.hardware import usable_cpus
from fastdp_ros.policies.spec import PolicySpec

log = logging.getLogger(__name__)

#: the control rate the acceptance criteria name (a chunk per control tick)
TARGET_HZ = 60.0


@dataclass
class BenchRow:
    """One (model, backend) measurement; `error` says why a row has no numbers."""

    model: str
    name: str
    backend: str
    policy_type: str = ""
    description: str = ""
    precision: str = ""
    device: str = ""
    nfe: int | None = None
    parameters: int | None = None
    costs: dict = field(default_factory=dict)  # Policy.cost_report(): what besides NFE it costs
    calls: int = 0
    latency_ms: dict = field(default_factory=dict)
    replan_hz: float | None = None  # 1000 / p99: the rate met by 99% of calls
    replan_hz_p50: float | None = None
    speedup: float | None = None  # baseline p50 / this p50
    peak_rss_mb: float | None = None
    rss_increase_mb: float | None = None  # peak during the row minus resident memory before loading
    gpu_peak_mb: float | None = None  # torch allocator peak (CUDA only)
    gpu_used_increase_mb: float | None = None  # device memory in use after the row minus before (all libraries)
    load_seconds: float | None = None
    build_seconds: float | None = None  # export/compile time when this row built the engine
    engine_bytes: int | None = None  # the cached engine file (None: the backend persists none)
    engine_built: bool | None = None
    parity_max_abs_diff: float | None = None
    parity_tolerance: float | None = None
    # from an evaluation report of this model, when given (`fastdp eval --out`)
    success_rate: float | None = None
    success_ci95: list[float] | None = None
    mean_return: float | None = None
    mode_coverage: dict | None = None  # successful episodes per expert mode, where the task has modes
    # on the front of (p99 lower, success / mean return higher) among the rows of its backend and load
    pareto_success: bool | None = None
    pareto_return: bool | None = None
    load: int = 0  # busy competing processes running during the row
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# --- memory ------------------------------------------------------------------------------------

def _status_mb(field_name: str) -> float | None:
    """A kB field of /proc/self/status (VmRSS, VmHWM) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the process's resident high-water mark (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def current_rss_mb() -> float | None:
    return _status_mb("VmRSS")


# --- observations --------------------------------------------------------------------------------

def random_observations(spec: PolicySpec, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """n observations of the spec's shapes: random uint8 images, small random low-dim vectors."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        obs = {}
        for key in spec.obs_keys:
            shape = (spec.n_obs_steps, *spec.obs_shape(key))
            if key in spec.image_keys:
                obs[key] = rng.integers(0, 256, shape, dtype=np.uint8)
            else:
                obs[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        out.append(obs)
    return out


# --- measurement ------------------------------------------------------------------------------

def latency_summary(samples_s: list[float]) -> dict:
    """p50/p90/p99/mean/max in milliseconds, the fields `fastdp eval` reports for act() latency.

    (runtime.evaluate has the same summary; engines sit below runtime and cannot import it.)
    """
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "max": float(ms.max()),
            "count": int(ms.size)}


#: act() calls per block when quiet and loaded calls alternate
LOAD_BLOCK = 10


def bench_one(model_dir: str | os.PathLike, backend: str, calls: int = 200, warmup: int = 20, seed: int = 0,
              loads: tuple[int, ...] = (0,), **load_options) -> list[BenchRow]:
    """Load `model_dir` with `backend` and time `calls` act() steps after `warmup` steps, for each
    number of busy competing processes in `loads` (one row each; the calls of the loads
    alternate in blocks of LOAD_BLOCK)."""
    row = BenchRow(model=str(model_dir), name=Path(model_dir).name, backend=backend, calls=calls)
    on_gpu = torch.device(load_options.get("device", "cpu")).type == "cuda" and torch.cuda.is_available()
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        gpu_free0, _ = torch.cuda.mem_get_info()
    if not reset_peak_rss():
        log.debug("cannot reset the resident high-water mark: peak_rss_mb is the process's peak so far")
    rss0 = current_rss_mb()
    try:
        policy = load_engine_policy(model_dir, backend, seed=seed, **load_options)
    except FastDPError as e:
        row.error = str(e)
        log.warning("%s with %s: %s", model_dir, backend, e)
        return [dataclasses.replace(row, load=n) for n in loads]
    observations = random_observations(policy.spec, 16, seed)
    for i in range(warmup):
        policy.act(observations[i % len(observations)])
    samples = {n: [] for n in loads}
    # a policy that queries its model on some calls only (LWD: one in K) has a p99 of its cheap
    # calls: the calls that queried are timed apart
    query_samples = {n: [] for n in loads}
    with CompetingLoad(max(loads)) as competing:
        done = 0
        while done < calls:
            block = min(LOAD_BLOCK, calls - done)
            for n in loads:
                competing.set(n)
                for i in range(done, done + block):
                    obs = observations[i % len(observations)]
                    queries = policy.queries
                    t0 = time.perf_counter()
                    policy.act(obs)
                    samples[n].append(time.perf_counter() - t0)
                    if policy.queries != queries:
                        query_samples[n].append(samples[n][-1])
            done += block
    info = policy.info
    row.policy_type, row.description = policy.policy_type, info.description
    row.precision, row.device = info.precision, info.device
    row.nfe, row.parameters = int(policy.nfe), policy.parameter_count
    row.costs = dict(policy.cost_report())
    row.peak_rss_mb = peak_rss_mb()
    row.rss_increase_mb = None if rss0 is None else row.peak_rss_mb - rss0
    if on_gpu:
        torch.cuda.synchronize()
        row.gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        row.gpu_used_increase_mb = (gpu_free0 - torch.cuda.mem_get_info()[0]) / 2**20
    row.load_seconds, row.engine_built = info.load_seconds, info.built
    row.build_seconds = info.build_seconds
    if info.engine_path and Path(info.engine_path).is_file():
        row.engine_bytes = Path(info.engine_path).stat().st_size
    row.parity_max_abs_diff, row.parity_tolerance = info.parity_max_abs_diff, info.parity_tolerance
    del policy
    gc.collect()
    rows = []
    for n in loads:
        lat = latency_summary(samples[n])
        costs = dict(row.costs)
        if 0 < len(query_samples[n]) < len(samples[n]):
            costs.update(timed_queries=len(query_samples[n]),
                         query_p99_ms=round(latency_summary(query_samples[n])["p99"], 2))
        rows.append(dataclasses.replace(row, load=n, latency_ms=lat, replan_hz=1000.0 / lat["p99"],
                                        replan_hz_p50=1000.0 / lat["p50"], costs=costs))
    return rows


def _bench_one_isolated(model_dir: str, backend: str, log_level: int, threads: int | None,
                        kwargs: dict) -> list[BenchRow]:
    """bench_one in a fresh (spawned) process, with the parent's torch threads and log level."""
    if not logging.getLogger().handlers:
        configure_logging(log_level)
    if threads:
        torch.set_num_threads(threads)
    return bench_one(model_dir, backend, **kwargs)


def bench_row(model_dir: str, backend: str, isolate: bool, **kwargs) -> list[BenchRow]:
    """One row per load, in this process or (isolate) in a fresh one that exits when they are done."""
    if not isolate:
        return bench_one(model_dir, backend, **kwargs)
    from concurrent.futures import ProcessPoolExecutor

    level = own_level()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_bench_one_isolated, str(model_dir), backend, level, torch.get_num_threads(),
                           kwargs).result()


def _busy_loop(started, running) -> None:
    """A competing process: spins on one core while `running` is set, sleeps otherwise."""
    started.set()
    while True:
        running.wait()
        for _ in range(20000):  # about a millisecond of pure spinning between checks
            pass


class CompetingLoad:
    """Up to n busy processes that can be switched on and off quickly (`set(k)`: k of them spin).

    Switching within a row lets quiet and loaded calls alternate in blocks, so that whatever
    else the machine does at the time falls on both alike.
    """

    def __init__(self, n: int):
        if n < 0:
            raise ConfigError(f"load must be >= 0 busy processes, got {n}")
        ctx = multiprocessing.get_context("spawn")
        self.running = [ctx.Event() for _ in range(n)]
        self.procs = []
        started = []
        for running in self.running:
            ready = ctx.Event()
            proc = ctx.Process(target=_busy_loop, args=(ready, running), daemon=True)
            proc.start()
            self.procs.append(proc)
            started.append(ready)
        for ready in started:
            ready.wait(timeout=60)

    def set(self, k: int) -> None:
        """k processes spin, the others sleep."""
        if not 0 <= k <= len(self.running):
            raise ConfigError(f"load {k} needs {k} busy processes; {len(self.running)} were started")
        for i, running in enumerate(self.running):
            running.set() if i < k else running.clear()
        time.sleep(0.005)  # the stopped ones finish their current spin

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def competing_load(n: int):
    """n busy processes spinning for the duration of the block (n = 0: none)."""
    with CompetingLoad(n) as load:
        load.set(n)
        yield load


def contention_summary(rows: list[BenchRow]) -> list[dict]:
    """Each loaded row's p99 against the same model and backend's quiet (load 0) p99."""
    quiet = {(r.name, r.backend): r for r in rows if r.load == 0 and r.error is None}
    out = []
    for r in rows:
        base = quiet.get((r.name, r.backend))
        if r.load == 0 or r.error is not None or base is None:
            continue
        out.append({"name": r.name, "backend": r.backend, "load": r.load, "p99_ms": r.latency_ms["p99"],
                    "quiet_p99_ms": base.latency_ms["p99"],
                    "p99_ratio": r.latency_ms["p99"] / base.latency_ms["p99"]})
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (cost, value) points: True where no other point costs no more and is worth no less,
    with one of the two strictly better."""
    return [not any(c2 <= c and v2 >= v and (c2 < c or v2 > v) for c2, v2 in points) for c, v in points]


def mark_pareto_fronts(rows: list[BenchRow]) -> None:
    """Set pareto_success / pareto_return on the evaluated rows: p99 against success rate and
    against mean return, compared within one backend and load (an engine is not a policy)."""
    groups: dict[tuple[str, int], list[BenchRow]] = {}
    for r in rows:
        if r.error is None and r.success_rate is not None:
            groups.setdefault((r.backend, r.load), []).append(r)
    for group in groups.values():
        p99 = [r.latency_ms["p99"] for r in group]
        for r, front in zip(group, pareto_front(list(zip(p99, [r.success_rate for r in group])))):
            r.pareto_success = front
        if all(r.mean_return is not None for r in group):
            for r, front in zip(group, pareto_front(list(zip(p99, [r.mean_return for r in group])))):
                r.pareto_return = front


def parse_model_entry(entry: str) -> tuple[str, dict]:
    """'path#sampler=ddim,steps=10' -> ('path', {'sampler': 'ddim', 'steps': 10}): one model
    directory benched with its own load options (a teacher with DDPM-100 and with DDIM-10)."""
    path, _, text = str(entry).partition("#")
    options = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(f"bad model options {text!r} in {entry!r}: expected key=value[,key=value]")
        value = value.strip()
        options[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
    return path, options


def run_bench(models: list[str], backends: list[str], calls: int = 200, warmup: int = 20, seed: int = 0,
              eval_reports: dict[tuple[str, int], dict] | None = None, backend_options: dict[str, dict] | None = None,
              isolate: bool = False, loads: tuple[int, ...] = (0,), **load_options) -> dict:
    """Every model x backend (x load); speedups against the first model's torch row (the teacher)
    at the same load.

    isolate runs each row in a fresh process (see the module docstring); the CLI does. loads:
    numbers of busy competing processes to run every row beside (0: a quiet machine).

    eval_reports maps (model directory (resolved path), NFE) to its evaluation summary
    (success_rate, success_ci95, mean_return, mode_coverage); backend_options
    maps a backend name to its backend-specific options (onnxruntime: provider).
    Returns the report written as bench.json.
    """
    loads = tuple(dict.fromkeys(loads)) or (0,)
    rows = []
    for entry in models:
        model, model_options = parse_model_entry(entry)
        for backend in backends:
            log.info("bench %s with %s%s", entry, backend,
                     f" (loads {', '.join(map(str, loads))} alternating)" if loads != (0,) else "")
            options = {**load_options, **model_options}
            if backend_options and backend in backend_options:
                options["backend_options"] = backend_options[backend]
            for row in bench_row(model, backend, isolate, calls=calls, warmup=warmup, seed=seed, loads=loads,
                                 **options):
                if model_options:
                    row.name += " (" + ", ".join(f"{k}={v}" for k, v in model_options.items()) + ")"
                rows.append(row)
    rows.sort(key=lambda r: loads.index(r.load))  # stable: per load, in the order benched
    first = parse_model_entry(models[0])[0] if models else None
    baselines = {}
    for load in loads:
        ok = [r for r in rows if r.error is None and r.load == load]
        baseline = next((r for r in ok if r.model == first and r.backend == "torch"), ok[0] if ok else None)
        baselines[load] = baseline
        for r in ok:
            r.speedup = baseline.latency_ms["p50"] / r.latency_ms["p50"]
    for r in rows:
        evaluation = (eval_reports or {}).get((str(Path(r.model).resolve()), r.nfe)) or {}
        r.success_rate = evaluation.get("success_rate")
        r.success_ci95 = evaluation.get("success_ci95")
        r.mean_return = evaluation.get("mean_return")
        r.mode_coverage = evaluation.get("mode_coverage") or None
    mark_pareto_fronts(rows)
    baseline = baselines.get(loads[0]) if loads else None
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": host_info(load_options.get("device", "cpu")),
        "calls": calls,
        "warmup": warmup,
        "options": {k: v for k, v in load_options.items() if isinstance(v, (str, int, float, bool, type(None)))},
        "rows_isolated": isolate,
        "baseline": None if baseline is None else f"{baseline.name}/{baseline.backend}",
        "target_hz": TARGET_HZ,
        "loads": list(loads),
        "rows": [r.to_dict() for r in rows],
    }
    if any(loads):
        report["load_block_calls"] = LOAD_BLOCK
        report["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        report["contention"] = contention_summary(rows)
    return report


def host_info(device: str = "cpu") -> dict:
    """The machine the numbers come from, including how busy it was when the bench started."""
    info = {
        "fastdp_ros": fastdp_ros.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
