"""`fastdp import rosbag2` on bags written by rosbags' writer (sqlite3 and mcap, Humble and Jazzy
definitions): arrays checked sample by sample against what was written, and bad bags refused."""

import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bagmaker import (ARM, FRONT_START, RECEIVE_DELAY, T0, WRIST_START, front_colour, latest, q_of, width_of, wrist_colour,
                      write_bag)
from fastdp_ros.cli.main import main
from fastdp_ros.data import ReplayBuffer
from fastdp_ros.data.importers.resample import hold, interpolate, time_grid

DT = 0.1


@pytest.fixture(scope="module", params=[("sqlite3", "humble"), ("mcap", "jazzy")], ids=["sqlite3", "mcap"])
def bag(request, tmp_path_factory):
    storage, distro = request.param
    path = tmp_path_factory.mktemp(storage) / "teleop"
    return write_bag(path, storage=storage, distro=distro), distro


def import_bag(args, out):
    return main(["import", "rosbag2", *args, "--out", str(out), "--image-size", "24x32"])


def test_imported_arrays_match_what_was_recorded(bag, tmp_path):
    rec, distro = bag
    out, report_path = tmp_path / "ds", tmp_path / "report.json"
    assert import_bag([str(rec.path), "--action-topic", "/fr3_arm_controller/joint_trajectory", "--ros-distro", distro,
                       "--report", str(report_path)], out) == 0
    buf = ReplayBuffer.open(out)
    attrs = buf.attrs
    assert attrs["robot"] == "fr3" and attrs["joint_names"] == ARM and attrs["dt"] == DT
    assert attrs["cameras"] == ["front", "wrist"]
    assert buf.n_episodes == 1
    ep = buf.get_episode(0)
    t = ep["timestamp"]
    # the grid starts when every stream has started (the wrist camera, last) and keeps dt
    np.testing.assert_allclose(t[0], T0 + WRIST_START, atol=1e-6)
    np.testing.assert_allclose(np.diff(t), DT, atol=1e-6)
    np.testing.assert_allclose(ep["joint_pos"], q_of(t - T0), atol=1e-5)
    np.testing.assert_allclose(ep["gripper"][:, 0], width_of(t - T0), atol=1e-6)
    for k, tk in enumerate(t):
        assert ep["img_front"][k].shape == (24, 32, 3)
        np.testing.assert_array_equal(ep["img_front"][k], np.broadcast_to(front_colour(latest(rec.front_stamps, tk)),
                                                                          (24, 32, 3)))
        np.testing.assert_array_equal(ep["img_wrist"][k], np.broadcast_to(wrist_colour(latest(rec.wrist_stamps, tk)),
                                                                          (24, 32, 3)))
        command = rec.commands[latest(rec.command_stamps, tk)]
        np.testing.assert_allclose(ep["action"][k, :7], command, atol=1e-6)
        np.testing.assert_allclose(ep["action"][k, 7], width_of(tk + DT - T0), atol=1e-6)  # the next width
    report = json.loads(report_path.read_text())
    joints = report["streams"]["/franka/joint_states"]
    # 1 kHz resampled to 10 Hz: every grid sample sits on a message, the rest are dropped
    assert joints["interpolated"] == 0 and joints["gaps"] == 0
    assert joints["dropped"] == joints["messages"] - len(t) - 1
    # the 15 Hz wrist camera: a frame per grid sample, none older than dt
    assert report["streams"]["/cameras/wrist/image_raw/compressed"]["gaps"] == 0


def test_without_a_command_topic_the_action_is_the_next_sample(bag, tmp_path):
    rec, distro = bag
    out = tmp_path / "ds"
    assert import_bag([str(rec.path), "--ros-distro", distro, "--camera", "/cameras/front/image_raw=img_cam",
                       "--dt", "0.05"], out) == 0
    buf = ReplayBuffer.open(out)
    assert buf.keys == ["action", "gripper", "img_cam", "joint_pos", "timestamp"]
    ep = buf.get_episode(0)
    t = ep["timestamp"]
    np.testing.assert_allclose(t[0], T0 + FRONT_START, atol=1e-6)
    np.testing.assert_allclose(ep["action"][:, :7], q_of(t + 0.05 - T0), atol=1e-5)
    np.testing.assert_allclose(ep["action"][:-1], np.concatenate([ep["joint_pos"], ep["gripper"]], 1)[1:], atol=1e-6)


def test_episodes_split_by_topic_and_by_bag(tmp_path):
    a = write_bag(tmp_path / "a", marker_at=(0.0, 0.7), storage="mcap")
    b = write_bag(tmp_path / "b", duration=0.8)
    out = tmp_path / "ds"
    assert import_bag([str(a.path), "--split-topic", "/episode_start"], out) == 0
    buf = ReplayBuffer.open(out)
    assert buf.n_episodes == 2
    first, second = buf.get_episode(0)["timestamp"], buf.get_episode(1)["timestamp"]
    assert first[-1] < T0 + 0.7 <= second[0] + 1e-6
    np.testing.assert_allclose(second[0], T0 + 0.7 + RECEIVE_DELAY, atol=1e-6)  # Empty has no header: bag time
    both = tmp_path / "both"
    assert import_bag([str(a.path), str(b.path)], both) == 0
    assert ReplayBuffer.open(both).n_episodes == 2


def test_float64_commands_with_the_gripper(tmp_path):
    rec = write_bag(tmp_path / "bag", command_type="float64")
    out = tmp_path / "ds"
    assert import_bag([str(rec.path), "--action-topic", "/forward_position_controller/commands"], out) == 0
    ep = ReplayBuffer.open(out).get_episode(0)
    for k, tk in enumerate(ep["timestamp"]):
        np.testing.assert_allclose(ep["action"][k], rec.commands[latest(rec.command_stamps, tk)], atol=1e-6)


