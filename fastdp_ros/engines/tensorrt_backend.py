"""torch-tensorrt backend: the act() step compiled ahead of time into TensorRT engines (GPU only).

Uses torch-tensorrt's dynamo path (torch_tensorrt.compile(ir="dynamo", arg_inputs=...)),
saved with torch_tensorrt.save as an ExportedProgram (.ep) and read back with
torch_tensorrt.load: the TensorRT engine bytes travel inside the program. Ops TensorRT cannot
convert (e.g. the uint8 -> float image conversion, on some versions) stay in PyTorch.

Trust: an .ep file goes through torch.export's loader. Engines are build outputs written by
this machine into the model's engines/ folder, checked against the sha256 recorded at build
time; do not load engine folders from elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from fastdp_ros.engines.base import Backend, Runner, TorchRunner
from fastdp_ros.errors import ConfigError
from fastdp_ros.policies.base import ExportGraph

log = logging.getLogger(__name__)


def _import_torch_tensorrt():
    try:
        import torch_tensorrt
    except ImportError as e:
        raise ConfigError("install torch-tensorrt (and tensorrt) matching your CUDA torch to use backend "
                          f"'tensorrt', e.g. pip install 'fastdp_ros[gpu]' [{e}]") from None
    return torch_tensorrt


class TensorRTBackend(Backend):
    """torch-tensorrt, fp16 (default) or fp32, on a CUDA device."""

    name = "tensorrt"
    precisions = ("fp16", "fp32")
    default_precision = "fp16"
    engine_file = "engine.ep"

    def __init__(self, device: str = "cuda", precision: str | None = None, threads: int | None = None, **options):
        if torch.device(device).type != "cuda":
            raise ConfigError(f"backend 'tensorrt' runs on a CUDA GPU; got device {device!r} (use --device cuda)")
        super().__init__(device, precision, threads, **options)

    def check_available(self) -> None:
        _import_torch_tensorrt()

    def versions(self) -> dict[str, str]:
        torch_tensorrt = _import_torch_tensorrt()
        out = {**super().versions(), "torch_tensorrt": torch_tensorrt.__version__}
        try:
            import tensorrt

            out["tensorrt"] = tensorrt.__version__
        except ImportError:
            pass
        return out

    def _precisions(self) -> set:
        return {torch.float16, torch.float32} if self.precision == "fp16" else {torch.float32}

    def build(self, graph: ExportGraph, engine_path: Path | None) -> Runner:
        torch_tensorrt = _import_torch_tensorrt()
        inputs = [t.to(self.device) for t in graph.example_inputs]
        log.info("building TensorRT engines (%s) for the act() step", self.precision)
        with torch.no_grad():
            trt_module = torch_tensorrt.compile(graph.module, ir="dynamo", arg_inputs=inputs,
                                                enabled_precisions=self._precisions())
            torch_tensorrt.save(trt_module, str(engine_path), output_format="exported_program", arg_inputs=inputs)
        return TorchRunner(trt_module, self.device)

    def load(self, graph: ExportGraph, engine_path: Path) -> Runner:
        torch_tensorrt = _import_torch_tensorrt()
        loaded = torch_tensorrt.load(str(engine_path))
        # an ExportedProgram on most versions: .module() is the callable
        module = loaded.module() if hasattr(loaded, "module") else loaded
        return TorchRunner(module, self.device)
