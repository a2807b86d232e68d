"""Inference engines: the act() step of a policy run by torch, torch.compile, ONNX Runtime or TensorRT.

    from fastdp_ros.engines import load_engine_policy
    policy = load_engine_policy("models/push_dp", backend="onnxruntime", sampler="ddim", steps=10)
    chunk = policy.act(obs)            # the Policy interface: spec, encode, act, nfe

A policy provides its whole act() step as one module (Policy.export_graph: preprocessing,
encoder, every sampler step, unnormalization; noise as inputs); a backend exports or compiles
it once, checks it against eager execution, and caches it under <model>/engines/ keyed by
model hash, backend settings, sampler/steps and library versions (see cache.py).
"""

from fastdp_ros.engines.backends import BACKENDS, make_backend
from fastdp_ros.engines.base import Backend, default_threads
from fastdp_ros.engines.policy import (
    DEFAULT_TOLERANCE,
    EngineInfo,
    EngineParityError,
    EnginePolicy,
    load_engine_policy,
)

__all__ = [
    "BACKENDS", "Backend", "DEFAULT_TOLERANCE", "EngineInfo", "EngineParityError", "EnginePolicy",
    "default_threads", "load_engine_policy", "make_backend",
]
