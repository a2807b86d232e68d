"""What the policy node does, without ROS: the node's callbacks call these methods and publish
what they return.

    logic = PolicyLogic(PolicyNodeConfig.from_params(params), catalog)
    logic.configure(params["policy"], params["model_dir"])   # lifecycle configure: load + warm up
    logic.activate()                                         # lifecycle activate
    ... sensor callbacks:  logic.on_image(key, msg, now) / on_joint_state / on_gripper_state
    ... stop flag:         logic.on_stop_flag(msg.data, now)
    ... robot state:       logic.on_robot_state(mode, errors, now)
    ... control timer:     out = logic.tick(now); publish out (None: nothing to send yet)
    ... parameter change:  ok, reason = logic.request_policy(value)      (hot swap)
    ... ~/reset:           ok, message = logic.reset(now)
    ... diagnostics timer: logic.diagnostics(now)

Holding: the PolicyRunner's latched stop holds the arm (braking, then standing still) and the
node keeps publishing the held command. Sources of a stop here, besides the runner's own
watchdogs: the OOD monitor's flag (released when the flag falls, if nothing else holds the
arm), the Franka robot mode (REFLEX / USER_STOPPED; released by `~/reset` once the robot is
out of that mode, restarting from the measured state), an unusable sensor message.

Hot swap: `request_policy` checks the name or path synchronously (known name, directory
exists, config.json parses, the spec fits this runtime's sensors and action layout) and
refuses with the reason; an accepted swap loads and warms up in the background while the old
policy drives. A swap that fails later (corrupt weights, warm-up error) leaves the old policy
in charge; `poll_swap` then says which value the `policy` parameter should return to.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fastdp_ros.errors import ConfigError, FastDPError
from fastdp_ros.hardware import configure_threads
from fastdp_ros.nodes import kinematics
from fastdp_ros.nodes.catalog import ModelEntry, PolicyCatalog
from fastdp_ros.ros_messages import FRANKA_ROBOT_MODES, DiagnosticEntry
from fastdp_ros.nodes.parameters import COMMAND_INTERFACES, POLICY_NODE_NAME, command_topic, stream_timeouts
from fastdp_ros.nodes.sensors import SensorConfig, SensorIntake
from fastdp_ros.robots import get_robot
from fastdp_ros.runtime.runner import PolicyRunner, RunnerConfig, resolve_loader, warm_up
from fastdp_ros.runtime.safety import WorkspaceBox
from fastdp_ros.runtime.scheduler import BLEND_MODES

log = logging.getLogger(__name__)

#: Franka robot modes in which the arm does not follow commands: hold the policy
HOLD_ROBOT_MODES = {4: "REFLEX", 5: "USER_STOPPED"}

# Stop sources this node adds to the runner's latch (see runtime.watchdog.StopEvent.source)
MONITOR_SOURCE = "monitor"
ROBOT_SOURCE = "robot"


def parse_workspace(value: str) -> WorkspaceBox | None:
    """The `workspace` parameter: none | sim | x_min,y_min,z_min,x_max,y_max,z_max."""
    text = str(value).strip().lower()
    if text in ("", "none"):
        return None
    if text == "sim":
        from fastdp_ros.runtime.loop import SIM_WORKSPACE

        return SIM_WORKSPACE
    try:
        numbers = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != 6:
        raise ConfigError(f"workspace must be none, sim or six numbers x_min,y_min,z_min,x_max,y_max,z_max; "
                          f"got {value!r}")
    return WorkspaceBox(lower=tuple(numbers[:3]), upper=tuple(numbers[3:]))


@dataclass(frozen=True)
class PolicyNodeConfig:
    """The policy node's validated start-up parameters (everything but the dynamic `policy`)."""

    params: dict
    robot_type: str
    control_rate: float
    command_interface: str
    command_topic: str
    trajectory_lead_s: float
    base_frame: str
    workspace: WorkspaceBox | None
    backend: str
    device: str
    inference_threads: int
    stream_timeouts: tuple[float, float]  # (floor s, periods): parameters.stream_timeouts

    @classmethod
    def from_params(cls, params: dict) -> "PolicyNodeConfig":
        robot = get_robot(params["robot_type"])
        rate = float(params["control_rate"])
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"control_rate must be > 0 Hz, got {rate}")
        interface = str(params["command_interface"])
        if interface not in COMMAND_INTERFACES:
            raise ConfigError(f"command_interface must be one of {', '.join(COMMAND_INTERFACES)}, got {interface!r}")
        lead = int(params["trajectory_lead_ticks"])
        if lead < 1:
            raise ConfigError(f"trajectory_lead_ticks must be >= 1, got {lead}")
        if params["blend"] not in BLEND_MODES:
            raise ConfigError(f"blend must be one of {', '.join(BLEND_MODES)}, got {params['blend']!r}")
        if int(params["inference_threads"]) < 0:
            raise ConfigError(f"inference_threads must be >= 0, got {params['inference_threads']}")
        if float(params["diagnostics_period"]) <= 0:
            raise ConfigError(f"diagnostics_period must be > 0 s, got {params['diagnostics_period']}")
        prefix = params["joint_prefix"] or robot.joint_prefix
        return cls(params=dict(params), robot_type=robot.name, control_rate=rate, command_interface=interface,
                   command_topic=command_topic(params),
                   trajectory_lead_s=lead / rate, base_frame=params["base_frame"] or f"{prefix}_link0",
                   workspace=parse_workspace(params["workspace"]), backend=str(params["backend"]),
                   device=str(params["device"]), inference_threads=int(params["inference_threads"]),
                   stream_timeouts=stream_timeouts(params))


