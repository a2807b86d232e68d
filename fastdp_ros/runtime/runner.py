"""PolicyRunner: the control loop's one object, shared by `fastdp run` and the ROS 2 nodes.

    runner = PolicyRunner(policy, RunnerConfig(rate=60))
    runner.start(q_measured, gripper_measured)
    ...  # sensor callbacks:        runner.observe("img_front", stamp, image)
    ...  # control timer at 60 Hz:  command = runner.tick(); send(command.q, command.gripper)

`tick` is the tick boundary: it installs a hot-swapped policy if one is ready, collects finished
inference, hands the newest observation to the inference thread, runs the watchdogs and
returns the next command. Every command passes the SafetyFilter; while the stop is latched,
or when no plan covers the present, the filter holds the arm (braking at its acceleration
limit, then standing still).

Hot swap: `request_swap(model_dir)` loads and warms the new policy up in a background thread
while the old one keeps driving; the switch happens at the next tick after it is ready. Any
failure (missing directory, corrupt weights, an incompatible spec, an exception or NaN in
warm-up) leaves the old policy in charge and is recorded with a message that says why.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fastdp_ros.errors import ConfigError, FastDPError
from fastdp_ros.policies.spec import ObservationError, PolicySpec
from fastdp_ros.robots import N_ARM_JOINTS, get_robot
from fastdp_ros.runtime.buffer import ObservationBuffer
from fastdp_ros.runtime.ood import LatchedMonitor
from fastdp_ros.runtime.safety import SafetyFilter, WorkspaceBox
from fastdp_ros.runtime.scheduler import ActionScheduler, InvalidChunk
from fastdp_ros.runtime.watchdog import StopLatch, WatchdogLimits, check_watchdogs
from fastdp_ros.runtime.worker import InferenceWorker, LatencyRecord

log = logging.getLogger(__name__)

#: the action layout the runtime drives: 7 joint position targets (rad) + gripper width (m)
JOINT_ACTION_DIM = N_ARM_JOINTS + 1

DEFAULT_BACKEND = "torch"


@dataclass
class RunnerConfig:
    """Run-time options. `None` means "derived from the policy's spec" (see `Timing`)."""

    rate: float = 60.0  # command rate (Hz)
    blend: str = "crossfade"  # crossfade | ensemble (see scheduler.py)
    crossfade_s: float | None = None  # default: one recording period (spec.dt)
    ensemble_decay: float = 0.0  # 1/s; > 0 favours newer chunks in ensemble mode
    lead_steps: int = 1  # action k is reached one dt after observation k (the dataset's convention)
    deadline_s: float | None = None  # inference deadline; default spec.dt
    max_consecutive_misses: int | None = 3  # deadline misses in a row that raise the stop
    max_consecutive_errors: int | None = 3  # policy exceptions in a row that raise the stop
    max_command_age_s: float | None = None  # default: the span a chunk plans ahead
    stall_timeout_s: float | None = None  # one inference call this long raises the stop; default = max command age
    stream_max_age_s: float | dict | None = None  # default 2 * spec.dt (see ObservationBuffer.for_spec)
    stream_age_periods: float = 0.0  # > 0: stream_max_age_s is a floor; the limit follows each stream's rate
    velocity_scale: float = 1.0  # fraction of the robot's velocity limits
    acceleration_scale: float = 1.0  # fraction of the robot's acceleration limits
    warmup_calls: int = 2  # act() calls on a new policy before it drives (first calls are slow)
    ood_rate: float | None = None  # OOD checks per second; default 1 / spec.dt, the rate the training set saw
    # time between the observations a new plan starts from; default n_action_steps * dt, the
    # chunk length the policy was trained and evaluated to execute (0: every new observation)
    replan_s: float | None = None
    robot: str | None = None  # robot type; default: the policy spec's

    def __post_init__(self):
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ConfigError(f"command rate must be > 0 Hz, got {self.rate}")
        for name in ("crossfade_s", "deadline_s", "max_command_age_s", "stall_timeout_s", "replan_s"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a non-negative number of seconds, got {v}")
        if self.ood_rate is not None and not (math.isfinite(self.ood_rate) and self.ood_rate > 0):
            raise ConfigError(f"ood_rate must be > 0 Hz, got {self.ood_rate}")
        if self.warmup_calls < 0:
            raise ConfigError(f"warmup_calls must be >= 0, got {self.warmup_calls}")


@dataclass(frozen=True)
class Timing:
    """The time constants a runner uses for one policy spec."""

    deadline_s: float
    crossfade_s: float
    max_command_age_s: float
    stall_timeout_s: float
    replan_s: float

    @classmethod
    def of(cls, config: RunnerConfig, spec: PolicySpec) -> "Timing":
        # A chunk plans (horizon - n_obs_steps + 1) steps from its observation on: a command built
        # from an older observation than that has nothing left to execute.
        plan_span = (spec.horizon - spec.n_obs_steps + 1) * spec.dt
        age = config.max_command_age_s if config.max_command_age_s is not None else plan_span
        return cls(deadline_s=config.deadline_s if config.deadline_s is not None else spec.dt,
                   crossfade_s=config.crossfade_s if config.crossfade_s is not None else spec.dt,
                   max_command_age_s=age,
                   stall_timeout_s=config.stall_timeout_s if config.stall_timeout_s is not None else age,
                   replan_s=config.replan_s if config.replan_s is not None else spec.n_action_steps * spec.dt)


def _due(t_obs: float | None, last: float | None, period: float) -> bool:
    """Whether the observation stamped t_obs is due for a new submission, `period` s after the
    last one (period 0: any newer observation). 1e-6 s of slack: sensor stamps a whole number
    of periods apart must not miss the check by rounding."""
    return t_obs is not None and (last is None or t_obs - last >= max(period - 1e-6, 1e-9))


@dataclass(frozen=True)
class Command:
    """One command for the arm (already through the SafetyFilter)."""

    t: float
    q: np.ndarray  # 7 joint position targets (rad)
    gripper: float  # gripper width target (m)
    held: bool  # holding still / braking instead of following a plan
    stopped: bool  # the latched stop is raised
    reason: str | None = None  # why it holds (stop reason, underrun, workspace, ...)

    @property
    def action(self) -> np.ndarray:
        return np.concatenate([self.q, [self.gripper]])


@dataclass
class SwapJob:
    """One hot-swap request and its outcome."""

    path: str
    options: dict
    requested: float
    state: str = "loading"  # loading | ready | active | failed
    error: str | None = None
    policy: Any = None
    load_s: float | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def to_dict(self) -> dict:
        return {"path": self.path, "options": self.options, "state": self.state, "error": self.error,
                "load_s": self.load_s}


# ------------------------------------------------------------------------------- helpers


def resolve_loader(loader: Callable[..., Any], backend: str = DEFAULT_BACKEND) -> Callable[..., Any]:
    """`loader(path, **options)` bound to an inference backend.

    A loader that declares a `backend` parameter gets it passed through; one that does not
    (the plain `load_policy`) runs torch models only, and asking it for another backend is a
    ConfigError rather than a silent torch run.
    """
    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):
        params = {}
    if "backend" in params:
        return functools.partial(loader, backend=backend)
    if backend != DEFAULT_BACKEND:
        name = getattr(loader, "__qualname__", repr(loader))
        raise ConfigError(f"backend {backend!r} is not available: the policy loader {name} runs "
                          f"{DEFAULT_BACKEND!r} models only")
    return loader


def default_loader() -> Callable[..., Any]:
    """Model directory -> Policy on the chosen backend (torch, torch_compile, onnxruntime, tensorrt)."""
    from fastdp_ros.engines import load_engine_policy

    return load_engine_policy


def synthetic_observation(spec: PolicySpec) -> dict[str, np.ndarray]:
    """A valid all-zero observation (warm-up before any sensor data has arrived)."""
    obs = {k: np.zeros((spec.n_obs_steps, *spec.image_shape), np.uint8) for k in spec.image_keys}
    obs.update({k: np.zeros((spec.n_obs_steps, d), np.float32) for k, d in spec.lowdim_dims.items()})
    return obs


def check_chunk(spec: PolicySpec, chunk) -> np.ndarray:
    """A chunk of the right shape with finite values, or a ConfigError saying what is wrong."""
    a = np.asarray(chunk)
    if a.shape != (spec.horizon, spec.action_dim):
        raise ConfigError(f"act() returned shape {a.shape}, the spec says ({spec.horizon}, {spec.action_dim})")
    if not np.all(np.isfinite(a)):
        raise ConfigError("act() returned NaN or inf")
    return a


def warm_up(policy, obs: dict | None = None, calls: int = 2) -> float:
    """Run `act` `calls` times (allocations, lazy compilation, caches) and check its output.
    Returns the last call's latency in seconds."""
    obs = obs if obs is not None else synthetic_observation(policy.spec)
    latency = 0.0
    for _ in range(calls):
        t0 = time.perf_counter()
        check_chunk(policy.spec, policy.act(obs))
        latency = time.perf_counter() - t0
    return latency


