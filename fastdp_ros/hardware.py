"""What this machine offers a run: thread counts that hold up on a shared CPU, and bf16.

A robot computer is never idle (camera drivers, ROS, the controller), and on a shared CPU
intra-op threads collapse: every parallel region waits for its slowest thread, and a thread
that has lost its core makes the others spin. Measured on a 2-core machine with two busy
processes beside it (bench/contention.json): see the defaults below.

- Waiting: OpenMP threads (torch's CPU kernels) sleep instead of spinning when idle
  (OMP_WAIT_POLICY=PASSIVE, set when fastdp_ros is imported unless the environment sets it; it
  only takes effect if torch was not imported first), and onnxruntime sessions do not spin.
- Inference threads: half the usable CPUs, at most 4: the rest stay free for the control loop,
  the sensors and everything else on the computer. Training and data preparation use all
  usable CPUs. Every command offers --threads and goes through configure_threads(); a ROS node
  calls configure_threads(inference_threads or None) and gives the count it returns to
  onnxruntime (load option `threads`).
- Precision: bf16 only where the hardware runs it (AMX or AVX512-BF16 on a CPU, a CUDA GPU
  with bf16 support); elsewhere bf16 is emulated and several times slower than fp32, so
  resolve_precision() falls back to fp32 with a warning and says which one was used.

torch is imported lazily: this module is imported by fastdp_ros/__init__.py.
"""

from __future__ import annotations

import logging
import os
import sys

from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)

#: the OpenMP waiting behaviour fastdp_ros asks for (libgomp reads it when torch loads)
WAIT_POLICY = "PASSIVE"

#: /proc/cpuinfo flags of CPUs with native bfloat16 arithmetic
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def prefer_passive_waiting() -> bool:
    """Ask OpenMP threads to sleep, not spin, when idle (unless OMP_WAIT_POLICY is set already).

    Returns False when torch was imported before: its OpenMP runtime has read the environment
    then, and the setting only reaches processes started from this one.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    return "torch" not in sys.modules


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; the CPU count off Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def inference_threads() -> int:
    """Default intra-op threads for running a policy: half the usable CPUs, 1 to 4.

    Batch-1 policy graphs gain little beyond a few threads; the other half of the CPUs is left
    to the control loop and to whatever else the computer runs.
    """
    return max(1, min(4, usable_cpus() // 2))


def training_threads() -> int:
    """Default intra-op threads for training, distillation and indexing: every usable CPU."""
    return usable_cpus()


def check_threads(threads: int | None, flag: str = "--threads") -> None:
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads or threads < 1):
        raise ConfigError(f"{flag} must be an integer >= 1, got {threads}")


def configure_threads(threads: int | None = None, role: str = "inference", flag: str = "--threads") -> int:
    """Set torch's intra-op threads for this process and return the count.

    threads: the user's choice (--threads; a node's `inference_threads or None`); None: the
    role's default (`inference`: inference_threads(), `training`: training_threads()). Inference also asks for
    one inter-op thread (policy graphs are one chain), where torch still allows it. The count
    returned is the one to give onnxruntime sessions too (load options `threads`).
    """
    if role not in ("inference", "training"):
        raise ValueError(f"role must be 'inference' or 'training', got {role!r}")
    check_threads(threads, flag)
    n = int(threads) if threads is not None else inference_threads() if role == "inference" else training_threads()
    prefer_passive_waiting()
    import torch

    torch.set_num_threads(n)
    if role == "inference":
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only allowed before the first inter-op work; the default is then kept
            pass
    log.debug("%s threads: %d of %d usable CPUs (OMP_WAIT_POLICY=%s)", role, n, usable_cpus(),
              os.environ.get("OMP_WAIT_POLICY"))
    return n


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_hardware(device: str = "cpu", flags: set[str] | None = None) -> str | None:
    """What runs bfloat16 natively for `device` ('AMX', 'AVX512-BF16', 'CUDA <name>'), or None."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return f"CUDA {torch.cuda.get_device_name(dev)}"
        return None
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def resolve_precision(requested: str, device: str = "cpu", flags: set[str] | None = None) -> str:
    """The precision a run uses: bf16 only where the hardware runs it, else fp32 with a warning."""
    if requested != "bf16":
        return requested
    hardware = bf16_hardware(device, flags)
    if hardware is None:
        log.warning("bf16 requested, but this %s has no bfloat16 hardware (AMX, AVX512-BF16 or a CUDA GPU): "
                    "training in fp32, which is faster here", "GPU" if device.startswith("cuda") else "CPU")
        return "fp32"
    log.info("bf16 autocast on %s", hardware)
    return "bf16"
