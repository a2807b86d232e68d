"""EnginePolicy: a policy whose act() runs through a backend; load_engine_policy builds or reuses it.

Loading: the eager policy is loaded (it provides spec, encode and the ExportGraph), the
engine is taken from the cache when its key matches and it passes its checks, else built;
then it is warmed up. On a build the engine's output on the graph's example inputs is
compared with eager execution (parity): a difference above the tolerance is an error. On a
cached load the same output is compared with the eager reference stored at build time, which
also catches an engine that loads but computes something else.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fastdp_ros.engines.backends import make_backend
from fastdp_ros.engines.base import Backend, Runner, example_arrays
from fastdp_ros.engines.cache import CacheEntry, CorruptEngine, cache_root, key_digest
from fastdp_ros.errors import ConfigError, FastDPError, ModelFileError
from fastdp_ros.policies import Policy, load_policy, model_hash
from fastdp_ros.policies.base import ExportGraph

log = logging.getLogger(__name__)

#: parity tolerance per precision, on max|engine - eager| relative to max(1, max|eager|)
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}
ON_CORRUPT = ("rebuild", "error")


class EngineParityError(FastDPError):
    """A built engine whose output differs from eager execution by more than the tolerance."""


@dataclass
class EngineInfo:
    """How an EnginePolicy's engine came to be (reported by `fastdp export` and `fastdp bench`)."""

    backend: str
    description: str
    precision: str
    device: str
    built: bool  # exported/compiled in this load (False: reused from the cache)
    engine_path: str | None
    parity_max_abs_diff: float | None
    parity_tolerance: float | None
    build_seconds: float | None
    load_seconds: float
    cache_key: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parity_tolerance(reference: np.ndarray, tol: float) -> float:
    """The absolute tolerance for a reference output: tol, scaled up by outputs larger than 1."""
    return float(tol * max(1.0, float(np.abs(reference).max())))


def eager_output(graph: ExportGraph) -> np.ndarray:
    with torch.inference_mode():
        return graph.module(*graph.example_inputs).float().cpu().numpy()


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


