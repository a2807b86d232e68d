"""The OOD-monitor node's logic through the methods its callbacks call: debounced latched stop,
reset, watchdogs for silent sensor streams and a paused command stream, scorer selection."""

import json

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from fastdp_ros.errors import ConfigError
from fastdp_ros import ros_messages as conv
from fastdp_ros.nodes.catalog import ModelEntry
from fastdp_ros.nodes.monitor_logic import MonitorConfig, MonitorLogic, MonitorStep, build_monitor
from fastdp_ros.nodes.parameters import MONITOR_PARAMETERS, STREAM_TIMEOUT_FLOOR, defaults
from fastdp_ros.nodes.sensors import SensorConfig
from fastdp_ros.policies import PolicySpec
from fastdp_ros.robots import FR3
from fastdp_ros.runtime.ood import BLANK_IMAGE_STD, CALIBRATION_FILE, LatchedMonitor, ModelScoreMonitor

TS = get_typestore(Stores.ROS2_HUMBLE)
SPEC = PolicySpec(image_keys=("img_front",), image_shape=(8, 8, 3), lowdim_dims={"joint_pos": 7}, action_dim=8,
                  dt=0.1, horizon=8, n_obs_steps=2, n_action_steps=4, robot="fr3")
CAMERA_PERIOD = 1 / 30
IN, OUT = 100, 220  # image brightness of in- and out-of-distribution frames


class BrightnessScorer(LatchedMonitor):
    """Score = the newest frame's mean brightness (0..1); frames brighter than 0.6 are OOD."""

    kind = "test"

    def __init__(self, fail=False, debounce=2):
        super().__init__(threshold=0.6, debounce=debounce, spec=SPEC)
        self.fail = fail

    def score(self, obs):
        if self.fail:
            raise RuntimeError("encoder exploded")
        return float(obs["img_front"][-1].mean() / 255.0)


class Clock:
    def __init__(self, t=500.0):
        self.t = t

    def __call__(self):
        return self.t


def params(**overrides):
    p = defaults(MONITOR_PARAMETERS)
    p.update(robot_type="fr3", image_keys=["img_front"], image_topics=["/camera/front/image_raw"])
    p.update(overrides)
    return p


def make_monitor(scorer=None, **overrides):
    p = params(**overrides)
    clock = Clock()
    sensors = SensorConfig.from_params(p, ["img_front"], SPEC.image_shape, wants_tcp_pose=False)
    return MonitorLogic(scorer or BrightnessScorer(), MonitorConfig.from_params(p), sensors, clock), clock


def header(t):
    sec, nanosec = conv.seconds_to_sec_nanosec(t)
    return TS.types["std_msgs/msg/Header"](stamp=TS.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                           frame_id="")


def image_msg(t, value):
    msg = TS.types["sensor_msgs/msg/Image"](header=header(t), height=0, width=0, encoding="", is_bigendian=0, step=0,
                                            data=np.empty(0, np.uint8))
    texture = 20 * (np.indices((8, 8)).sum(0) % 2 * 2 - 1)  # a checkerboard of +-20: mean `value`, not blank
    conv.fill_image(msg, np.repeat((value + texture)[..., None], 3, axis=2).astype(np.uint8), "rgb8")
    return msg


def joint_msg(t):
    return TS.types["sensor_msgs/msg/JointState"](header=header(t), name=FR3.joint_names(),
                                                  position=FR3.home_position.copy(), velocity=np.empty(0),
                                                  effort=np.empty(0))


def frame(monitor, clock, value, camera=True, joints=True):
    """One camera period: sensors, the step that submits, the check, the step that collects."""
    clock.t += CAMERA_PERIOD
    if camera:
        assert monitor.on_image("img_front", image_msg(clock.t, value), clock.t)
    if joints:
        assert monitor.on_joint_state(joint_msg(clock.t), clock.t)
    first = monitor.step(clock.t)
    monitor.worker.wait_idle(10)
    second = monitor.step(clock.t)
    return first.scores + second.scores, MonitorStep(second.scores, second.stopped, first.changed or second.changed)


@pytest.fixture
def monitor():
    m, clock = make_monitor()
    yield m, clock
    m.close()


def test_in_distribution_frames_never_stop(monitor):
    m, clock = monitor
    scores = []
    for _ in range(30):
        s, step = frame(m, clock, IN)
        scores += s
        assert not step.stopped and not step.changed
    assert len(scores) == 30 and np.allclose(scores, IN / 255)
    entry = m.diagnostics(clock.t)[0]
    assert entry.level == "OK" and entry.values["checks"] == "30" and entry.values["threshold"] == "0.6"


