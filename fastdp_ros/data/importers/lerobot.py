"""LeRobot v3 dataset on disk -> dataset (`fastdp import lerobot DIR`), read with pyarrow and PyAV.

LeRobot v3's layout (codebase_version "v3.0"):

  meta/info.json                   fps, robot_type, features {name: {dtype, shape}}, data_path and
                                   video_path templates
  meta/episodes/chunk-*/file-*.parquet
                                   one row per episode: episode_index, length, and per video
                                   feature videos/<key>/chunk_index, file_index, from_timestamp
  data/chunk-*/file-*.parquet      one row per frame: the non-video features, timestamp,
                                   frame_index, episode_index, index (several episodes per file)
  videos/<key>/chunk-*/file-*.mp4  several episodes per file, one after the other

A frame's image is the video frame at from_timestamp + timestamp of its episode (the nearest
decoded frame, which must lie within half a frame period). Features map onto dataset keys:
observation.images.X -> img_X, observation.state -> state, other observation.X -> X,
action -> action, next.reward -> reward, next.done -> done; --map FEATURE=KEY overrides.
dt is 1 / fps.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from fastdp_ros.errors import ConfigError, DatasetError

from . import require_module, resize_rgb, staged_dataset

log = logging.getLogger(__name__)

#: bookkeeping columns of LeRobot's frame table, not features to learn from
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_RENAMES = {"observation.state": "state", "action": "action", "next.reward": "reward", "next.done": "done",
            "next.success": "success"}


def feature_key(name: str, mapping: dict[str, str]) -> str:
    if name in mapping:
        return mapping[name]
    if name in _RENAMES:
        return _RENAMES[name]
    if name.startswith("observation.images."):
        return "img_" + name[len("observation.images."):].replace(".", "_")
    if name.startswith("observation."):
        return name[len("observation."):].replace(".", "_")
    return name.replace(".", "_")


def _read_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DatasetError(f"{root} is not a LeRobot dataset: no meta/info.json")
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise DatasetError(f"{root} is a LeRobot {version or 'unknown-version'} dataset; this importer reads v3 "
                           "(convert it with LeRobot's v2.1 -> v3.0 script)")
    for key in ("fps", "features"):
        if key not in info:
            raise DatasetError(f"{path} has no {key!r}")
    return info


def _read_parquet(pq, files: list[Path], what: str):
    if not files:
        raise DatasetError(f"no {what} parquet files")
    try:
        import pyarrow as pa

        return pa.concat_tables([pq.read_table(f) for f in files]).to_pydict()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for damaged files
        raise DatasetError(f"cannot read the {what} parquet files: {str(e).splitlines()[0]}") from None


def _decode(av, path: Path, cache: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """(presentation times s, RGB frames) of a whole video file, decoded once."""
    if path not in cache:
        if not path.is_file():
            raise DatasetError(f"missing video file {path}")
        times, frames = [], []
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                for frame in container.decode(stream):
                    times.append(float(frame.pts * stream.time_base) if frame.pts is not None else float(frame.time))
                    frames.append(frame.to_ndarray(format="rgb24"))
        except Exception as e:  # noqa: BLE001 - FFmpeg errors come in many types
            raise DatasetError(f"cannot decode video {path}: {e}") from None
        if not frames:
            raise DatasetError(f"video {path} holds no frames")
        cache.clear()  # one file at a time: episodes are read in file order
        order = np.argsort(times, kind="stable")
        cache[path] = (np.asarray(times)[order], [frames[i] for i in order])
    return cache[path]


def import_lerobot(source, out: str | os.PathLike, mapping: dict[str, str] | None = None,
                   image_size: tuple[int, int] | None = None, robot: str | None = None, task: str | None = None,
                   overwrite: bool = False) -> dict:
    """Import the LeRobot v3 dataset folder `source` into a new dataset at `out`; returns the report."""
    from fastdp_ros.robots import ROBOTS, get_robot

    pq = require_module("pyarrow.parquet", "fastdp import lerobot")
    mapping = dict(mapping or {})
    root = Path(source)
    info = _read_info(root)
    fps = float(info["fps"])
    if not np.isfinite(fps) or fps <= 0:
        raise DatasetError(f"{root}/meta/info.json: fps must be > 0, got {info['fps']}")
    features = info["features"]
    videos = [n for n, f in features.items() if f.get("dtype") == "video"]
    stored_images = [n for n, f in features.items() if f.get("dtype") == "image"]
    if stored_images:
        raise DatasetError(f"{root}: features {stored_images} are stored as images in the parquet files; this "
                           "importer reads video features (LeRobot's default)")
    columns = [n for n, f in features.items() if f.get("dtype") != "video" and n not in BOOKKEEPING]
    if "action" not in columns and "action" not in mapping:
        raise DatasetError(f"{root}: no 'action' feature (features: {sorted(features)}); name it with --map NAME=action")
    keys = {n: feature_key(n, mapping) for n in [*columns, *videos]}
    clash = {k for k in keys.values() if list(keys.values()).count(k) > 1}
    if clash:
        raise ConfigError(f"features map to the same keys {sorted(clash)}; rename them with --map FEATURE=KEY")
    frames = _read_parquet(pq, sorted((root / "data").glob("**/*.parquet")), "data")
    missing = [c for c in ["episode_index", "timestamp", *columns] if c not in frames]
    if missing:
        raise DatasetError(f"{root}: the data parquet files lack the columns {missing}")
    episodes_meta = _read_parquet(pq, sorted((root / "meta" / "episodes").glob("**/*.parquet")), "meta/episodes") \
        if videos else {}
    if robot is not None:
        robot = get_robot(robot).name
    elif str(info.get("robot_type", "")).lower() in ROBOTS:
        robot = str(info["robot_type"]).lower()
    attrs = {"dt": 1.0 / fps, "cameras": [keys[v][4:] if keys[v].startswith("img_") else keys[v] for v in videos],
             "source": {"format": "lerobot", "path": str(root), "robot_type": info.get("robot_type"),
                        "features": {n: keys[n] for n in keys}}}
    if robot:
        attrs["robot"] = robot
    if task:
        attrs["task"] = task
    av = require_module("av", "fastdp import lerobot (video features)") if videos else None
    episode_index = np.asarray(frames["episode_index"]).reshape(-1)
    order = np.argsort(np.asarray(frames.get("index", np.arange(len(episode_index)))), kind="stable")
    report = {"source": "lerobot", "path": str(root), "episodes": []}
    cache: dict = {}
    with staged_dataset(out, attrs, overwrite) as buffer:
        for ep in sorted(set(episode_index.tolist())):
            rows = order[episode_index[order] == ep]
            episode = {}
            for name in columns:
                values = [frames[name][i] for i in rows]
                array = np.asarray(values)
                if array.dtype == object:
                    raise DatasetError(f"{root}: feature {name} of episode {ep} has rows of different lengths")
                array = array.reshape(len(rows), -1)
                episode[keys[name]] = array.astype(bool) if array.dtype == bool else array.astype(np.float32)
            stamps = np.asarray([frames["timestamp"][i] for i in rows], np.float64).reshape(-1)
            for name in videos:
                episode[keys[name]] = _video_frames(av, root, info, episodes_meta, ep, name, stamps, fps, image_size,
                                                    cache)
            for name in ("reward", "done"):
                if name in episode:
                    episode[name] = episode[name].reshape(-1)
            buffer.add_episode(episode)
            report["episodes"].append({"episode_index": int(ep), "steps": len(rows)})
        images = [keys[v] for v in videos]
        if images:
            buffer.update_attrs({"image_size": list(buffer[images[0]].shape[1:3])})
    return report


def _video_frames(av, root, info, meta, ep, name, stamps, fps, image_size, cache) -> np.ndarray:
    where = f"{root}: video {name} of episode {ep}"
    try:
        row = list(meta["episode_index"]).index(ep)
        chunk = int(meta[f"videos/{name}/chunk_index"][row])
        file = int(meta[f"videos/{name}/file_index"][row])
        start = float(meta[f"videos/{name}/from_timestamp"][row])
    except (KeyError, ValueError):
        raise DatasetError(f"{where}: meta/episodes does not locate it (episode_index, videos/{name}/chunk_index, "
                           "file_index, from_timestamp)") from None
    template = info.get("video_path", "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    path = root / template.format(video_key=name, chunk_index=chunk, file_index=file)
    times, decoded = _decode(av, path, cache)
    wanted = start + stamps
    if len(times) == 1:
        idx = np.zeros(len(wanted), int)
    else:
        hi = np.clip(np.searchsorted(times, wanted), 1, len(times) - 1)
        idx = np.where(np.abs(times[hi - 1] - wanted) <= np.abs(times[hi] - wanted), hi - 1, hi)
    off = np.abs(times[idx] - wanted)
    if np.any(off > 0.5 / fps + 1e-6):
        k = int(np.argmax(off))
        raise DatasetError(f"{where}: no video frame near t={wanted[k]:.3f} s in {path} (nearest is {off[k]:.3f} s "
                           "away); the video is shorter than the episode or the timestamps are wrong")
    shapes = {decoded[i].shape for i in idx}
    if len(shapes) > 1:
        raise DatasetError(f"{where}: frames of mixed sizes {sorted(shapes)}")
    out = [decoded[i] for i in idx]
    if image_size is not None:
        out = [resize_rgb(f, image_size) for f in out]
    return np.stack(out).astype(np.uint8)
