"""What the OOD-monitor node does, without ROS.

The monitor is independent of the policy node: its own encoder and training-set index, loaded
from a model directory, on the same camera and joint topics. Its score, debounce and latched
OOD verdict are runtime.ood's monitor, the one `fastdp run` uses inside the policy runner
(a runtime.ood.LatchedMonitor). Two kinds:

  ALT model       runtime.ood.model_monitor: with a camera table in the model directory
                  (scripts/calibrate_ood.py --camera-table), each camera's encoder features
                  against the demonstrations', the larger of the per-camera distances
                  (CameraFeatureMonitor); without one, the model's own score, 1 - cosine
                  similarity to the nearest frame of its table (ModelScoreMonitor)
  any other model its `encode` + kNN distance to the training embeddings of `ood_dataset`,
                  threshold calibrated on held-out episodes (runtime.ood.monitor_from_dataset)

Scoring runs in a worker thread on the newest observation (never queued), at most
`max_check_rate` times a second. `debounce` consecutive checks over the threshold latch the
stop. The threshold: the `ood_threshold` parameter, else the model directory's
ood_calibration.json (false stops per hour, scripts/calibrate_ood.py), else the model's own.
Watchdogs latch it too: a sensor stream that has started and then goes silent for
longer than its max age, and the policy's command stream once it has started and then
pauses for longer than `command_timeout`. The stop stays latched until `reset()`
(the node's `~/reset` service).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from fastdp_ros.errors import ConfigError
from fastdp_ros.nodes.catalog import ModelEntry
from fastdp_ros.ros_messages import DiagnosticEntry
from fastdp_ros.nodes.parameters import MONITOR_NODE_NAME, stream_timeouts
from fastdp_ros.nodes.sensors import SensorConfig, SensorIntake
from fastdp_ros.runtime.buffer import ObservationBuffer
from fastdp_ros.runtime.ood import LatchedMonitor, ModelScoreMonitor, model_monitor
from fastdp_ros.runtime.watchdog import StopLatch
from fastdp_ros.runtime.worker import InferenceWorker, LatencyRecord

log = logging.getLogger(__name__)


def build_monitor(entry: ModelEntry, params: dict, loader: Callable[..., Any] | None = None) -> LatchedMonitor:
    """The OOD monitor of a model directory (runtime.ood): ALT's own score, or a kNN monitor over
    `ood_dataset`; `kind` names which, with the `debounce` parameter.

    Its threshold, first found of: the `ood_threshold` parameter (> 0); the model directory's
    ood_calibration.json (scripts/calibrate_ood.py: set for false stops per hour on the policy's
    closed-loop rollouts; for an `ood_dataset` monitor, one made for that dataset); the threshold
    calibrated with the model (or the `ood_quantile` of held-out `ood_dataset` frames).
    `threshold_source` says which."""
    debounce = int(params["debounce"])
    if debounce < 1:
        raise ConfigError(f"debounce must be >= 1 check, got {debounce}")
    monitor = _build_monitor(entry, params, loader, debounce)
    threshold = float(params["ood_threshold"])
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ConfigError(f"ood_threshold must be >= 0 (0: the calibrated one), got {threshold}")
    if threshold > 0:
        monitor.threshold, monitor.threshold_source = threshold, "ood_threshold parameter"
    blank = float(params["blank_image_std"])
    if not (math.isfinite(blank) and blank >= 0):
        raise ConfigError(f"blank_image_std must be >= 0 (0: off), got {blank}")
    monitor.min_image_std = blank
    return monitor


def _build_monitor(entry: ModelEntry, params: dict, loader: Callable[..., Any] | None,
                   debounce: int) -> LatchedMonitor:
    if loader is None:
        from fastdp_ros.policies.base import load_policy as loader
    from fastdp_ros.policies.base import policies_with, policy_entry

    try:  # a policy that scores its own observations (ALT: distance to its table) needs no dataset
        scores_itself = policy_entry(entry.policy_type).can("ood_score")
    except ConfigError:  # not a registered type: the loader says what it is
        scores_itself = False
    options = {"device": params["device"], **entry.options}
    if scores_itself and not params["ood_dataset"]:
        monitor = model_monitor(loader(str(entry.path), **options), entry.path, debounce=debounce)
        monitor.kind = entry.policy_type if isinstance(monitor, ModelScoreMonitor) else f"{entry.policy_type} per camera"
        return monitor
    if not params["ood_dataset"]:
        scorers = ", ".join(e.name for e in policies_with(capability="ood_score"))
        raise ConfigError(f"{entry.path} is a {entry.policy_type!r} model without an OOD index of its own (only "
                          f"{scorers} models have one): set ood_dataset to the dataset it was trained on")
    from fastdp_ros.runtime.ood import monitor_from_dataset

    samples, quantile = int(params["ood_samples"]), float(params["ood_quantile"])
    if samples < 1 or not 0.0 < quantile < 1.0:
        raise ConfigError(f"need ood_samples >= 1 and 0 < ood_quantile < 1, got {samples}, {quantile}")
    encoder = loader(str(entry.path), **options)
    return monitor_from_dataset(encoder, params["ood_dataset"], samples=samples, quantile=quantile,
                                debounce=debounce, model_dir=entry.path)


@dataclass(frozen=True)
class MonitorConfig:
    min_check_period: float  # seconds between checks (1 / max_check_rate)
    command_timeout: float
    stream_timeouts: tuple[float, float]  # (floor s, periods): parameters.stream_timeouts

    @classmethod
    def from_params(cls, params: dict) -> "MonitorConfig":
        rate, timeout = float(params["max_check_rate"]), float(params["command_timeout"])
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"max_check_rate must be > 0 Hz, got {rate}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigError(f"command_timeout must be > 0 s, got {timeout}")
        return cls(1.0 / rate, timeout, stream_timeouts(params))


@dataclass(frozen=True)
class MonitorStep:
    """What one step produced: OOD scores to publish, the stop state, whether it changed."""

    scores: list[float]
    stopped: bool
    changed: bool


class MonitorLogic:
    """Sensor samples in, OOD checks in a worker thread, watchdogs, a latched stop out."""

    def __init__(self, monitor: LatchedMonitor, config: MonitorConfig, sensor_config: SensorConfig,
                 clock: Callable[[], float] = time.monotonic, on_result: Callable[[], None] | None = None):
        """`on_result`: called from the worker thread when a check finished (InferenceWorker), so
        the node can run `step` at once rather than at its next timer tick."""
        self.monitor = monitor  # score, debounce and OOD latch: runtime.ood, as in the policy runner
        self.config = config
        self.clock = clock
        self.spec = monitor.spec
        self.buffer = ObservationBuffer.for_spec(self.spec, config.stream_timeouts[0],
                                                 age_periods=config.stream_timeouts[1])
        self.intake = SensorIntake(sensor_config, self._observe)
        self.latch = StopLatch()
        self.worker = InferenceWorker(lambda item: monitor.observe(*item), "ood", None, clock,
                                      on_result=on_result).start()
        self._lock = threading.Lock()
        self._last_checked: float | None = None  # observation time of the last check
        self._last_submit: float | None = None  # node time of the last check
        self._last_command: float | None = None
        self._was_stopped = False
        self.counts = {"commands": 0, "rejected_samples": 0}

    def _observe(self, key: str, stamp: float, value) -> None:
        try:
            self.buffer.push(key, stamp, value)
        except Exception as e:  # noqa: BLE001 - ObservationError: a bad sample cannot be trusted
            self.counts["rejected_samples"] += 1
            self.latch.raise_stop("observation", f"observation rejected: {e}", self.clock(), key=key)

    # callbacks
    def on_image(self, key: str, msg, now: float, compressed: bool = False) -> bool:
        return self.intake.image(key, msg, now, compressed)

    def on_joint_state(self, msg, now: float) -> bool:
        return self.intake.joint_state(msg, now)

    def on_gripper_state(self, msg, now: float) -> bool:
        return self.intake.gripper_state(msg, now)

    def on_command(self, now: float) -> None:
        """A command of the policy arrived (its content is the policy's business)."""
        self._last_command = float(now)
        self.counts["commands"] += 1

    # the periodic step
    def step(self, now: float) -> MonitorStep:
        """Collect finished checks (debounce), run the watchdogs, submit the newest observation."""
        with self._lock:
            scores = []
            for result in self.worker.poll():
                if result.error is not None:
                    self.latch.raise_stop("ood", f"OOD encoder failed: {result.error}", now, key="encoder")
                    continue
                scores.append(result.output.score)
            if self.monitor.stopped:
                self.latch.raise_stop("ood", self.monitor.stop_reason or "out of distribution", now, key="ood")
            self._watchdogs(now)
            self._submit(now)
            stopped = self.latch.stopped
            changed, self._was_stopped = stopped != self._was_stopped, stopped
            return MonitorStep(scores, stopped, changed)

    def _watchdogs(self, now: float) -> None:
        for key, age in sorted(self.buffer.stale(now).items()):
            if self.buffer.latest_stamp(key) is None:
                continue  # never started: reported in diagnostics, the policy node will not move without it
            self.latch.raise_stop("stream", f"stream {key!r} went silent: last sample {age:.3f} s ago (max "
                                            f"{self.buffer.max_age(key):.3f} s)", now, key=key)
        if self._last_command is not None and now - self._last_command > self.config.command_timeout:
            self.latch.raise_stop("command", f"the policy's command stream paused: last command "
                                             f"{now - self._last_command:.3f} s ago (max "
                                             f"{self.config.command_timeout:.3f} s)", now, key="command")

    def _submit(self, now: float) -> None:
        """Check the newest observation if it is new and the last check was a check period ago.
        The period is counted on the node's clock, not between sensor stamps: cameras that are not
        synchronised advance the observation time in uneven steps, which would otherwise skip
        checks and slow the stop down."""
        t_obs = self.buffer.observation_time(self.spec.obs_keys)
        if t_obs is None or t_obs == self._last_checked:
            return
        # 1e-6 s of slack: a timer one period later must not miss the check by rounding
        if self._last_submit is not None and now - self._last_submit < self.config.min_check_period - 1e-6:
            return
        built = self.buffer.observation(self.spec)
        if built is not None:
            self.worker.submit(built, built[1])
            self._last_checked, self._last_submit = built[1], now

    def reset(self, now: float) -> list[str]:
        """Release the latched stop (an operator's decision); returns the reasons released. A
        fault that persists (a silent stream) latches again at the next step; once commands
        have been seen, the command watchdog counts from the release: a policy that died just
        before or after it (no command within `command_timeout`) is flagged again."""
        with self._lock:
            released = [e.reason for e in self.latch.reset()]
            self.monitor.reset()
            if self._last_command is not None:
                self._last_command = max(self._last_command, float(now))
            return released

    def diagnostics(self, now: float) -> list[DiagnosticEntry]:
        lat = LatencyRecord.percentiles_ms(self.worker.latency.recent)
        m = self.monitor
        values = {
            "scorer": getattr(m, "kind", type(m).__name__),
            "threshold": f"{m.threshold:.4g}",
            "threshold_source": getattr(m, "threshold_source", "-"),
            "last_score": "-" if m.last is None else f"{m.last.score:.4g}",
            "consecutive_over": "0" if m.last is None else str(m.last.consecutive),
            "debounce": str(m.debounce),
            "checks": str(m.counts["frames"]),
            "over_threshold": str(m.counts["over"]),
            "check_p50_ms": "-" if not lat else f"{lat['p50']:.2f}",
            "check_max_ms": "-" if not lat else f"{lat['max']:.2f}",
            "commands_seen": str(self.counts["commands"]),
            "command_age_ms": "-" if self._last_command is None else f"{1e3 * (now - self._last_command):.1f}",
            "stop_reasons": "; ".join(e.reason for e in self.latch.active) or "-",
        }
        ages = self.buffer.ages(now)
        values.update({f"{k} age_ms": ("never" if self.buffer.latest_stamp(k) is None else f"{1e3 * a:.1f}")
                       for k, a in ages.items()})
        values.update(self.intake.report(now))
        never = [k for k in self.buffer.keys if self.buffer.latest_stamp(k) is None]
        if self.latch.stopped:
            level, message = "ERROR", f"STOP: {self.latch.reason}"
        elif never:
            level, message = "WARN", f"no data yet on {', '.join(never)}"
        else:
            level, message = "OK", "in distribution"
        return [DiagnosticEntry(f"{MONITOR_NODE_NAME}: ood", level, message, values)]

    def close(self) -> None:
        self.worker.close()