def test_a_blank_camera_frame_stops_though_its_brightness_is_in_distribution(monitor):
    m, clock = monitor
    for _ in range(5):
        frame(m, clock, IN)
    for _ in range(m.monitor.debounce):  # a blank frame counts as over the threshold, debounced as any
        clock.t += CAMERA_PERIOD
        msg = image_msg(clock.t, IN)
        conv.fill_image(msg, np.full((8, 8, 3), IN, np.uint8), "rgb8")  # a covered lens
        assert m.on_image("img_front", msg, clock.t) and m.on_joint_state(joint_msg(clock.t), clock.t)
        m.step(clock.t)
        m.worker.wait_idle(10)
        step = m.step(clock.t)
    assert step.stopped and "'img_front' sends a blank frame" in m.diagnostics(clock.t)[0].message
    assert defaults(MONITOR_PARAMETERS)["blank_image_std"] == BLANK_IMAGE_STD == m.monitor.min_image_std


def test_out_of_distribution_stops_after_debounce_and_reset_clears(monitor):
    m, clock = monitor
    for _ in range(5):
        frame(m, clock, IN)
    t_first = clock.t + CAMERA_PERIOD
    s, step = frame(m, clock, OUT)
    assert s == [pytest.approx(OUT / 255)] and not step.stopped  # one frame is noise (debounce 2)
    s, step = frame(m, clock, OUT)
    assert step.stopped and step.changed
    assert clock.t - t_first <= 0.1  # within 100 ms of the first OOD frame at 30 frames/s
    assert "out of distribution: score 0.863 > threshold 0.6 for 2 consecutive frames" in m.latch.reason
    s, step = frame(m, clock, IN)  # latched: in-distribution frames do not release it
    assert step.stopped and not step.changed
    assert m.diagnostics(clock.t)[0].level == "ERROR"
    released = m.reset(clock.t)
    assert released == ["out of distribution: score 0.863 > threshold 0.6 for 2 consecutive frames"]
    s, step = frame(m, clock, IN)
    assert not step.stopped and step.changed  # the node publishes the lowered flag


def test_single_outliers_do_not_stop(monitor):
    m, clock = monitor
    for k in range(20):
        _, step = frame(m, clock, OUT if k % 2 else IN)
        assert not step.stopped


def test_checks_are_rate_limited(monitor):
    m, clock = monitor
    m.config = MonitorConfig.from_params(params(max_check_rate=10.0))
    scores = []
    for _ in range(30):  # one second of 30 Hz frames
        scores += frame(m, clock, IN)[0]
    assert 9 <= len(scores) <= 11


def test_silent_camera_stops_once_it_has_started(monitor):
    m, clock = monitor
    for _ in range(10):  # joints only: a camera that never started does not latch (the policy waits for it)
        _, step = frame(m, clock, IN, camera=False)
        assert not step.stopped
    assert m.diagnostics(clock.t)[0].message == "no data yet on img_front"
    for _ in range(12):  # more than stream_timeout_periods samples: its rate is known
        frame(m, clock, IN)
    for _ in range(int(STREAM_TIMEOUT_FLOOR / CAMERA_PERIOD) - 1):  # within the floor (> 10 camera periods)
        _, step = frame(m, clock, IN, camera=False)
        assert not step.stopped, m.latch.reason
    for _ in range(2):
        _, step = frame(m, clock, IN, camera=False)
    assert step.stopped and "stream 'img_front' went silent" in m.latch.reason
    m.reset(clock.t)
    _, step = frame(m, clock, IN, camera=False)
    assert step.stopped  # a standing fault latches again


def test_a_starting_stream_gets_twice_its_limit():
    """While every process of a graph starts, delivery stalls: a stream's limit is doubled until
    it has delivered stream_timeout_periods samples."""
    m, clock = make_monitor()
    try:
        frame(m, clock, IN)
        assert m.buffer.max_age("img_front") == 2 * STREAM_TIMEOUT_FLOOR
        for _ in range(10):
            frame(m, clock, IN)
        assert m.buffer.max_age("img_front") == STREAM_TIMEOUT_FLOOR
    finally:
        m.close()


def test_stream_limit_follows_the_streams_measured_period():
    """A 2.5 Hz camera is healthy at 2.5 Hz: its limit is 10 of its periods (4 s), not the
    floor; the floor still holds for a fast stream."""
    m, clock = make_monitor()
    try:
        for _ in range(12):  # 4.8 s of a 2.5 Hz camera (rate known after 10 frames), joints at 30 Hz
            assert m.on_image("img_front", image_msg(clock.t, IN), clock.t)
            for _ in range(12):
                frame(m, clock, IN, camera=False)
        assert m.buffer.period("img_front") == pytest.approx(12 * CAMERA_PERIOD)
        assert m.buffer.max_age("img_front") == pytest.approx(10 * 12 * CAMERA_PERIOD)
        assert m.buffer.max_age("joint_pos") == STREAM_TIMEOUT_FLOOR
        for _ in range(int(3.5 / CAMERA_PERIOD)):  # silent for 3.9 s in all: within its limit
            frame(m, clock, IN, camera=False)
        assert not m.latch.stopped, m.latch.reason
        for _ in range(int(0.2 / CAMERA_PERIOD)):
            frame(m, clock, IN, camera=False)
        assert m.latch.stopped and "stream 'img_front' went silent" in m.latch.reason
    finally:
        m.close()


