"""ONNX export of the act() step and the ONNX Runtime backend (CPU, CUDA and TensorRT providers)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

import fastdp_ros
from fastdp_ros.engines.base import Backend, Runner, default_threads
from fastdp_ros.engines.onnx_rewrite import REWRITES_VERSION, onnx_friendly
from fastdp_ros.errors import ConfigError
from fastdp_ros.policies.base import ExportGraph

log = logging.getLogger(__name__)

#: ONNX opset of exported graphs (the one test_diffusion_export checks the samplers with)
OPSET = 17

#: provider option -> ONNX Runtime execution providers, in preference order
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _import_onnxruntime():
    try:
        import onnx  # noqa: F401  (the exporter and the model check need it)
        import onnxruntime
    except ImportError as e:
        raise ConfigError(f"install onnxruntime and onnx to use backend 'onnxruntime' "
                          f"(pip install onnxruntime onnx; onnxruntime-gpu for CUDA/TensorRT) [{e}]") from None
    return onnxruntime


@contextlib.contextmanager
def _normalized_permute(opset: int):
    """Export aten::permute with non-negative Transpose perms.

    torch's TorchScript-based ONNX exporter copies permute's dims into Transpose's `perm`
    verbatim; a negative dim (x.permute(0, 1, -1, -3, -2)) is invalid ONNX, and the exporter's
    own shape inference then reads garbage and can crash the process (SIGFPE) further down
    the graph. Registered only for the duration of one export.
    """
    from torch.onnx import register_custom_op_symbolic, symbolic_helper, unregister_custom_op_symbolic

    @symbolic_helper.parse_args("v", "is")
    def permute(g, x, dims):
        rank = len(dims)
        dims = [d % rank for d in dims]
        if dims == list(range(rank)):
            return x
        return g.op("Transpose", x, perm_i=dims)

    register_custom_op_symbolic("aten::permute", permute, opset)
    try:
        yield
    finally:
        unregister_custom_op_symbolic("aten::permute", opset)


def export_onnx(graph: ExportGraph, path: Path, opset: int = OPSET) -> None:
    """Write `graph` as one ONNX model with static batch-1 shapes, then check it.

    Uses the TorchScript-based exporter (dynamo=False): it unrolls the fixed-step sampling
    loop into one graph and is what the samplers are tested against. The module is exported
    through onnx_friendly (onnx_rewrite.py): the same function in ops ONNX Runtime runs faster.
    """
    import onnx

    module = onnx_friendly(graph.module)
    args = tuple(t.detach() for t in graph.example_inputs)
    with warnings.catch_warnings(record=True) as caught, _normalized_permute(opset), torch.no_grad():
        warnings.simplefilter("always")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(graph.input_names), output_names=[graph.output_name],
                          do_constant_folding=True)
    # a TracerWarning from our own code means the traced graph may not generalize: say so, once
    # per place; torch's own warnings (from wherever its installation is) are not the user's concern
    ours = {(str(w.message), w.filename, w.lineno) for w in caught
            if issubclass(w.category, torch.jit.TracerWarning) and _in_package(w.filename)}
    for message, filename, lineno in sorted(ours):
        log.warning("ONNX export: %s (%s:%s)", message, filename, lineno)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ConfigError(f"the exported ONNX graph is invalid: {e}") from None


def _in_package(filename: str) -> bool:
    """Whether a file is part of fastdp_ros (not of a library, even one installed inside the clone)."""
    try:
        return Path(filename).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


PACKAGE_DIR = Path(fastdp_ros.__file__).resolve().parent


class OrtRunner:
    """Runs an ONNX Runtime session on numpy inputs."""

    def __init__(self, session, input_names: tuple[str, ...], output_name: str):
        self.session = session
        self.input_names = input_names
        self.output_names = [output_name]
        # the exporter drops an input the graph never reads (RAGDP's step noise when one
        # deterministic jump remains); the caller still draws it, to keep its noise sequence
        self.used = {i.name for i in session.get_inputs()}

    def __call__(self, inputs: list[np.ndarray]) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(x) for name, x in zip(self.input_names, inputs) if name in self.used}
        return self.session.run(self.output_names, feeds)[0]


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime over one exported graph.

    Options:
      provider  cpu | cuda | tensorrt (default: cuda on a CUDA device, else cpu); fp16 is
                available through the TensorRT provider only
      threads   intra-op threads (default: default_threads(), half the usable CPUs, 1 to 4)
    Graph optimization level ALL; one inter-op thread (the graph is one sequential chain); idle
    threads do not spin.
    """

    name = "onnxruntime"
    precisions = ("fp32", "fp16")
    engine_file = "model.onnx"
    option_names = ("provider",)

    def __init__(self, device: str = "cpu", precision: str | None = None, threads: int | None = None, **options):
        super().__init__(device, precision, threads, **options)
        default = "cuda" if torch.device(self.device).type == "cuda" else "cpu"
        self.provider = options.get("provider") or default
        if self.provider not in PROVIDERS:
            raise ConfigError(f"unknown onnxruntime provider {self.provider!r}; use one of {list(PROVIDERS)}")
        if self.precision == "fp16" and self.provider != "tensorrt":
            raise ConfigError("onnxruntime builds fp16 engines through the TensorRT provider only; "
                              "use provider='tensorrt' or precision fp32")

    @property
    def torch_device(self) -> str:
        return "cpu"  # the eager reference and the export run on the CPU; the session picks its device

    def check_available(self) -> None:
        ort = _import_onnxruntime()
        wanted = PROVIDERS[self.provider][0]
        if wanted not in ort.get_available_providers():
            raise ConfigError(f"onnxruntime {ort.__version__} has no {wanted} (it has "
                              f"{ort.get_available_providers()}); install onnxruntime-gpu to use "
                              f"provider {self.provider!r}")

    def versions(self) -> dict[str, str]:
        import onnx
        ort = _import_onnxruntime()
        return {**super().versions(), "onnx": onnx.__version__, "onnxruntime": ort.__version__, "opset": str(OPSET)}

    def cache_tag(self) -> dict:
        # the ONNX file does not depend on the machine, but a TensorRT provider's engines do
        tag = {**super().cache_tag(), "provider": self.provider, "rewrites": REWRITES_VERSION}
        if self.provider == "cpu":
            tag["device"] = "cpu"
        return tag

    def describe(self) -> str:
        return f"onnxruntime ({self.precision}, {self.provider}, {self.intra_op_threads} threads)"

    @property
    def intra_op_threads(self) -> int:
        return self.threads or default_threads()

    def build(self, graph: ExportGraph, engine_path: Path | None) -> Runner:
        export_onnx(graph, engine_path)
        return self.load(graph, engine_path)

    def load(self, graph: ExportGraph, engine_path: Path) -> Runner:
        ort = _import_onnxruntime()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # idle pool threads sleep instead of spinning: on a shared CPU, spinning takes the cores
        # the other threads of the same call are waiting for (fastdp_ros.hardware)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(engine_path), so, providers=self._providers(engine_path))
        wanted = PROVIDERS[self.provider][0]
        if wanted not in session.get_providers():
            # ONNX Runtime falls back to the CPU silently when a GPU provider fails to start
            raise ConfigError(f"onnxruntime could not start {wanted} (missing CUDA/cuDNN/TensorRT "
                              f"libraries?); the session runs on {session.get_providers()}")
        return OrtRunner(session, graph.input_names, graph.output_name)

    def _providers(self, engine_path: Path) -> list:
        providers: list = list(PROVIDERS[self.provider])
        device_id = torch.device(self.device).index or 0
        if self.provider == "cuda":
            providers[0] = ("CUDAExecutionProvider", {"device_id": device_id})
        if self.provider == "tensorrt":
            # the provider builds its TensorRT engine on first load; keep it beside the ONNX file
            cache = engine_path.parent / "trt_provider_cache"
            cache.mkdir(exist_ok=True)
            providers[0] = ("TensorrtExecutionProvider", {
                "device_id": device_id,
                "trt_fp16_enable": self.precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
            })
        return providers
