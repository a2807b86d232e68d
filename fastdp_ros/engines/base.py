"""The backend interface: how an ExportGraph becomes a callable engine, chosen by name.

A backend turns a policy's ExportGraph (the whole act() step as one module) into a *runner*:
a callable taking the graph's inputs as numpy arrays (batch 1, in ExportGraph.input_names
order) and returning the (1, horizon, action_dim) action chunk as a numpy array. Backends
that produce an artifact worth keeping (an ONNX file, a TensorRT program, torch.compile's
compiled kernels) name it in `engine_file`; the engine cache (cache.py) stores it under the
model directory and hands it back to `load` next time.

Optional libraries (onnxruntime, torch_tensorrt) are imported only when their backend is
used; a missing one is a ConfigError that says what to install.
"""

from __future__ import annotations

import abc
import functools
import re
import subprocess
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

import fastdp_ros
from fastdp_ros.errors import ConfigError
from fastdp_ros.hardware import inference_threads as default_threads  # noqa: F401  (the engines' default)
from fastdp_ros.policies.base import ExportGraph

#: runner(inputs) -> action chunk (1, horizon, action_dim); inputs in ExportGraph.input_names order
Runner = Callable[[list[np.ndarray]], np.ndarray]

PRECISIONS = ("fp32", "fp16")


def check_device(device: str) -> str:
    """Validate a torch device string; 'cuda' needs a CUDA build of torch and a GPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} needs CUDA, but this torch ({torch.__version__}) sees no GPU")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return str(dev)


class Backend(abc.ABC):
    """One way of running an ExportGraph. Subclasses set the class attributes and build/load."""

    name: ClassVar[str]
    #: precisions this backend can build
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    default_precision: ClassVar[str] = "fp32"
    #: the artifact the backend persists in the engine cache; None: nothing is persisted
    engine_file: ClassVar[str | None] = None
    #: backend-specific keyword options accepted by __init__
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, device: str = "cpu", precision: str | None = None, threads: int | None = None,
                 **options):
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise ConfigError(f"backend {self.name!r} has no options {unknown}; "
                              f"it takes {list(self.option_names) or 'none'}")
        self.device = check_device(device)
        self.precision = precision or self.default_precision
        if self.precision not in self.precisions:
            raise ConfigError(f"backend {self.name!r} builds {list(self.precisions)} engines, "
                              f"not {self.precision!r}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self.options = options

    # --- what the engine depends on --------------------------------------------------------

    @property
    def torch_device(self) -> str:
        """Where the eager policy (reference and export source) lives for this backend."""
        return self.device

    def check_available(self) -> None:
        """Raise ConfigError saying what to install when the backend cannot run here."""

    def versions(self) -> dict[str, str]:
        """Library versions an engine built by this backend depends on (part of the cache key)."""
        return {"fastdp_ros": fastdp_ros.__version__, "torch": torch.__version__}

    def cache_tag(self) -> dict:
        """Backend settings that change the built engine (part of the cache key)."""
        return {"backend": self.name, "precision": self.precision, "device": device_tag(self.device)}

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, {self.device})"

    @property
    def is_eager(self) -> bool:
        """Whether build() runs the graph module itself, unchanged (the parity reference)."""
        return False

    # --- building and loading ------------------------------------------------------------------

    @abc.abstractmethod
    def build(self, graph: ExportGraph, engine_path: Path | None) -> Runner:
        """Export/compile `graph`, write the artifact to engine_path (if engine_file), return a runner."""

    def load(self, graph: ExportGraph, engine_path: Path) -> Runner:
        """A runner from an artifact this backend wrote before (backends with an engine_file)."""
        raise NotImplementedError(f"backend {self.name} persists nothing to load")


def device_tag(device: str) -> str:
    """Device part of a cache key. A compiled GPU engine (TensorRT above all) is only valid for
    the GPU model, compute capability, CUDA and driver it was built with: any of them changing
    gives another key, so the engine is rebuilt rather than loaded on the wrong device."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return "cpu"
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return (f"cuda:{torch.cuda.get_device_name(index)}:sm{major}{minor}:cuda{torch.version.cuda}"
            f":driver{gpu_driver_version()}")


@functools.lru_cache(maxsize=None)
def gpu_driver_version() -> str:
    """The NVIDIA driver's version ('580.159.03'), or 'unknown' where no source answers.

    /proc/driver/nvidia/version first (no process to start); nvidia-smi where the proc file is
    hidden (containers, microVMs)."""
    try:
        found = driver_version_from_proc(Path("/proc/driver/nvidia/version").read_text())
        if found:
            return found
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def driver_version_from_proc(text: str) -> str | None:
    """'580.159.03' from /proc/driver/nvidia/version's NVRM line (proprietary or open module)."""
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", text)
    return found.group(1) if found else None


def example_arrays(graph: ExportGraph) -> list[np.ndarray]:
    """The graph's example inputs as numpy arrays (the runners' input form)."""
    return [t.detach().cpu().numpy() for t in graph.example_inputs]


class TorchRunner:
    """Runs a torch module on numpy inputs: copies to the device, returns a numpy array."""

    def __init__(self, module: torch.nn.Module, device: str):
        self.module = module
        self.device = torch.device(device)

    def tensors(self, inputs: list[np.ndarray]) -> list[torch.Tensor]:
        # torch.from_numpy shares memory (no copy on CPU) but warns on read-only arrays
        return [torch.from_numpy(x if x.flags.writeable else x.copy()).to(self.device) for x in inputs]

    @torch.inference_mode()
    def __call__(self, inputs: list[np.ndarray]) -> np.ndarray:
        return self.module(*self.tensors(inputs)).float().cpu().numpy()