@dataclass(frozen=True)
class CommandOut:
    """One command to publish: joint targets (rad), gripper width (m), the TCP pose (position +
    quaternion wxyz) for Cartesian commands, and whether / why it holds."""

    t: float
    q: np.ndarray
    gripper: float
    held: bool
    stopped: bool
    reason: str | None
    pose: np.ndarray | None = None


@dataclass(frozen=True)
class SwapOutcome:
    """How an accepted hot swap ended: `ok`, a message, and (on failure) the `policy` value to
    set the parameter back to."""

    ok: bool
    message: str
    revert_to: str | None = None


def preload_swap_dependencies() -> None:
    """Import now what a later hot swap may import for the first time: the policy modules and
    faiss (retrieval-based policies). A first import holds the GIL while it loads its shared
    libraries (faiss: 50-110 ms measured), and a swap doing it in its background thread stalled
    the control timer for that long."""
    from fastdp_ros.policies.base import registered_policies
    from fastdp_ros.retrieval.index import import_faiss

    registered_policies()
    try:
        import_faiss()
    except ConfigError:
        pass  # a swap to a retrieval policy will say so


class PolicyLogic:
    """The policy node without ROS. `loader(path, **options) -> Policy` defaults to the engine
    loader (`load_engine_policy`, on `backend`); `clock` is the node's clock in seconds (sensor
    stamps are on it)."""

    def __init__(self, config: PolicyNodeConfig, catalog: PolicyCatalog, *,
                 loader: Callable[..., Any] | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.catalog = catalog
        self.clock = clock
        if loader is None:
            from fastdp_ros.runtime.runner import default_loader

            loader = default_loader()
        self._raw_loader = loader
        self.load = resolve_loader(loader, config.backend)
        self.robot = get_robot(config.robot_type)
        self.runner: PolicyRunner | None = None
        self.intake: SensorIntake | None = None
        self.active = False
        self.started = False
        self.threads: int | None = None  # set at configure; a swap loads with the same count
        self.active_value: str | None = None  # the `policy` value (name or path) now driving
        self.active_entry: ModelEntry | None = None
        self._pending: tuple[str, str, str] | None = None  # (value, path, previous value) of an accepted swap
        self._pending_entry: ModelEntry | None = None
        # tick, restarts and stop changes touch the runner's plan and filter: one at a time (the
        # node's executor may run sensor callbacks beside the control timer)
        self._lock = threading.RLock()
        self.external_stop = False
        self.robot_mode: int | None = None
        self.robot_errors: list[str] = []
        self._resync_after: float | None = None  # episode reset stamp: restart from the next joint state
        self._latest: dict[str, tuple[float, np.ndarray]] = {}
        self._tick_times: collections.deque = collections.deque(maxlen=max(2, int(5 * config.control_rate)))
        self._tick_work: collections.deque = collections.deque(maxlen=max(2, int(5 * config.control_rate)))
        self._max_gap = 0.0

    # ------------------------------------------------------------------ lifecycle

    def configure(self, policy_value: str, model_dir: str = "") -> str:
        """Load the start-up model (`model_dir` if given, else the policy name's), warm it up,
        build the runner and the sensor intake. Returns a one-line description."""
        entry = self.catalog.resolve(model_dir or policy_value)
        # the CLI's rule (fastdp_ros.hardware): half the usable CPUs, passive OpenMP waiting, so that
        # inference does not collapse when the robot computer's other processes share the cores
        threads = configure_threads(self.config.inference_threads or None, flag="inference_threads")
        self.threads = threads
        t0 = time.perf_counter()
        preload_swap_dependencies()
        policy = self.load(str(entry.path), **self._options(entry, threads))
        latency = warm_up(policy, calls=2)
        spec = policy.spec
        if spec.robot != self.robot.name:
            log.warning("%s was trained on a %s; this arm is a %s: the %s's joint limits apply", entry.path,
                        spec.robot, self.robot.name, self.robot.name)
        p = self.config.params
        runner_config = RunnerConfig(rate=self.config.control_rate, blend=p["blend"], robot=self.robot.name,
                                     velocity_scale=float(p["velocity_scale"]),
                                     acceleration_scale=float(p["acceleration_scale"]),
                                     replan_s=None if float(p["replan_period"]) < 0 else float(p["replan_period"]),
                                     stream_max_age_s=self.config.stream_timeouts[0],
                                     stream_age_periods=self.config.stream_timeouts[1])
        tcp_offset = float(p["tcp_offset"])
        fk = (lambda q: kinematics.tcp_transform(q, tcp_offset)[0]) if self.config.workspace is not None else None
        self.runner = PolicyRunner(policy, runner_config, loader=self._raw_loader, backend=self.config.backend,
                                   clock=self.clock, workspace=self.config.workspace, fk=fk,
                                   policy_name=str(entry.path))
        keys = self.runner.buffer.keys
        sensor_config = SensorConfig.from_params(p, [k for k in keys if self.runner.buffer.stream(k).image],
                                                 tuple(spec.image_shape) if spec.image_keys else None,
                                                 wants_tcp_pose="tcp_pose" in keys)
        unsupported = [k for k in keys if not self.runner.buffer.stream(k).image
                       and k not in ("joint_pos", "gripper", "tcp_pose")]
        if unsupported:
            self.runner.close()
            self.runner = None
            raise ConfigError(f"{entry.path} observes {unsupported}, which the ROS nodes do not provide "
                              f"(cameras, joint_pos, gripper, tcp_pose)")
        self.intake = SensorIntake(sensor_config, self._observe)
        self.active_value, self.active_entry = entry.name, entry
        if self.external_stop:
            self._raise_monitor_stop(self.clock())
        return (f"{entry.name} ({entry.policy_type}, {entry.path}) on {self.config.backend}: act() "
                f"{1e3 * latency:.1f} ms after {time.perf_counter() - t0:.1f} s loading and warm-up")

    def activate(self) -> None:
        """Start commanding (from the first tick at which every sensor stream has arrived)."""
        if self.runner is None:
            raise ConfigError("activate before configure")
        self.active = True

    def deactivate(self) -> None:
        """Stop commanding; the next activation restarts from the measured state (a latched
        stop stays latched)."""
        with self._lock:
            self.active = False
            self.started = False

    def cleanup(self) -> None:
        """Release the policy and the runner's threads."""
        with self._lock:
            self.active = False
            if self.runner is not None:
                self.runner.close()
            self.runner, self.intake, self.started = None, None, False
            self._latest.clear()

    def _options(self, entry: ModelEntry, threads: int) -> dict:
        options = {"device": self.config.device, **entry.options}
        if self.config.backend == "onnxruntime":
            options["threads"] = threads
        return options

    # ------------------------------------------------------------------ sensors

    def _observe(self, key: str, stamp: float, value) -> None:
        self._latest[key] = (stamp, value)
        if self.runner is not None:
            self.runner.observe(key, stamp, value)

    def on_image(self, key: str, msg, now: float, compressed: bool = False) -> bool:
        if self.intake is None:
            return False
        return self.intake.image(key, msg, now, compressed)

    def on_joint_state(self, msg, now: float) -> bool:
        if self.intake is None:
            return False
        ok = self.intake.joint_state(msg, now)
        since = self._resync_after
        if ok and since is not None and self.started and self.intake.q_stamp >= since:
            # the first joint state of the new episode: restart from it (the arm was moved there)
            self._resync_after = None
            self._restart(now, replay_since=since)
        return ok

    def on_gripper_state(self, msg, now: float) -> bool:
        if self.intake is None:
            return False
        return self.intake.gripper_state(msg, now)

    def on_episode_reset(self, stamp: float, now: float) -> None:
        """The simulation moved the arm to a new episode's start at `stamp`."""
        self._resync_after = float(stamp) if stamp > 0 else float(now)

    # ------------------------------------------------------------------ stop sources

    def _raise_monitor_stop(self, now: float) -> None:
        topic = self.config.params["stop_topic"]
        self.runner.latch.raise_stop(MONITOR_SOURCE, f"the OOD monitor's stop flag ({topic}) is raised", now,
                                     key="stop_flag")

    def on_stop_flag(self, stopped: bool, now: float) -> None:
        """The OOD monitor's latched flag: raised -> hold; lowered (its ~/reset) -> release, unless
        something else also holds the arm."""
        with self._lock:
            self._on_stop_flag(bool(stopped), now)

    def _on_stop_flag(self, stopped: bool, now: float) -> None:
        was, self.external_stop = self.external_stop, stopped
        if self.runner is None:
            return
        if stopped and not was:
            self._raise_monitor_stop(now)
        elif was and not stopped:
            active = self.runner.latch.active
            if active and all(e.source == MONITOR_SOURCE for e in active):
                self.runner.reset_stop()
                log.warning("stop flag lowered by the OOD monitor: resuming")
            elif active:
                log.warning("stop flag lowered, but the arm still holds for: %s (call ~/reset)",
                            "; ".join(e.reason for e in active if e.source != MONITOR_SOURCE))

    def on_robot_state(self, mode: int, errors: list[str], now: float) -> None:
        """franka_msgs/FrankaRobotState: REFLEX and USER_STOPPED hold the policy (latched)."""
        self.robot_mode, self.robot_errors = int(mode), list(errors)
        runner = self.runner
        if runner is not None and mode in HOLD_ROBOT_MODES:
            detail = f" (current errors: {', '.join(errors)})" if errors else ""
            runner.latch.raise_stop(ROBOT_SOURCE, f"Franka robot mode {HOLD_ROBOT_MODES[mode]}{detail}", now,
                                    key="robot_mode")

    def reset(self, now: float) -> tuple[bool, str]:
        """Operator reset (`~/reset`): release the latched stop and restart from the measured
        state. Refused while the robot is still in REFLEX / USER_STOPPED."""
        with self._lock:
            return self._reset(now)

    def _reset(self, now: float) -> tuple[bool, str]:
        if self.runner is None:
            return False, "not configured"
        if self.robot_mode in HOLD_ROBOT_MODES:
            return False, (f"the robot is still in {HOLD_ROBOT_MODES[self.robot_mode]}: recover it first "
                           f"(franka_msgs ErrorRecovery action, or release the user stop)")
        released = [e.reason for e in self.runner.latch.active
                    if not (self.external_stop and e.source == MONITOR_SOURCE)]
        if self.started:
            self._restart(now)
        else:
            self.runner.reset_stop()
        message = f"released: {'; '.join(released)}" if released else "nothing to release"
        if self.external_stop:
            message += "; the OOD monitor's stop flag is still raised: holding (reset the monitor)"
        return True, message

    def _restart(self, now: float, replay_since: float | None = None) -> None:
        """Restart the runner from the measured state, releasing its stop (all but the
        monitor's flag, which is raised again while it stands). Samples stamped at or after
        `replay_since` go into the cleared buffer again; older ones show the past."""
        with self._lock:
            q, w = self.intake.q, self._measured_gripper()
            self.runner.reset_episode(q, w, now, release_stop=True)
            keep = {} if replay_since is None else {k: v for k, v in self._latest.items() if v[0] >= replay_since}
            self._latest = dict(keep)
            for key, (stamp, value) in keep.items():
                self.runner.observe(key, stamp, value)
            if self.external_stop:
                self._raise_monitor_stop(now)

    def _measured_gripper(self) -> float:
        w = self.intake.gripper
        return float(w) if w is not None else float(self.robot.gripper_width_range[1])

    # ------------------------------------------------------------------ control

    def waiting_for(self, now: float) -> list[str]:
        """The inputs the first command still waits for (empty: ready to start)."""
        if self.runner is None:
            return ["configure"]
        waiting = []
        if self.intake.q is None:
            waiting.append("joint_pos")
        for key in self.runner.buffer.keys:
            sample = self._latest.get(key)
            if sample is None or now - sample[0] > self.runner.buffer.max_age(key):
                if key not in waiting:
                    waiting.append(key)
        return waiting

    def tick(self, now: float) -> CommandOut | None:
        """One control period: the command to publish, or None while inactive or while a sensor
        stream has not arrived yet (no command is better than one from a guessed state)."""
        with self._lock:
            return self._tick(now)

    def _tick(self, now: float) -> CommandOut | None:
        if not self.active or self.runner is None:
            return None
        t0 = time.perf_counter()
        if not self.started:
            if self.waiting_for(now):
                return None
            self._start(now)
        cmd = self.runner.tick(now)
        pose = None
        if self.config.command_interface == "cartesian_pose":
            pose = kinematics.tcp_pose(cmd.q, float(self.config.params["tcp_offset"]))
        if self._tick_times:
            self._max_gap = max(self._max_gap, now - self._tick_times[-1])
        self._tick_times.append(now)
        self._tick_work.append(time.perf_counter() - t0)
        return CommandOut(cmd.t, cmd.q, cmd.gripper, cmd.held, cmd.stopped, cmd.reason, pose)

    def _start(self, now: float) -> None:
        samples = list(self._latest.items())
        if self.runner.last_command is None:  # the first activation: start the inference threads
            self.runner.start(self.intake.q, self._measured_gripper(), now)  # clears the buffer ...
        else:  # re-activation: forget plans made before, keep a latched stop
            self.runner.reset_episode(self.intake.q, self._measured_gripper(), now, release_stop=False)
        for key, (stamp, value) in samples:  # ... so the newest samples go in again
            self.runner.observe(key, stamp, value)
        self.started = True
        self._tick_times.clear()  # rates and gaps count from here, not across an inactive spell
        log.info("commanding from the measured state (policy %s)", self.active_value)

    # ------------------------------------------------------------------ hot swap

    def request_policy(self, value: str) -> tuple[bool, str]:
        """The `policy` parameter is being set to `value`: (accepted, reason). Accepted swaps load
        in the background; the running policy is untouched by a refusal."""
        try:
            entry = self.catalog.resolve(value)
            if self.runner is not None:
                self.runner._check_swap_compatible(entry.spec())  # the same check the swap itself runs
        except FastDPError as e:
            return False, str(e)
        if self.runner is None:
            return True, "will be loaded at configure"
        if self.active_entry is not None and entry.path == self.active_entry.path and self._pending is None:
            self.active_value = entry.name
            return True, f"{entry.path} is already running"
        if not self.runner.request_swap(entry.path, **self._options(entry, self.threads)):
            job = self.runner.swap
            return False, f"a swap to {job.path if job else '?'} is still loading; try again when it is done"
        self._pending = (entry.name, str(entry.path), self.active_value)
        self._pending_entry = entry
        log.info("hot swap to %s (%s) requested: loading in the background", entry.name, entry.path)
        return True, f"loading {entry.path}"

    def poll_swap(self) -> SwapOutcome | None:
        """The outcome of the accepted swap once it has one (reported once)."""
        if self._pending is None or self.runner is None:
            return None
        value, path, previous = self._pending
        job = self.runner.swap
        if job is None or job.path != path or job.state in ("loading", "ready"):
            return None
        self._pending = None
        if job.state == "active":
            self.active_value, self.active_entry = value, self._pending_entry
            return SwapOutcome(True, f"{value} ({path}) now drives the arm (loaded in {job.load_s:.2f} s)")
        return SwapOutcome(False, job.error or f"swap to {path} failed", revert_to=previous)

    # ------------------------------------------------------------------ reporting

    def diagnostics(self, now: float) -> list[DiagnosticEntry]:
        """Controller timing and state, sensor streams, and the Franka robot state."""
        name = POLICY_NODE_NAME
        if self.runner is None:
            return [DiagnosticEntry(f"{name}: controller", "WARN", "not configured", {})]
        r = self.runner
        status, stats = r.status(), r.stats()
        lat = status["latency_ms"] or {}
        work_ms = np.asarray(self._tick_work, dtype=np.float64) * 1e3
        values = {
            "policy": str(self.active_value),
            "model_dir": str(r.policy_name),
            "backend": self.config.backend,
            "command_interface": self.config.command_interface,
            "command_topic": self.config.command_topic,
            "control_rate_hz": f"{self.config.control_rate:.1f}",
            "measured_rate_hz": _fmt(self._measured_rate()),
            "max_tick_gap_ms": _fmt(1e3 * self._max_gap),
            "tick_work_p50_ms": _fmt(float(np.median(work_ms)) if work_ms.size else None),
            "tick_work_max_ms": _fmt(float(work_ms.max()) if work_ms.size else None),
            "inference_p50_ms": _fmt(lat.get("p50")),
            "inference_p90_ms": _fmt(lat.get("p90")),
            "inference_p99_ms": _fmt(lat.get("p99")),
            "deadline_ms": _fmt(stats["timing"]["deadline_ms"]),
            "deadline_misses": str(status["deadline_misses"]),
            "policy_errors": str(status["policy_errors"]),
            "command_age_ms": _fmt(None if status["command_age_s"] is None else 1e3 * status["command_age_s"]),
            "ticks": str(stats["runner"]["ticks"]),
            "held_ticks": str(stats["runner"]["held_ticks"]),
            "stopped_ticks": str(stats["runner"]["stopped_ticks"]),
            "underrun_ticks": str(stats["runner"]["underrun_ticks"]),
            "stop_reasons": "; ".join(e.reason for e in r.latch.active) or "-",
            "swap": "-" if status["swap"] is None else f"{status['swap']['state']} {status['swap']['path']}",
        }
        if status["swap"] is not None and status["swap"]["error"]:
            values["swap_error"] = status["swap"]["error"]
        self._max_gap = 0.0  # the largest gap since the previous report
        if not self.active:
            level, message = "WARN", "inactive"
        elif not self.started:
            level, message = "WARN", f"waiting for {', '.join(self.waiting_for(now))}"
        elif status["stopped"]:
            level, message = "ERROR", f"STOP: {status['stop_reason']}"
        elif status["held"]:
            level, message = "WARN", f"holding: {r.last_command.reason if r.last_command else ''}"
        else:
            level, message = "OK", f"commanding {self.active_value}"
        entries = [DiagnosticEntry(f"{name}: controller", level, message, values)]

        ages = r.buffer.ages(now)
        stream_values = {f"{k} age_ms": _fmt(1e3 * a) for k, a in ages.items()}
        stale = r.buffer.stale(now) if self.started else {}
        stream_values.update(self.intake.report(now))
        errors = self.intake.current_errors(now)  # past errors stay in the values, not in the level
        s_level = "ERROR" if errors else ("WARN" if stale else "OK")
        s_message = (f"conversion errors: {'; '.join(errors.values())}" if errors
                     else f"stale: {', '.join(stale)}" if stale else "all streams fresh")
        entries.append(DiagnosticEntry(f"{name}: sensors", s_level, s_message, stream_values))

        if self.robot_mode is not None:
            mode = FRANKA_ROBOT_MODES.get(self.robot_mode, str(self.robot_mode))
            bad = self.robot_mode in HOLD_ROBOT_MODES or bool(self.robot_errors)
            entries.append(DiagnosticEntry(
                f"{name}: franka robot", "ERROR" if bad else "OK",
                f"robot mode {mode}" + (f", errors: {', '.join(self.robot_errors)}" if self.robot_errors else ""),
                {"robot_mode": mode, "current_errors": ", ".join(self.robot_errors) or "-"}))
        return entries

    def _measured_rate(self) -> float | None:
        t = self._tick_times
        if len(t) < 2 or t[-1] <= t[0]:
            return None
        return (len(t) - 1) / (t[-1] - t[0])

    def close(self) -> None:
        self.cleanup()


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


