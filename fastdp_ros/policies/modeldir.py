"""Model directories: config.json + model.safetensors (+ optional index/, engines/).

Loading never unpickles: weights are safetensors, everything else is JSON. Every failure
names the file and says what is wrong, so a user can tell a truncated download from a model
of another kind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import fastdp_ros
from fastdp_ros.errors import ModelFileError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


@dataclass
class ModelFiles:
    """What a model directory holds, parsed."""

    path: Path
    config: dict
    state_dict: dict[str, torch.Tensor]

    @property
    def policy_type(self) -> str:
        return self.config["policy_type"]


def code_version() -> str:
    """Package version plus the git commit when run from a checkout (provenance only)."""
    version = fastdp_ros.__version__
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=os.path.dirname(fastdp_ros.__file__),
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{version}+g{commit}"
    except (OSError, subprocess.SubprocessError):
        return version


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: no half-written files."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; model files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model_dir(
    path: str | os.PathLike,
    policy_type: str,
    config: dict,
    state_dict: dict[str, torch.Tensor],
    half: bool = False,
) -> Path:
    """Write `config` (with policy_type and format version added) and the weights.

    `half` stores floating-point tensors as fp16 (smaller files for shipped demo models);
    they are cast back to the module's dtype on load.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelFileError(f"cannot create model directory {path}: {e.strerror}") from None
    tensors = {}
    for k, v in state_dict.items():
        t = v.detach().cpu().contiguous()
        if half and t.is_floating_point():
            t = t.half()
        tensors[k] = t
    full = {"policy_type": policy_type, "format_version": FORMAT_VERSION, **config}
    full.setdefault("provenance", {})
    full["provenance"].setdefault("code_version", code_version())
    full["provenance"].setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"policy_type": policy_type}))
    text = json.dumps(full, indent=2)
    _atomic_write(path / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    log.info("saved %s model to %s", policy_type, path)
    return path


def read_config(path: str | os.PathLike) -> dict:
    """Parse a model directory's config.json (no weights)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"model directory {path} does not exist")
    cfg_path = path / CONFIG_FILE
    try:
        config = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{cfg_path} is missing: {path} is not a fastdp model directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{cfg_path} is not valid JSON ({e}); the file is corrupted") from None
    if not isinstance(config, dict) or "policy_type" not in config:
        raise ModelFileError(f"{cfg_path} has no 'policy_type': not a fastdp model config")
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ModelFileError(
            f"{cfg_path} has format_version {config['format_version']}, newer than this "
            f"fastdp_ros understands ({FORMAT_VERSION}); upgrade fastdp_ros"
        )
    return config


def load_model_dir(path: str | os.PathLike) -> ModelFiles:
    """Read config.json and model.safetensors; never unpickles."""
    path = Path(path)
    config = read_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"{weights} is missing")
    try:
        state_dict = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(
            f"{weights} cannot be read as safetensors ({e}); the file is truncated or corrupted"
        ) from None
    return ModelFiles(path=path, config=config, state_dict=state_dict)


def load_state_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights strictly, casting dtypes; mismatches become one readable ModelFileError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shape = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        if shape:
            parts.append(f"shape mismatches: {shape[:3]}")
        raise ModelFileError(
            f"{source / WEIGHTS_FILE} does not match the network described by its config.json: "
            + "; ".join(parts)
        )
    module.load_state_dict({k: state_dict[k].to(own[k].dtype) for k in own}, strict=True)


def model_hash(path: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of config.json and the weights: the engine cache key."""
    path = Path(path)
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        with open(path / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