class EnginePolicy(Policy):
    """The Policy interface over a backend runner; encode() stays with the eager policy.

    act() draws the graph's noise inputs from a CPU torch generator seeded with `seed`, in the
    order the eager policy draws them, so on the CPU it returns the eager policy's actions
    (within the parity tolerance) for the same seed.
    """

    def __init__(self, base: Policy, graph: ExportGraph | None, runner: Runner | None, info: EngineInfo,
                 seed: int = 0):
        super().__init__(base.spec)
        self.policy_type = base.policy_type
        self.base = base
        self.graph = graph
        self.runner = runner
        self.info = info
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def nfe(self) -> int:
        return self.base.nfe

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike, **options) -> "EnginePolicy":
        return load_engine_policy(path, **options)

    @property
    def parameter_count(self) -> int:
        """Parameters of the policy's networks (counted once when shared)."""
        modules = [m for m in vars(self.base).values() if isinstance(m, torch.nn.Module)]
        if self.graph is not None:
            modules.append(self.graph.module)
        seen = {id(p): p.numel() for m in modules for p in m.parameters()}
        return int(sum(seen.values()))

    def export_graph(self) -> ExportGraph:
        return self.base.export_graph()

    def _encode(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.base._encode(obs)

    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.runner is None:  # a policy without an export graph, run eagerly
            return self.base._act(obs)
        return self.base.act_through(obs, self._run_graph)

    def _run_graph(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        inputs = [obs[k][None] for k in self.graph.obs_keys]
        inputs += [torch.randn(shape, generator=self.generator).numpy() for shape in self.graph.noise_shapes.values()]
        out = self.runner(inputs)[0]
        return out if self.graph.finish is None else self.graph.finish(out)

    def reset(self) -> None:
        self.base.reset()

    @property
    def queries(self) -> int:
        # the base counts its own queries when act() is more than one query (it overrides `queries`)
        own = type(self.base).queries is not Policy.queries
        return self.base.queries if own else self.act_calls

    def cost_report(self) -> dict:
        return self.base.cost_report()


def load_engine_policy(model_dir: str | os.PathLike, backend: str = "torch", *, device: str = "cpu",
                       precision: str | None = None, threads: int | None = None, seed: int = 0,
                       cache_dir: str | os.PathLike | None = None, rebuild: bool = False,
                       on_corrupt: str = "rebuild", parity_tol: float | None = None, warmup: int = 3,
                       backend_options: dict | None = None, **policy_options) -> EnginePolicy:
    """Load a model directory as a Policy whose act() runs through `backend`.

    Args:
        backend: torch | torch_compile | onnxruntime | tensorrt.
        device: cpu | cuda | cuda:N (tensorrt needs cuda; onnxruntime picks its provider from it).
        precision: fp32 | fp16 (default: the backend's; fp16 for tensorrt).
        threads: intra-op threads of onnxruntime (default: half the usable CPUs, 1 to 4); torch
            backends use torch's global setting (torch.set_num_threads).
        seed: seed of the sampling noise (also given to the policy, whose own act() runs when
            it has no export graph).
        cache_dir: engine cache folder (default: <model>/engines).
        rebuild: build even when a cached engine matches.
        on_corrupt: "rebuild" a cached engine that fails its checks, or raise ModelFileError ("error").
        parity_tol: tolerance of the build-time parity check (default by precision, see
            DEFAULT_TOLERANCE); relative to max(1, max |eager output|).
        warmup: act() steps run on the example inputs after loading.
        backend_options: backend-specific options (onnxruntime: provider; torch: cuda_graph;
            torch_compile: compile_mode).
        policy_options: passed to the policy's from_model_dir (sampler, steps, ...).
    """
    if on_corrupt not in ON_CORRUPT:
        raise ConfigError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
    if parity_tol is not None and not parity_tol > 0:
        raise ConfigError(f"parity_tol must be > 0, got {parity_tol}")
    t0 = time.perf_counter()
    be = make_backend(backend, device=device, precision=precision, threads=threads, **(backend_options or {}))
    base = load_policy(model_dir, device=be.torch_device, seed=seed, **policy_options)
    try:
        graph = base.export_graph()
    except ConfigError:
        if be.name != "torch":
            raise
        log.info("%s has no export graph; backend torch runs its own act()", model_dir)
        info = EngineInfo(be.name, be.describe(), be.precision, be.device, False, None, None, None, None,
                          time.perf_counter() - t0)
        return EnginePolicy(base, None, None, info, seed=seed)
    tol = parity_tol if parity_tol is not None else DEFAULT_TOLERANCE[be.precision]
    runner, info = _prepare_engine(Path(model_dir), base, graph, be, cache_dir, rebuild, on_corrupt, tol, t0)
    example = example_arrays(graph)
    for _ in range(warmup):
        runner(example)
    info.load_seconds = time.perf_counter() - t0
    return EnginePolicy(base, graph, runner, info, seed=seed)


def _prepare_engine(model_dir: Path, base: Policy, graph: ExportGraph, be: Backend, cache_dir, rebuild: bool,
                    on_corrupt: str, tol: float, t0: float) -> tuple[Runner, EngineInfo]:
    example = example_arrays(graph)

    def info(built: bool, path, diff, abs_tol, build_s, key=None) -> EngineInfo:
        return EngineInfo(be.name, be.describe(), be.precision, be.device, built, path, diff, abs_tol, build_s,
                          time.perf_counter() - t0, key)

    if be.engine_file is None:  # nothing to persist (eager torch)
        t1 = time.perf_counter()
        runner = be.build(graph, None)
        if be.is_eager:  # the reference itself: nothing to compare
            return runner, info(True, None, None, None, time.perf_counter() - t1)
        reference = eager_output(graph)
        abs_tol = parity_tolerance(reference, tol)
        diff = _check_parity(runner, example, reference, abs_tol, be, model_dir)
        return runner, info(True, None, diff, abs_tol, time.perf_counter() - t1)

    mhash = model_hash(model_dir)
    key = {"model_hash": mhash, "policy_type": base.policy_type, **be.cache_tag(), "graph": graph.signature,
           "versions": be.versions()}
    entry = CacheEntry.for_key(cache_root(model_dir, mhash, cache_dir), key, be.engine_file)
    with entry.lock():
        return _cached_or_built(model_dir, graph, be, entry, example, rebuild, on_corrupt, tol, info)


def _cached_or_built(model_dir: Path, graph: ExportGraph, be: Backend, entry: CacheEntry, example: list[np.ndarray],
                     rebuild: bool, on_corrupt: str, tol: float, info) -> tuple[Runner, EngineInfo]:
    """The entry's engine if it is there and passes its checks, else a fresh build (under the lock)."""
    key = entry.key
    if entry.exists() and not rebuild:
        try:
            manifest = entry.verify()
            runner = _load_checked(be, graph, entry, example, manifest)
            parity = manifest["parity"]
            return runner, info(False, str(entry.engine_path), parity["max_abs_diff"], parity["tolerance"], None,
                                key_digest(key))
        except CorruptEngine as e:
            if on_corrupt == "error":
                raise ModelFileError(f"cached {be.name} engine in {entry.dir} is corrupted: {e}; delete the folder "
                                     f"or rebuild it (fastdp export --rebuild)") from None
            log.warning("cached %s engine in %s is corrupted: %s; rebuilding it", be.name, entry.dir, e)

    log.info("building the %s engine of %s (%s)", be.describe(), model_dir, graph.signature.get("sampler", ""))
    reference = eager_output(graph)
    abs_tol = parity_tolerance(reference, tol)
    entry.prepare()
    temp = entry.temp_engine_path()
    t1 = time.perf_counter()
    try:
        runner = be.build(graph, temp)
        build_s = time.perf_counter() - t1
        diff = _check_parity(runner, example, reference, abs_tol, be, model_dir)
    except BaseException:
        entry.clear()  # never leave a half-built or failing engine behind
        raise
    entry.commit(temp, {"max_abs_diff": diff, "tolerance": abs_tol}, reference, build_s)
    log.info("built %s in %.1f s: max |engine - eager| = %.3g (tolerance %.3g)", entry.engine_path, build_s, diff,
             abs_tol)
    return runner, info(True, str(entry.engine_path), diff, abs_tol, build_s, key_digest(key))


def _check_parity(runner: Runner, example: list[np.ndarray], reference: np.ndarray, abs_tol: float, be: Backend,
                  model_dir: Path) -> float:
    diff = max_abs_diff(runner(example), reference)
    if not diff <= abs_tol:  # also catches NaN
        raise EngineParityError(f"the {be.describe()} engine of {model_dir} differs from eager execution by "
                                f"{diff:.3g} (tolerance {abs_tol:.3g}); use fp32 or a larger parity_tol "
                                f"if the difference is expected")
    return diff


def _load_checked(be: Backend, graph: ExportGraph, entry: CacheEntry, example: list[np.ndarray],
                  manifest: dict) -> Runner:
    """Load a cached engine and check its output against the stored eager reference."""
    try:
        runner = be.load(graph, entry.engine_path)
        out = runner(example)
    except FastDPError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to load a verified file means it is unusable
        raise CorruptEngine(f"it cannot be loaded ({type(e).__name__}: {str(e)[:300]})") from None
    reference = np.asarray(manifest.get("reference_output"), dtype=np.float32)
    diff = max_abs_diff(out, reference)
    tol = manifest["parity"]["tolerance"]
    if not diff <= tol:
        raise CorruptEngine(f"its output differs from the eager reference recorded at build time by {diff:.3g} "
                            f"(tolerance {tol:.3g})")
    return runner
