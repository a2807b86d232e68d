"""What a dataset holds and whether the pipeline can learn from it (`fastdp dataset check`).

Run by `fastdp train`, `distill` and `index` before they start. The required and optional
parts are those of docs/dataset.md:

  required   a ReplayBuffer store (data/*, meta/episode_ends) with at least one episode; the
             attribute `dt` (> 0 s); the action array (`action`, or --action-key), float,
             one vector per step; every key a policy is asked to read; finite values
  optional   attributes robot (fr3 | panda; any other name is an error: the runtime's limits
             and the ROS nodes know only these), task, cameras, joint_names, image_size;
             per-episode meta/episode_success (training keeps the successful episodes)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fastdp_ros.errors import DatasetError

OPTIONAL_ATTRS = ("robot", "task", "cameras", "joint_names", "image_size")
#: rows read at a time when scanning an array for non-finite values
_SCAN_ROWS = 4096


@dataclass
class DatasetReport:
    path: str
    episodes: int = 0
    steps: int = 0
    episode_length: dict = field(default_factory=dict)  # min / max / mean
    keys: dict = field(default_factory=dict)  # key -> {"shape": per-step shape, "dtype": str}
    meta: list = field(default_factory=list)
    dt: float | None = None
    robot: str | None = None
    task: str | None = None
    missing_optional: list = field(default_factory=list)
    nonfinite: dict = field(default_factory=dict)  # key -> count of non-finite values
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        """A human-readable listing."""
        length = self.episode_length
        out = [f"dataset {self.path}: {self.episodes} episodes, {self.steps} steps"
               + (f" (length {length['min']}-{length['max']}, mean {length['mean']:.1f})" if length else ""),
               f"  dt {self.dt} s, robot {self.robot}, task {self.task}"]
        for key, info in self.keys.items():
            bad = f", {self.nonfinite[key]} non-finite values" if key in self.nonfinite else ""
            out.append(f"  data/{key}: {info['dtype']} {tuple(info['shape'])} per step{bad}")
        if self.meta:
            out.append(f"  meta: {', '.join(self.meta)}")
        if self.missing_optional:
            out.append(f"  missing optional: {', '.join(self.missing_optional)}")
        out += [f"  PROBLEM: {p}" for p in self.problems]
        return out


def _count_nonfinite(array) -> int:
    if np.dtype(array.dtype).kind != "f":
        return 0
    bad = 0
    for start in range(0, array.shape[0], _SCAN_ROWS):
        bad += int(np.count_nonzero(~np.isfinite(np.asarray(array[start:start + _SCAN_ROWS]))))
    return bad


def check_dataset(path, action_key: str = "action", keys=(), scan_values: bool = True) -> DatasetReport:
    """Inspect the dataset at `path`; problems go into the report (nothing is raised for them).

    keys: the observation keys a policy will read (each must be present). scan_values reads every
    float array to count non-finite values (images are uint8 and are not read).
    """
    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.robots import ROBOTS

    report = DatasetReport(path=str(path))
    try:
        buffer = ReplayBuffer.open(path)
    except DatasetError as e:
        report.problems.append(" ".join(str(e).split()))
        return report
    attrs = buffer.attrs
    report.episodes, report.steps = buffer.n_episodes, buffer.n_steps
    lengths = buffer.episode_lengths
    if len(lengths):
        report.episode_length = {"min": int(lengths.min()), "max": int(lengths.max()), "mean": float(lengths.mean())}
    report.meta = buffer.meta_keys
    for key in buffer.keys:
        array = buffer[key]
        report.keys[key] = {"shape": [int(s) for s in array.shape[1:]], "dtype": str(array.dtype)}
        if scan_values:
            n = _count_nonfinite(array)
            if n:
                report.nonfinite[key] = n
    report.robot, report.task = attrs.get("robot"), attrs.get("task")
    report.missing_optional = [a for a in OPTIONAL_ATTRS if a not in attrs]
    if "robot" not in attrs:
        report.missing_optional[report.missing_optional.index("robot")] = "robot (a policy trained on it assumes panda)"
    if buffer.n_episodes == 0:
        report.problems.append("the dataset has no episodes")
    dt = attrs.get("dt")
    if dt is None:
        report.problems.append(f"no 'dt' attribute (the recording period in seconds, required; set it with "
                               f"`fastdp dataset set {path} dt=SECONDS`)")
    elif not isinstance(dt, (int, float)) or isinstance(dt, bool) or not math.isfinite(dt) or dt <= 0:
        report.problems.append(f"attribute 'dt' must be a number of seconds > 0, got {dt!r}")
    else:
        report.dt = float(dt)
    robot = attrs.get("robot")
    if robot is not None and str(robot).lower() not in ROBOTS:
        report.problems.append(f"unknown robot {robot!r}; fastdp_ros knows {', '.join(sorted(ROBOTS))} (set it with "
                               f"`fastdp dataset set {path} robot=fr3`)")
    if action_key not in buffer.keys:
        hint = [k for k in buffer.keys if "action" in k.lower()]
        report.problems.append(f"no action array {action_key!r}" + (
            f" (did you mean {hint[0]!r}? `fastdp dataset rename {path} {hint[0]}={action_key}`)" if hint else "")
            + f"; the dataset has {buffer.keys}")
    else:
        info = report.keys[action_key]
        if len(info["shape"]) != 1 or np.dtype(info["dtype"]).kind != "f":
            report.problems.append(f"action array {action_key!r} must hold one float vector per step, got "
                                   f"{info['dtype']} {tuple(info['shape'])}")
    missing = [k for k in keys if k not in buffer.keys]
    if missing:
        report.problems.append(f"no {missing} (asked for as observation keys); the dataset has {buffer.keys}")
    for key in [*keys, action_key]:
        if key in report.nonfinite:
            report.problems.append(f"data/{key} holds {report.nonfinite[key]} non-finite values")
    return report


def rename_keys(path, mapping: dict[str, str]) -> None:
    """Rename data arrays in place ({old: new}), e.g. a dataset's 'actions' to the 'action' the
    trainers read. Every rename is checked before any is made."""
    import os

    from fastdp_ros.data import ReplayBuffer

    buffer = ReplayBuffer.open(path, mode="r+")
    keys = set(buffer.keys)
    for old, new in mapping.items():
        if old not in keys:
            raise DatasetError(f"dataset {path} has no key {old!r}; it has {buffer.keys}")
        if new in keys or list(mapping.values()).count(new) > 1:
            raise DatasetError(f"cannot rename {old!r} to {new!r}: the dataset would have it twice")
    for old, new in mapping.items():
        os.rename(Path(path) / "data" / old, Path(path) / "data" / new)
    ReplayBuffer.open(path).validate()


def parse_attr_value(text: str):
    """An attribute value on the command line: JSON when it parses (0.1, true, [96, 96]), else a string."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def require_dataset(path, action_key: str = "action", keys=()) -> DatasetReport:
    """check_dataset, raising one DatasetError line naming every problem."""
    if path is None:
        raise DatasetError("no dataset given")
    report = check_dataset(path, action_key=action_key, keys=keys)
    if not report.ok:
        raise DatasetError(f"dataset {Path(path)} cannot be used: " + "; ".join(report.problems)
                           + f" (details: fastdp dataset check {path})")
    return report
