"""`fastdp import lerobot` on a LeRobot v3 folder the test writes with pyarrow and PyAV (two
episodes in one parquet file and one lossless mp4 per camera), checked frame by frame."""

import json
import logging

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastdp_ros.cli.main import main
from fastdp_ros.data import ReplayBuffer

FPS = 10
LENGTHS = (6, 9)
CAMERAS = ("observation.images.front", "observation.images.wrist")
H, W = 24, 32


def write_lerobot(root, lengths=LENGTHS, version="v3.0", drop_action=False):
    rng = np.random.default_rng(0)
    total = sum(lengths)
    state = rng.normal(size=(total, 9)).astype(np.float32)
    action = rng.normal(size=(total, 8)).astype(np.float32)
    reward = rng.normal(size=total).astype(np.float32)
    episode = np.repeat(np.arange(len(lengths)), lengths)
    frame = np.concatenate([np.arange(n) for n in lengths])
    timestamp = (frame / FPS).astype(np.float32)
    images = {cam: rng.integers(0, 256, (total, H, W, 3), dtype=np.uint8) for cam in CAMERAS}
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    features = {"observation.state": {"dtype": "float32", "shape": [9]},
                "action": {"dtype": "float32", "shape": [8]},
                "next.reward": {"dtype": "float32", "shape": [1]},
                "timestamp": {"dtype": "float32", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
                "episode_index": {"dtype": "int64", "shape": [1]}, "index": {"dtype": "int64", "shape": [1]},
                **{cam: {"dtype": "video", "shape": [H, W, 3]} for cam in CAMERAS}}
    if drop_action:
        del features["action"]
    info = {"codebase_version": version, "robot_type": "fr3", "fps": FPS, "features": features,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    table = {"observation.state": list(state), "next.reward": reward, "timestamp": timestamp,
             "frame_index": frame, "episode_index": episode, "index": np.arange(total)}
    if not drop_action:
        table["action"] = list(action)
    # rows out of order: the importer orders them by `index`
    perm = np.random.default_rng(1).permutation(total)
    pq.write_table(pa.table({k: [v[i] for i in perm] for k, v in table.items()}),
                   root / "data" / "chunk-000" / "file-000.parquet")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    meta = {"episode_index": list(range(len(lengths))), "length": list(lengths)}
    for cam in CAMERAS:
        meta[f"videos/{cam}/chunk_index"] = [0] * len(lengths)
        meta[f"videos/{cam}/file_index"] = [0] * len(lengths)
        meta[f"videos/{cam}/from_timestamp"] = [float(s / FPS) for s in starts]
        path = root / "videos" / cam / "chunk-000" / "file-000.mp4"
        path.parent.mkdir(parents=True)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264rgb", rate=FPS, options={"crf": "0", "preset": "ultrafast"})
            stream.width, stream.height, stream.pix_fmt = W, H, "rgb24"
            for img in images[cam]:
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    pq.write_table(pa.table(meta), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    return {"state": state, "action": action, "reward": reward, "images": images, "starts": starts}


def test_lerobot_arrays_match_what_was_written(tmp_path):
    written = write_lerobot(tmp_path / "lr")
    out = tmp_path / "ds"
    assert main(["import", "lerobot", str(tmp_path / "lr"), "--out", str(out)]) == 0
    buf = ReplayBuffer.open(out)
    assert buf.n_episodes == 2 and list(buf.episode_lengths) == list(LENGTHS)
    assert buf.keys == ["action", "img_front", "img_wrist", "reward", "state"]
    assert buf.attrs["dt"] == pytest.approx(1 / FPS) and buf.attrs["robot"] == "fr3"
    assert buf.attrs["cameras"] == ["front", "wrist"] and buf.attrs["image_size"] == [H, W]
    data = buf.load_to_memory()
    np.testing.assert_array_equal(data["state"], written["state"])
    np.testing.assert_array_equal(data["action"], written["action"])
    np.testing.assert_array_equal(data["reward"], written["reward"])
    for cam, key in zip(CAMERAS, ("img_front", "img_wrist")):
        np.testing.assert_array_equal(data[key], written["images"][cam])  # lossless video: every pixel


def test_lerobot_mapping_and_resize(tmp_path):
    write_lerobot(tmp_path / "lr")
    out = tmp_path / "ds"
    assert main(["import", "lerobot", str(tmp_path / "lr"), "--out", str(out), "--map", "observation.state=joint_pos",
                 "--map", "observation.images.wrist=img_hand", "--image-size", "12x16"]) == 0
    buf = ReplayBuffer.open(out)
    assert "joint_pos" in buf and buf["img_hand"].shape[1:] == (12, 16, 3)


def test_bad_lerobot_folders_are_one_line(tmp_path, caplog):
    write_lerobot(tmp_path / "v2", version="v2.1")
    write_lerobot(tmp_path / "noact", drop_action=True)
    short = tmp_path / "short"
    write_lerobot(short)
    # the episode table says episode 1 starts later than the video holds
    meta = pq.read_table(short / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pydict()
    meta["videos/observation.images.front/from_timestamp"][1] = 10.0
    pq.write_table(pa.table(meta), short / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    for source, words in [("v2", "v2.1"), ("noact", "no 'action' feature"), ("short", "no video frame near"),
                          ("missing", "no meta/info.json")]:
        caplog.clear()
        out = tmp_path / f"out_{source}"
        with caplog.at_level(logging.ERROR, logger="fastdp"):
            assert main(["import", "lerobot", str(tmp_path / source), "--out", str(out)]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0], errors
        assert not out.exists()
