"""robomimic HDF5 -> dataset (`fastdp import robomimic FILE.hdf5`), read with h5py.

robomimic's layout: data/demo_<i>/actions (T, A), rewards (T,), dones (T,), obs/<name> (T, ...)
and next_obs/ (ignored), with data.attrs["env_args"] (JSON: env_name, env_kwargs with
control_freq and robots). Each demo becomes one episode, in demo number order:

  actions        -> action (float32)
  rewards/dones  -> reward (float32) / done (bool), when present
  obs/<X>_image  -> img_<X> (uint8 (H, W, 3), optionally resized); other uint8 (T, H, W, 3) too
  obs/<X>        -> X (float32, flattened per step)
  --map X=KEY    names an obs entry otherwise

dt is 1 / env_kwargs.control_freq unless --dt is given; robot is env_kwargs.robots[0] when it is
a Franka Panda ("Panda"), else only what --robot says.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from fastdp_ros.errors import ConfigError, DatasetError

from . import require_module, resize_rgb, staged_dataset

log = logging.getLogger(__name__)


def obs_key(name: str, array_shape: tuple, dtype, mapping: dict[str, str]) -> str:
    if name in mapping:
        return mapping[name]
    is_image = len(array_shape) == 4 and array_shape[-1] == 3 and np.dtype(dtype) == np.uint8
    if is_image or name.endswith("_image"):
        return "img_" + re.sub(r"_image$", "", name)
    return name


def _demo_order(names) -> list[str]:
    demos = [n for n in names if re.fullmatch(r"demo_\d+", n)]
    return sorted(demos, key=lambda n: int(n.split("_")[1]))


def _env_args(group) -> dict:
    raw = group.attrs.get("env_args")
    if raw is None:
        return {}
    try:
        return json.loads(raw if isinstance(raw, str) else raw.decode())
    except (ValueError, AttributeError):
        return {}


def import_robomimic(source, out: str | os.PathLike, mapping: dict[str, str] | None = None, dt: float | None = None,
                     image_size: tuple[int, int] | None = None, robot: str | None = None, task: str | None = None,
                     overwrite: bool = False) -> dict:
    """Import a robomimic HDF5 file into a new dataset at `out`; returns the import report."""
    from fastdp_ros.robots import ROBOTS, get_robot

    h5py = require_module("h5py", "fastdp import robomimic")
    mapping = dict(mapping or {})
    path = Path(source)
    if not path.is_file():
        raise DatasetError(f"no robomimic file at {path}")
    if robot is not None:
        robot = get_robot(robot).name
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"cannot read {path} as HDF5: {e} (truncated or not a robomimic file?)") from None
    report = {"source": "robomimic", "file": str(path), "episodes": []}
    with f:
        if "data" not in f:
            raise DatasetError(f"{path} has no 'data' group: not a robomimic file (groups: {list(f.keys())})")
        data = f["data"]
        demos = _demo_order(data.keys())
        if not demos:
            raise DatasetError(f"{path}: data/ holds no demo_<i> groups")
        env_args = _env_args(data)
        kwargs = env_args.get("env_kwargs", {}) if isinstance(env_args.get("env_kwargs"), dict) else {}
        if dt is None:
            freq = kwargs.get("control_freq")
            if not isinstance(freq, (int, float)) or freq <= 0:
                raise ConfigError(f"{path} does not record env_kwargs.control_freq; pass --dt (seconds per step)")
            dt = 1.0 / float(freq)
        if not np.isfinite(dt) or dt <= 0:
            raise ConfigError(f"--dt must be > 0 seconds, got {dt}")
        robots = kwargs.get("robots")
        source_robot = (robots[0] if isinstance(robots, list) and robots else robots) or None
        if robot is None and isinstance(source_robot, str) and source_robot.lower() in ROBOTS:
            robot = source_robot.lower()
        elif robot is None and source_robot:
            log.warning("%s was recorded with robot %r, not a Franka fastdp_ros knows; the dataset records no robot "
                        "(pass --robot to set one)", path, source_robot)
        attrs = {"dt": dt, "source": {"format": "robomimic", "file": str(path), "env_name": env_args.get("env_name"),
                                      "robot": source_robot}}
        if robot:
            attrs["robot"] = robot
        if task or env_args.get("env_name"):
            attrs["task"] = task or env_args["env_name"]
        with staged_dataset(out, attrs, overwrite) as buffer:
            for name in demos:
                episode = _read_demo(data[name], f"{path}:data/{name}", mapping, image_size)
                buffer.add_episode(episode)
                report["episodes"].append({"demo": name, "steps": len(episode["action"])})
            cameras = sorted(k[4:] for k in buffer.keys if k.startswith("img_"))
            buffer.update_attrs({"cameras": cameras, **({"image_size": list(buffer[f"img_{cameras[0]}"].shape[1:3])}
                                                         if cameras else {})})
    return report


def _read_demo(demo, where: str, mapping: dict[str, str], image_size) -> dict[str, np.ndarray]:
    if "actions" not in demo:
        raise DatasetError(f"{where} has no 'actions' (it has {sorted(demo.keys())}): nothing to learn from")
    if "obs" not in demo:
        raise DatasetError(f"{where} has no 'obs' group")
    try:
        action = np.asarray(demo["actions"][()], np.float32)
        episode = {"action": action.reshape(len(action), -1)}
        if "rewards" in demo:
            episode["reward"] = np.asarray(demo["rewards"][()], np.float32).reshape(-1)
        if "dones" in demo:
            episode["done"] = np.asarray(demo["dones"][()]).reshape(-1).astype(bool)
        for name, dataset in demo["obs"].items():
            key = obs_key(name, dataset.shape, dataset.dtype, mapping)
            if key in episode:
                raise ConfigError(f"{where}: obs/{name} and another array both map to {key!r}; rename one with --map")
            values = np.asarray(dataset[()])
            if key.startswith("img_"):
                if values.ndim != 4 or values.shape[-1] != 3 or values.dtype != np.uint8:
                    raise DatasetError(f"{where}: obs/{name} is {values.dtype} {values.shape}; images must be uint8 "
                                       "(T, H, W, 3)")
                if image_size is not None:
                    values = np.stack([resize_rgb(v, image_size) for v in values])
                episode[key] = values
            else:
                episode[key] = values.reshape(len(values), -1).astype(np.float32)
    except OSError as e:  # a damaged chunk inside a readable file
        raise DatasetError(f"cannot read {where}: {e}") from None
    lengths = {k: len(v) for k, v in episode.items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"{where}: arrays of different lengths {lengths}")
    return episode