def test_paused_command_stream_stops(monitor):
    m, clock = monitor
    for _ in range(10):  # no commands yet: the policy may not be active
        assert not frame(m, clock, IN)[1].stopped
    for _ in range(5):
        m.on_command(clock.t)
        assert not frame(m, clock, IN)[1].stopped
    for _ in range(int(0.6 / CAMERA_PERIOD)):  # 0.6 s without commands > command_timeout
        _, step = frame(m, clock, IN)
        if step.stopped:
            break
    assert step.stopped and "command stream paused" in m.latch.reason
    assert m.reset(clock.t)
    assert not frame(m, clock, IN)[1].stopped  # released: the window counts from the release
    m.on_command(clock.t)
    assert not frame(m, clock, IN)[1].stopped
    for _ in range(int(0.6 / CAMERA_PERIOD)):  # a policy that died across the release is flagged again
        _, step = frame(m, clock, IN)
        if step.stopped:
            break
    assert step.stopped and "command stream paused" in m.latch.reason


def test_encoder_failure_stops():
    m, clock = make_monitor(BrightnessScorer(fail=True))
    try:
        frame(m, clock, IN)
        assert m.latch.stopped and "OOD encoder failed: RuntimeError: encoder exploded" in m.latch.reason
    finally:
        m.close()


def test_monitor_config_validation():
    with pytest.raises(ConfigError, match="max_check_rate"):
        MonitorConfig.from_params(params(max_check_rate=0.0))
    with pytest.raises(ConfigError, match="command_timeout"):
        MonitorConfig.from_params(params(command_timeout=-1.0))
    with pytest.raises(ConfigError, match="stream_timeout_floor"):
        MonitorConfig.from_params(params(stream_timeout_floor=0.0))
    assert MonitorConfig.from_params(params()).stream_timeouts == (STREAM_TIMEOUT_FLOOR, 10.0)


def test_scorer_choice(tmp_path):
    class FakeAlt:
        spec, threshold = SPEC, 0.25

        def ood_score(self, obs):
            return 0.5

    loaded = []

    def loader(path, **options):
        loaded.append((path, options))
        return FakeAlt()

    alt = ModelEntry("alt", tmp_path, {}, {"policy_type": "alt"})
    scorer = build_monitor(alt, params(), loader)
    assert isinstance(scorer, ModelScoreMonitor) and scorer.kind == "alt" and scorer.debounce == 1
    assert scorer.threshold == 0.25 and scorer.score({}) == 0.5
    with pytest.raises(ConfigError, match="debounce must be >= 1"):
        build_monitor(alt, params(debounce=0), loader)
    assert loaded == [(str(tmp_path), {"device": "cpu"})]
    dp = ModelEntry("dp", tmp_path, {}, {"policy_type": "dp"})
    with pytest.raises(ConfigError, match="without an OOD index of its own .* set ood_dataset"):
        build_monitor(dp, params(), loader)


def test_threshold_from_the_calibration_report_or_the_parameter(tmp_path):
    """scripts/calibrate_ood.py's report beside the model sets the threshold; the parameter
    overrides it; a broken report is refused with the reason."""
    class FakeAlt:
        spec, threshold = SPEC, 0.25

        def ood_score(self, obs):
            return 0.5

    alt = ModelEntry("alt", tmp_path, {}, {"policy_type": "alt"})
    load = lambda path, **options: FakeAlt()  # noqa: E731
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"threshold": 0.46, "calibration": {"target_per_hour": 0.1}}))
    scorer = build_monitor(alt, params(), load)
    assert scorer.threshold == 0.46 and "0.1 false stops per hour" in scorer.threshold_source
    scorer = build_monitor(alt, params(ood_threshold=0.5), load)
    assert scorer.threshold == 0.5 and scorer.threshold_source == "ood_threshold parameter"
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="is not a calibration report"):
        build_monitor(alt, params(), load)
    (tmp_path / CALIBRATION_FILE).unlink()
    assert build_monitor(alt, params(), load).threshold == 0.25  # the model's own
    with pytest.raises(ConfigError, match="ood_threshold must be >= 0"):
        build_monitor(alt, params(ood_threshold=-1.0), load)
    assert build_monitor(alt, params(blank_image_std=0.0), load).min_image_std == 0.0  # the check off
    with pytest.raises(ConfigError, match="blank_image_std must be >= 0"):
        build_monitor(alt, params(blank_image_std=float("nan")), load)
