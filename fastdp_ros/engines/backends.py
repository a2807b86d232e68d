"""Backends by name."""

from __future__ import annotations

from fastdp_ros.engines.base import Backend
from fastdp_ros.engines.onnxruntime_backend import OnnxRuntimeBackend
from fastdp_ros.engines.tensorrt_backend import TensorRTBackend
from fastdp_ros.engines.torch_backends import TorchBackend, TorchCompileBackend
from fastdp_ros.errors import ConfigError

BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (TorchBackend, TorchCompileBackend, OnnxRuntimeBackend, TensorRTBackend)
}


def make_backend(name: str, device: str = "cpu", precision: str | None = None, threads: int | None = None,
                 **options) -> Backend:
    """The backend `name`, configured and checked to be usable here (else a ConfigError)."""
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}") from None
    backend = cls(device=device, precision=precision, threads=threads, **options)
    backend.check_available()
    return backend
