"""Backends that run the graph in PyTorch: eager (with CUDA graphs on a GPU) and torch.compile."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fastdp_ros.engines.base import Backend, Runner, TorchRunner
from fastdp_ros.policies.base import ExportGraph

log = logging.getLogger(__name__)


class CudaGraphRunner(TorchRunner):
    """Replays the whole act() step as one captured CUDA graph.

    A diffusion loop launches hundreds of small kernels; at batch 1 their launch overhead
    dominates. Capturing them once and replaying removes it. Inputs are copied into static
    buffers, the graph replays, and the static output is copied back.
    """

    def __init__(self, module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], device: str):
        super().__init__(module, device)
        self.static_inputs = [t.detach().to(self.device).clone() for t in example_inputs]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # warm-up on a side stream: cuDNN autotuning and lazy allocations must not be captured
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(3):
                module(*self.static_inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_output = module(*self.static_inputs)

    def __call__(self, inputs: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            for dst, x in zip(self.static_inputs, inputs):
                dst.copy_(torch.from_numpy(x if x.flags.writeable else x.copy()))
            self.graph.replay()
            return self.static_output.float().cpu().numpy()


class TorchBackend(Backend):
    """Eager PyTorch: the reference. On a GPU the act() step is captured as a CUDA graph
    (option cuda_graph, default on) unless the graph cannot be captured."""

    name = "torch"
    option_names = ("cuda_graph",)

    def cache_tag(self) -> dict:
        return {**super().cache_tag(), "cuda_graph": self.use_cuda_graph}

    @property
    def use_cuda_graph(self) -> bool:
        wanted = self.options.get("cuda_graph")
        on_gpu = torch.device(self.device).type == "cuda"
        return on_gpu if wanted is None else bool(wanted) and on_gpu

    @property
    def is_eager(self) -> bool:
        return not self.use_cuda_graph

    def describe(self) -> str:
        return f"torch ({self.precision}, {self.device}{', CUDA graph' if self.use_cuda_graph else ''})"

    def build(self, graph: ExportGraph, engine_path: Path | None) -> Runner:
        if self.use_cuda_graph:
            return CudaGraphRunner(graph.module, graph.example_inputs, self.device)
        return TorchRunner(graph.module, self.device)


class TorchCompileBackend(Backend):
    """torch.compile (Inductor) of the whole act() step, with a static batch-1 shape.

    Compilation happens in every process (dynamo traces the Python code again), but the
    generated kernels are persisted: torch.compiler.save_cache_artifacts() after the first
    compile goes into the engine cache, load_cache_artifacts() on the next load makes the
    compile a cache hit. On a GPU mode "reduce-overhead" (CUDA graphs) is the default.
    """

    name = "torch_compile"
    engine_file = "compile_cache.bin"
    option_names = ("compile_mode",)

    @property
    def mode(self) -> str:
        default = "reduce-overhead" if torch.device(self.device).type == "cuda" else "default"
        return self.options.get("compile_mode") or default

    def cache_tag(self) -> dict:
        return {**super().cache_tag(), "compile_mode": self.mode}

    def _compiled_runner(self, graph: ExportGraph, example: list[np.ndarray]) -> Runner:
        compiled = torch.compile(graph.module, mode=self.mode, dynamic=False)
        runner = TorchRunner(compiled, self.device)
        runner(example)  # compiles now rather than inside the first act()
        return runner

    def build(self, graph: ExportGraph, engine_path: Path | None) -> Runner:
        example = [t.detach().cpu().numpy() for t in graph.example_inputs]
        log.info("torch.compile of the act() step (%s); this takes a while on a CPU", self.mode)
        runner = self._compiled_runner(graph, example)
        artifacts = torch.compiler.save_cache_artifacts()
        engine_path.write_bytes(artifacts[0] if artifacts else b"")
        return runner

    def load(self, graph: ExportGraph, engine_path: Path) -> Runner:
        data = engine_path.read_bytes()
        if data:
            torch.compiler.load_cache_artifacts(data)
        return self._compiled_runner(graph, [t.detach().cpu().numpy() for t in graph.example_inputs])