def _fails_with(args, out, caplog, words):
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert import_bag(args, out) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert all(w in errors[0] for w in words), errors[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left behind


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_truncated_bag_is_one_line_and_no_dataset(storage, tmp_path, caplog):
    rec = write_bag(tmp_path / "bag", storage=storage, duration=0.5)
    data = next(p for p in rec.path.iterdir() if p.suffix in (".db3", ".mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    _fails_with([str(rec.path)], tmp_path / "ds", caplog, ["cannot read bag", str(rec.path)])


def test_bad_inputs_are_one_line_and_no_dataset(tmp_path, caplog):
    rec = write_bag(tmp_path / "bag", duration=0.5)
    out = tmp_path / "ds"
    _fails_with([str(rec.path), "--action-topic", "/nope"], out, caplog, ["no topic /nope"])
    _fails_with([str(rec.path), "--camera", "/nope/image_raw"], out, caplog, ["no topic /nope/image_raw"])
    _fails_with([str(rec.path), "--action-topic", "/franka/joint_states"], out, caplog, ["JointState", "expected"])
    _fails_with([str(rec.path), "--robot", "panda"], out, caplog, ["lacks joints"])
    _fails_with([str(rec.path), "--robot", "ur5"], out, caplog, ["unknown robot type 'ur5'"])
    _fails_with([str(tmp_path / "missing")], out, caplog, ["no bag at"])
    mixed = write_bag(tmp_path / "mixed", duration=0.5, mixed_sizes=True)
    _fails_with([str(mixed.path)], out, caplog, ["mixed sizes", "/cameras/front/image_raw"])


def test_an_existing_dataset_survives_a_failed_overwrite(tmp_path, caplog):
    rec = write_bag(tmp_path / "bag", duration=0.5)
    out = tmp_path / "ds"
    assert import_bag([str(rec.path)], out) == 0
    before = ReplayBuffer.open(out).n_steps
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert import_bag([str(rec.path)], out) == 2  # exists, no --overwrite
        assert import_bag([str(rec.path), "--overwrite", "--action-topic", "/nope"], out) == 2
    assert ReplayBuffer.open(out).n_steps == before
    assert import_bag([str(rec.path), "--overwrite", "--dt", "0.05"], out) == 0
    assert ReplayBuffer.open(out).n_steps > before


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.floats(1e-3, 0.5), min_size=1, max_size=40), dt=st.floats(0.01, 0.3),
       slope=st.floats(-5, 5), offset=st.floats(-5, 5))
def test_resampling_is_exact_on_lines_and_counts_every_message(steps, dt, slope, offset):
    stamps = 10.0 + np.concatenate([[0.0], np.cumsum(steps)])
    grid = time_grid(stamps[0], stamps[-1], dt)
    values, report = interpolate(stamps, offset + slope * stamps, grid, dt)
    np.testing.assert_allclose(values[:, 0], offset + slope * grid, atol=1e-9 * (1 + abs(slope) * 20))
    inside = int(np.count_nonzero(stamps <= grid[-1] + 1e-6))
    assert report.messages == inside and 0 <= report.dropped < inside
    assert report.interpolated <= len(grid) and report.gaps <= report.interpolated
    idx, held = hold(stamps, grid, dt)
    assert np.all(stamps[idx] <= grid + 1e-6)  # never a message from the future ...
    later = np.minimum(idx + 1, len(stamps) - 1)
    assert np.all((idx == len(stamps) - 1) | (stamps[later] > grid + 1e-6))  # ... and always the latest one
    assert held.messages == inside and held.dropped == inside - len(np.unique(idx))


def test_pose_commands_and_episodes_split_at_holes(tmp_path):
    rec = write_bag(tmp_path / "bag", duration=2.0, command_type="pose", hole=(0.8, 1.2))
    out = tmp_path / "ds"
    assert import_bag([str(rec.path), "--action-topic", "/cartesian_target", "--split-gap", "0.2"], out) == 0
    buf = ReplayBuffer.open(out)
    assert buf.n_episodes == 2 and "TCP pose target" in buf.attrs["action"]
    first, second = buf.get_episode(0), buf.get_episode(1)
    assert first["timestamp"][-1] < T0 + 0.8 and second["timestamp"][0] >= T0 + 1.2 - 1e-6
    for ep in (first, second):
        for k, tk in enumerate(ep["timestamp"]):
            np.testing.assert_allclose(ep["action"][k, :7], rec.commands[latest(rec.command_stamps, tk)], atol=1e-6)
            np.testing.assert_allclose(ep["action"][k, 7], width_of(tk + DT - T0), atol=1e-6)


def test_a_bag_without_message_definitions_reads_with_the_distros_types(tmp_path, caplog):
    """Humble's rosbag2 stores no message definitions: --ros-distro supplies them."""
    import sqlite3

    rec = write_bag(tmp_path / "bag", duration=0.5, distro="humble")
    with sqlite3.connect(next(rec.path.glob("*.db3"))) as db:
        db.execute("delete from message_definitions")
    out = tmp_path / "ds"
    assert import_bag([str(rec.path), "--ros-distro", "humble"], out) == 0
    ep = ReplayBuffer.open(out).get_episode(0)
    np.testing.assert_allclose(ep["joint_pos"], q_of(ep["timestamp"] - T0), atol=1e-5)
    _fails_with([str(rec.path), "--ros-distro", "rolling"], tmp_path / "other", caplog, ["--ros-distro must be one of"])