def check_joint_policy(spec: PolicySpec) -> None:
    if spec.action_dim != JOINT_ACTION_DIM:
        raise ConfigError(f"the runtime drives 7 joint position targets + gripper width ({JOINT_ACTION_DIM} values); "
                          f"this policy's action {spec.action_key!r} has {spec.action_dim}")


# ------------------------------------------------------------------------------- the runner


class PolicyRunner:
    """ObservationBuffer -> InferenceWorker -> ActionScheduler -> SafetyFilter, with watchdogs,
    an optional OOD monitor, a latched stop and hot swap.

    `loader(path, **options) -> Policy` loads swap targets (default
    `fastdp_ros.policies.base.load_policy`); `backend` is passed through to it (see
    `resolve_loader`). `clock` gives the time of `tick()` without an argument and times
    inference; sensor stamps must be on the same clock. `workspace` + `fk` bound the TCP of
    joint targets.
    """

    def __init__(self, policy, config: RunnerConfig | None = None, *, loader: Callable[..., Any] | None = None,
                 backend: str = DEFAULT_BACKEND, clock: Callable[[], float] = time.monotonic,
                 ood: LatchedMonitor | None = None, workspace: WorkspaceBox | None = None, fk=None,
                 policy_name: str | None = None):
        self.config = config or RunnerConfig()
        self.clock = clock
        self.backend = backend
        self._load = resolve_loader(loader or default_loader(), backend)
        spec: PolicySpec = policy.spec
        check_joint_policy(spec)
        self.policy = policy
        self.policy_name = policy_name or type(policy).__name__
        self.spec = spec
        self.robot = get_robot(self.config.robot or spec.robot)
        self.timing = Timing.of(self.config, spec)
        self.period = 1.0 / self.config.rate
        self.ood = ood
        ood_spec = ood.spec if ood is not None and ood.spec is not None else spec
        self.buffer = ObservationBuffer.for_spec(spec, self.config.stream_max_age_s, also=(ood_spec,),
                                                 age_periods=self.config.stream_age_periods)
        self.ood_spec = ood_spec
        self.scheduler = ActionScheduler(JOINT_ACTION_DIM, self.config.blend, self.timing.crossfade_s,
                                         self.config.ensemble_decay, self.config.lead_steps,
                                         max_chunks=max(spec.horizon, 2))
        self.filter = SafetyFilter(self.robot, self.period, workspace=workspace, fk=fk,
                                   velocity_scale=self.config.velocity_scale,
                                   acceleration_scale=self.config.acceleration_scale)
        self.latch = StopLatch()
        self.worker = InferenceWorker(policy.act, "policy", self.timing.deadline_s, clock)
        self.ood_worker = InferenceWorker(lambda item: ood.observe(*item), "ood", None, clock) if ood else None
        self.ood_period = 1.0 / self.config.ood_rate if self.config.ood_rate else ood_spec.dt
        self.limits = self._limits()
        self._swap_lock = threading.Lock()
        self._swap: SwapJob | None = None
        self.swaps: list[dict] = []  # outcomes of every swap request
        self._started = False
        self._t_start = 0.0
        self._submitted_t_obs: float | None = None
        self._ood_submitted_t_obs: float | None = None
        self.last_command: Command | None = None
        self.command_age_s: float | None = None
        self.counts = {"ticks": 0, "held_ticks": 0, "stopped_ticks": 0, "underrun_ticks": 0,
                       "observations": 0, "rejected_observations": 0, "chunks": 0, "rejected_chunks": 0}

    def _limits(self) -> WatchdogLimits:
        c = self.config
        return WatchdogLimits(max_consecutive_misses=c.max_consecutive_misses,
                              stall_timeout_s=self.timing.stall_timeout_s,
                              max_consecutive_errors=c.max_consecutive_errors,
                              max_command_age_s=self.timing.max_command_age_s)

    # ------------------------------------------------------------------ lifecycle

    def start(self, q, gripper: float, now: float | None = None) -> Command:
        """Begin from the measured arm state (the first command holds it). Starts the threads."""
        now = self.clock() if now is None else float(now)
        self._reset_state(q, gripper, now)
        self.worker.start()
        if self.ood_worker is not None:
            self.ood_worker.start()
        self._started = True
        return self.last_command

    def reset_episode(self, q, gripper: float, now: float | None = None, release_stop: bool = True) -> Command:
        """A new episode (simulation reset): forget observations and plans, restart from the
        measured state and, unless `release_stop=False`, release the stop. Not for a real arm
        mid-task: there, only an operator's `reset_stop()` releases a stop."""
        now = self.clock() if now is None else float(now)
        self.worker.discard()
        if self.ood_worker is not None:
            self.ood_worker.discard()
        if release_stop:
            self.reset_stop()
        self._reset_state(q, gripper, now)
        return self.last_command

    def _reset_state(self, q, gripper, now):
        reset = getattr(self.policy, "reset", None)
        if callable(reset):  # a policy that keeps state between act() calls starts over (LWD's segment)
            reset()
        first = self.filter.reset(q, gripper)
        self.buffer.clear(since=now)
        self.scheduler.clear()
        self._t_start = now
        self._submitted_t_obs = None
        self._ood_submitted_t_obs = None
        self.command_age_s = None
        self.last_command = Command(now, first.q, first.gripper, held=True, stopped=self.latch.stopped,
                                    reason="start")

    def reset_stop(self) -> list:
        """Release the latched stop (and the OOD monitor's). The arm resumes from where it held,
        rate-limited, on the next plan."""
        if self.ood is not None:
            self.ood.reset()
        self.worker.consecutive_misses = 0
        self.worker.consecutive_errors = 0
        return self.latch.reset()

    def close(self, timeout: float = 5.0) -> None:
        self.worker.close(timeout)
        if self.ood_worker is not None:
            self.ood_worker.close(timeout)
        job = self._swap
        if job is not None and not job.done.is_set():
            job.done.wait(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ sensors

    @property
    def stopped(self) -> bool:
        return self.latch.stopped

    def observe(self, key: str, stamp: float, value) -> bool:
        """One sensor sample. A bad sample (NaN, wrong shape or dtype) is refused and latches the
        stop: a sensor that produces garbage cannot be trusted for the next frame either."""
        try:
            taken = self.buffer.push(key, stamp, value)
        except ObservationError as e:
            self.counts["rejected_observations"] += 1
            self.latch.raise_stop("observation", f"observation rejected: {e}", self.clock(), key=key)
            return False
        self.counts["observations"] += taken
        return taken

    def observe_frame(self, stamp: float, values: dict) -> None:
        """Several keys sampled at the same instant (a JointState message: joints + gripper)."""
        for key, value in values.items():
            self.observe(key, stamp, value)

    def stop(self, reason: str, now: float | None = None) -> None:
        """Raise the stop from outside (an operator, another node's stop flag)."""
        self.latch.raise_stop("operator", reason, self.clock() if now is None else now)

    # ------------------------------------------------------------------ the tick

    def tick(self, now: float | None = None) -> Command:
        """One control period: swap boundary, inference in/out, watchdogs, one safe command."""
        if not self._started:
            raise ConfigError("PolicyRunner.start(q, gripper) must be called before tick()")
        now = self.clock() if now is None else float(now)
        try:
            safe, reason = self._tick(now)
        except Exception as e:  # noqa: BLE001 - a bug in the runtime must still leave the arm a safe command
            log.exception("runtime error in tick()")
            self.latch.raise_stop("runtime", f"internal error: {type(e).__name__}: {e}", now, key="internal")
            safe, reason = self.filter.hold(), self.latch.reason
        self.counts["ticks"] += 1
        self.counts["held_ticks"] += safe.held
        self.counts["stopped_ticks"] += self.latch.stopped
        self.last_command = Command(now, safe.q, safe.gripper, safe.held, self.latch.stopped, reason)
        return self.last_command

    def _tick(self, now: float):
        self._apply_swap(now)
        for result in self.worker.poll():
            self._take_chunk(result, now)
        if self.ood is not None:
            for result in self.ood_worker.poll():
                if result.error:
                    self.latch.raise_stop("ood", f"OOD encoder failed: {result.error}", now, key="encoder")
            if self.ood.stopped:
                self.latch.raise_stop("ood", self.ood.stop_reason or "out of distribution", now, key="ood")
        self._submit_observations()
        self.command_age_s = self._command_age(now)
        for source, key, reason in check_watchdogs(self.limits, now, self.buffer.stale(now),
                                                   self.buffer.max_ages(),
                                                   self.worker, self.command_age_s):
            self.latch.raise_stop(source, reason, now, key=key)
        if self.latch.stopped:
            safe = self.filter.hold()
            reason = self.latch.reason
        else:
            target = self.scheduler.sample(now)
            if target is None:
                self.counts["underrun_ticks"] += 1
                safe = self.filter.hold()
                reason = "underrun: no plan covers now"
            else:
                safe = self.filter.step(target)
                reason = safe.reason
            if safe.fault:
                self.latch.raise_stop("safety", f"safety filter refused a target: {safe.fault}", now, key="fault")
                reason = safe.fault
        return safe, reason

    def _command_age(self, now: float) -> float:
        """Age of the newest plan's observation (of the start, before the first plan): the
        information the next command would be built from, stopped or not."""
        newest = self.scheduler.newest_t_obs
        return now - (newest if newest is not None else self._t_start)

    def _take_chunk(self, result, now: float) -> None:
        if result.error is not None:
            return  # counted by the worker; the policy-error watchdog decides about stopping
        try:
            self.scheduler.add_chunk(result.output, result.stamp, self.spec.dt, self.spec.n_obs_steps, now)
            self.counts["chunks"] += 1
        except InvalidChunk as e:
            self.counts["rejected_chunks"] += 1
            self.latch.raise_stop("policy", f"policy output rejected: {e}", now, key="chunk")

    def _submit_observations(self) -> None:
        t_obs = self.buffer.observation_time(self.spec.obs_keys)
        if _due(t_obs, self._submitted_t_obs, self.timing.replan_s):
            built = self.buffer.observation(self.spec)
            if built is not None:
                self.worker.submit(built[0], built[1])
                self._submitted_t_obs = built[1]
        if self.ood is None:
            return
        if _due(self.buffer.observation_time(self.ood_spec.obs_keys), self._ood_submitted_t_obs, self.ood_period):
            built = self.buffer.observation(self.ood_spec)
            if built is not None:
                self.ood_worker.submit(built, built[1])
                self._ood_submitted_t_obs = built[1]

    def wait_inference(self, timeout: float = 30.0) -> bool:
        """Block until the inference (and OOD) threads are idle: lock-step runs and tests."""
        ok = self.worker.wait_idle(timeout)
        if self.ood_worker is not None:
            ok = self.ood_worker.wait_idle(timeout) and ok
        return ok

    # ------------------------------------------------------------------ hot swap

    @property
    def swap(self) -> SwapJob | None:
        """The latest swap request (its state says how it went)."""
        return self._swap

    def request_swap(self, path, **options) -> bool:
        """Start loading `path` in the background; it takes over at a tick once warmed up.
        Returns False (and records why) if another swap is still loading."""
        with self._swap_lock:
            if self._swap is not None and self._swap.state in ("loading", "ready"):
                log.warning("swap to %s ignored: the swap to %s is still in progress", path, self._swap.path)
                return False
            job = SwapJob(str(path), dict(options), self.clock())
            self._swap = job
        threading.Thread(target=self._prepare_swap, args=(job,), name="fastdp-swap", daemon=True).start()
        return True

    def _prepare_swap(self, job: SwapJob) -> None:
        t0 = time.perf_counter()
        try:
            policy = self._load(job.path, **job.options)
            self._check_swap_compatible(policy.spec)
            built = self.buffer.observation(policy.spec)
            warm_up(policy, built[0] if built is not None else None, max(1, self.config.warmup_calls))
            job.policy = policy
            job.load_s = time.perf_counter() - t0
            job.state = "ready"
            log.info("swap: %s loaded and warmed up in %.2f s; switching at the next tick", job.path, job.load_s)
        except Exception as e:  # noqa: BLE001 - whatever goes wrong, the old policy keeps driving
            what = str(e) if isinstance(e, FastDPError) else f"{type(e).__name__}: {e}"
            job.error = f"swap to {job.path} failed, keeping {self.policy_name}: {what}"
            job.state = "failed"
            self.swaps.append(job.to_dict())
            log.error("%s", job.error)
        finally:
            job.done.set()

    def _check_swap_compatible(self, spec: PolicySpec) -> None:
        check_joint_policy(spec)
        if get_robot(spec.robot).name != self.robot.name and self.config.robot is None:
            raise ConfigError(f"the new policy was trained for robot {spec.robot!r}, this arm is {self.robot.name!r}")
        missing = [k for k in spec.obs_keys if k not in self.buffer.keys]
        if missing:
            raise ConfigError(f"the new policy needs observation keys {missing}; this runtime receives "
                              f"{list(self.buffer.keys)}")
        for k in spec.obs_keys:
            if tuple(spec.obs_shape(k)) != self.buffer.stream(k).shape:
                raise ConfigError(f"the new policy expects {k!r} of shape {tuple(spec.obs_shape(k))}, "
                                  f"the sensor gives {self.buffer.stream(k).shape}")

    def _apply_swap(self, now: float) -> None:
        job = self._swap
        if job is None or job.state != "ready":
            return
        old = self.policy_name
        self.policy, self.spec, self.policy_name = job.policy, job.policy.spec, job.path
        self.timing = Timing.of(self.config, self.spec)
        self.limits = self._limits()
        self.worker.deadline_s = self.timing.deadline_s
        self.worker.set_fn(self.policy.act)
        self.scheduler.crossfade_s = self.timing.crossfade_s
        self._submitted_t_obs = None  # the next observation goes to the new policy
        job.policy = None
        job.state = "active"
        self.swaps.append({**job.to_dict(), "switched_at": now, "replaced": old})
        log.info("swap: %s now drives the arm (was %s)", self.policy_name, old)

    # ------------------------------------------------------------------ reporting

    def status(self) -> dict:
        """A snapshot for a status line or a diagnostics message."""
        reading = self.ood.last if self.ood is not None else None
        return {
            "policy": self.policy_name,
            "stopped": self.latch.stopped,
            "stop_reason": self.latch.reason,
            "latency_ms": LatencyRecord.percentiles_ms(self.worker.latency.recent),
            "deadline_misses": self.worker.counts["deadline_misses"],
            "policy_errors": self.worker.counts["errors"],
            "command_age_s": self.command_age_s,
            "ood_score": None if reading is None else reading.score,
            "ood_threshold": None if self.ood is None else self.ood.threshold,
            "swap": None if self._swap is None else self._swap.to_dict(),
            "held": None if self.last_command is None else self.last_command.held,
        }

    def stats(self) -> dict:
        """Everything counted since construction (for the run's statistics JSON)."""
        out = {
            "policy": self.policy_name,
            "backend": self.backend,
            "robot": self.robot.name,
            "rate_hz": self.config.rate,
            "timing": {"deadline_ms": 1e3 * self.timing.deadline_s, "crossfade_ms": 1e3 * self.timing.crossfade_s,
                       "max_command_age_ms": 1e3 * self.timing.max_command_age_s,
                       "stall_timeout_ms": 1e3 * self.timing.stall_timeout_s},
            "blend": self.config.blend,
            "runner": dict(self.counts),
            "inference": self.worker.stats(),
            "scheduler": dict(self.scheduler.counts),
            "safety": dict(self.filter.counts),
            "streams": self.buffer.counts(),
            "stop_events": [e.to_dict() for e in self.latch.events],
            "stop_resets": self.latch.resets,
            "swaps": list(self.swaps),
        }
        if self.ood is not None:
            out["ood"] = {"threshold": self.ood.threshold, **self.ood.counts,
                          "backend": self.ood.backend, "worker": self.ood_worker.stats()}
        return out
