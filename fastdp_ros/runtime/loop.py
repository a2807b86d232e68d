"""The closed loop against the MuJoCo simulation in real time (what `fastdp run` runs).

The simulation stands in for the real arm and its sensors: physics advances with the wall
clock, joint state is published at `joint_rate` (stamped at its physics instant), cameras are
rendered at `camera_rate`, and a PolicyRunner ticks at the command rate exactly as a ROS
timer would call it. Nothing waits for the policy: a slow policy shows up as deadline misses,
held ticks and a lower success rate, not as a slower simulation.

Every command that reaches the simulation comes out of the runner's SafetyFilter.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fastdp_ros.errors import ConfigError
from fastdp_ros.runtime.evaluate import EVAL_SEED0, latency_summary
from fastdp_ros.runtime.periodic import DeadlineSchedule
from fastdp_ros.runtime.safety import WorkspaceBox

log = logging.getLogger(__name__)

#: Where the simulated TCP may go: over the table (its top spans x -0.4..1.1 m, y -0.7..0.7 m
#: at z = 0) with the fingertips, which reach 6 mm below the TCP, at least 4 mm above it; up to
#: the arm's reach (0.855 m from the shoulder, which sits 0.333 m above the base).
SIM_WORKSPACE = WorkspaceBox(lower=(-0.4, -0.7, 0.01), upper=(1.1, 0.7, 1.19))


@dataclass
class LoopConfig:
    """How the closed loop runs. Ends after `episodes` episodes or `duration_s` seconds,
    whichever comes first (neither: until interrupted)."""

    rate: float = 60.0  # commands per second
    camera_rate: float = 30.0  # frames per second per camera
    joint_rate: float = 500.0  # joint-state samples per second (the physics rate by default)
    episodes: int | None = None
    duration_s: float | None = None
    seed0: int = EVAL_SEED0
    status_period_s: float = 0.5
    lockstep: bool = False  # wait for inference after every tick (deterministic tests, not real time)

    def __post_init__(self):
        for name in ("rate", "camera_rate", "joint_rate"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be > 0 Hz, got {v}")
        if self.episodes is not None and self.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {self.episodes}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ConfigError(f"--duration must be > 0 s, got {self.duration_s}")


SensorHook = Callable[[str, float, np.ndarray], "np.ndarray | None"]


class SimPlant:
    """The simulated arm seen as the runtime sees a real one: stamped sensor samples out, joint
    commands in. `sensor_hook(key, stamp, value)` may replace a sample or drop it (return None):
    that is how tests inject sensor faults."""

    def __init__(self, env, keys, camera_rate: float, joint_rate: float, extra_cameras=(),
                 sensor_hook: SensorHook | None = None):
        self.env = env
        self.sim = env.sim
        self.keys = tuple(keys)
        self.image_keys = tuple(k for k in self.keys if k.startswith("img_"))
        self.cameras = tuple(dict.fromkeys([k[4:] for k in self.image_keys] + list(extra_cameras)))
        self.camera_period = 1.0 / camera_rate
        self.joint_period = 1.0 / joint_rate
        self.sensor_hook = sensor_hook
        self.frames: dict[str, np.ndarray] = {}  # newest frame per camera
        self.counts = {"camera_frames": 0, "joint_samples": 0, "dropped_samples": 0}
        self._physics_wall = 0.0  # the wall time the physics state corresponds to
        self._next_joint = 0.0
        self._next_frame: dict[str, float] = {}
        self._next_object = 0.0

    def reset(self, seed: int, now: float) -> tuple[np.ndarray, float]:
        self.env.reset(seed=seed)
        self._physics_wall = self._next_joint = self._next_object = now
        # Cameras are free-running and not synchronised with each other: spread their frames
        # over the camera period so one control tick renders one camera, not all of them.
        n = max(1, len(self.cameras))
        self._next_frame = {cam: now + i * self.camera_period / n for i, cam in enumerate(self.cameras)}
        return self.sim.joint_positions(), self.sim.gripper_width()

    def _emit(self, runner, key: str, stamp: float, value) -> None:
        if key not in runner.buffer.keys:
            return
        if self.sensor_hook is not None:
            value = self.sensor_hook(key, stamp, value)
            if value is None:
                self.counts["dropped_samples"] += 1
                return
        runner.observe(key, stamp, value)

    def advance_to(self, now: float, runner) -> None:
        """Physics up to `now`, publishing joint state at its rate along the way."""
        sim = self.sim
        while self._next_joint <= now:
            sim.advance(max(0.0, self._next_joint - self._physics_wall))
            self._physics_wall = max(self._physics_wall, self._next_joint)
            t = self._next_joint
            self._emit(runner, "joint_pos", t, sim.joint_positions().astype(np.float32))
            self._emit(runner, "gripper", t, np.array([sim.gripper_width()], np.float32))
            if "tcp_pose" in runner.buffer.keys:
                self._emit(runner, "tcp_pose", t, sim.tcp_pose().astype(np.float32))
            self.counts["joint_samples"] += 1
            self._next_joint += self.joint_period
        if now > self._physics_wall:
            sim.advance(now - self._physics_wall)
            self._physics_wall = now

    def capture(self, now: float, runner) -> tuple[str, ...]:
        """Render the cameras whose frame is due (and publish the privileged object state at the
        camera rate); returns the cameras rendered."""
        rendered = []
        for cam, due in self._next_frame.items():
            if now < due:
                continue
            # The next frame one period on, or now if the loop fell behind (no burst of frames).
            self._next_frame[cam] = max(due + self.camera_period, now)
            frame = self.sim.render(cam, self.env.image_size)
            self.frames[cam] = frame
            self._emit(runner, f"img_{cam}", now, frame)
            self.counts["camera_frames"] += 1
            rendered.append(cam)
        if "object_state" in runner.buffer.keys and now >= self._next_object:
            from fastdp_ros.sim import object_state

            self._next_object = max(self._next_object + self.camera_period, now)
            info = {"target_pos": self.env.state.target}
            if self.sim.has_cube:
                info["cube_pose"] = self.sim.cube_pose()
            self._emit(runner, "object_state", now, object_state(info))
        return tuple(rendered)

    def command(self, q, gripper: float) -> None:
        self.sim.set_command(q, gripper)

    def success(self) -> bool:
        _, success, _ = self.env.task.evaluate(self.sim, self.env.state)
        return bool(success)

    def episode_time(self) -> float:
        return self.sim.time

    @property
    def time_limit(self) -> float:
        return self.env.time_limit


class VideoRecorder:
    """Frames to a video file: .mp4 through imageio's ffmpeg plugin, .gif through Pillow."""

    def __init__(self, path, fps: float):
        self.path = Path(path)
        self.fps = float(fps)
        suffix = self.path.suffix.lower()
        if suffix not in (".mp4", ".gif"):
            raise ConfigError(f"--video must end in .mp4 or .gif, got {self.path.name}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the folder for {self.path}: {e.strerror}") from None
        self._frames: list[np.ndarray] = []
        self._writer = None
        if suffix == ".mp4":
            try:
                import imageio.v2 as imageio
                import imageio_ffmpeg  # noqa: F401 - the plugin imageio needs for mp4
            except ImportError:
                raise ConfigError("writing .mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg); "
                                  "or give a .gif path") from None
            self._writer = imageio.get_writer(str(self.path), fps=self.fps, macro_block_size=1)

    def add(self, frame: np.ndarray) -> None:
        if self._writer is not None:
            self._writer.append_data(frame)
        else:
            self._frames.append(frame)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        elif self._frames:
            from PIL import Image

            images = [Image.fromarray(f) for f in self._frames]
            images[0].save(self.path, save_all=True, append_images=images[1:],
                           duration=max(20, int(round(1000 / self.fps))), loop=0)
            self._frames = []


def run_closed_loop(runner, env, config: LoopConfig, *, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep, on_status: Callable[[dict], None] | None = None,
                    video: VideoRecorder | None = None, video_camera: str | None = None,
                    sensor_hook: SensorHook | None = None) -> dict:
    """Run `runner` against `env` (a FrankaEnv) until the episodes or the duration are done, or
    Ctrl-C. Returns the run's statistics. `clock` must be the runner's clock."""
    period = 1.0 / config.rate
    extra_cams = (video_camera,) if video is not None and video_camera else ()
    plant = SimPlant(env, runner.buffer.keys, config.camera_rate, config.joint_rate, extra_cams, sensor_hook)
    lateness, work = [], []
    ticks = on_time = 0
    episodes: list[dict] = []
    interrupted = False
    old_switch = sys.getswitchinterval()
    if not config.lockstep:
        # The control thread must win the GIL back from the inference thread well within a period.
        sys.setswitchinterval(min(old_switch, period / 20))
    t0 = clock()
    seed = config.seed0
    q, w = plant.reset(seed, t0)
    runner.start(q, w, t0)
    episode_events = len(runner.latch.events)
    status_t, status_ticks = t0, 0
    schedule = DeadlineSchedule(period, t0)
    next_tick = schedule.next_deadline
    try:
        while True:
            now = clock()
            if now < next_tick:
                sleep(next_tick - now)
                now = clock()
            lateness.append(now - next_tick)
            plant.advance_to(now, runner)
            captured = plant.capture(now, runner)
            command = runner.tick(now)
            plant.command(command.q, command.gripper)
            if config.lockstep:
                runner.wait_inference()
            if video is not None and video_camera in captured:
                video.add(plant.frames[video_camera])
            end = clock()
            work.append(end - now)
            ticks += 1
            on_time += (end - next_tick) <= period

            success = plant.success()
            if success or plant.episode_time() >= plant.time_limit:
                new_events = runner.latch.events[episode_events:]
                episodes.append({"seed": seed, "success": success, "duration_s": plant.episode_time(),
                                 "stop_events": len(new_events)})
                log.info("episode %d (seed %d): %s after %.1f s%s", len(episodes), seed,
                         "success" if success else "failure", plant.episode_time(),
                         f", {len(new_events)} stop event(s)" if new_events else "")
                if config.episodes is not None and len(episodes) >= config.episodes:
                    break
                seed += 1
                reset_at = clock()
                q, w = plant.reset(seed, reset_at)
                runner.reset_episode(q, w, reset_at)
                episode_events = len(runner.latch.events)
            if config.duration_s is not None and clock() - t0 >= config.duration_s:
                break
            if on_status is not None and now - status_t >= config.status_period_s:
                hz = (ticks - status_ticks) / max(now - status_t, 1e-9)
                on_status(_status_line_data(runner, now - t0, hz, len(episodes), sum(e["success"] for e in episodes),
                                            config.episodes))
                status_t, status_ticks = now, ticks
            schedule.advance(clock())  # missed whole slots are skipped rather than burst
            next_tick = schedule.next_deadline
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: holding the arm and writing statistics")
    finally:
        wall = clock() - t0  # the loop's own time, before writing the video out
        sys.setswitchinterval(old_switch)
        if video is not None:
            video.close()
    successes = sum(e["success"] for e in episodes)
    stats = {
        "duration_s": wall,
        "interrupted": interrupted,
        "rate_hz": config.rate,
        "camera_rate_hz": config.camera_rate,
        "joint_rate_hz": config.joint_rate,
        "ticks": ticks,
        "ticks_on_time": on_time,
        "late_ticks": ticks - on_time,
        "skipped_ticks": schedule.skipped,
        "on_time_fraction": on_time / max(1, ticks + schedule.skipped),
        "command_hz": ticks / wall if wall > 0 else float("nan"),
        "tick_start_lateness_ms": latency_summary(lateness),
        "tick_work_ms": latency_summary(work),
        "episodes": len(episodes),
        "successes": successes,
        "success_rate": successes / len(episodes) if episodes else None,
        "per_episode": episodes,
        "unfinished_episode_s": None if (config.episodes is not None and len(episodes) >= config.episodes)
        else plant.episode_time(),
        "sensors": dict(plant.counts),
        **runner.stats(),
    }
    for event in stats["stop_events"]:
        event["t_run_s"] = event["t"] - t0  # seconds into the run (t is the runner's clock)
    return stats


def _status_line_data(runner, elapsed: float, command_hz: float, episodes: int, successes: int,
                      episodes_goal: int | None) -> dict:
    s = runner.status()
    return {"elapsed_s": elapsed, "command_hz": command_hz, "episodes": episodes, "successes": successes,
            "episodes_goal": episodes_goal, **s}


def format_status(s: dict) -> str:
    """One status line: time, command rate, inference latency, deadline misses, OOD, stop state."""
    lat = s.get("latency_ms") or {}
    p50 = f"{lat['p50']:.1f}" if "p50" in lat else "-"
    p99 = f"{lat['p99']:.1f}" if "p99" in lat else "-"
    if s.get("ood_threshold") is None:
        ood = "ood off"
    elif s.get("ood_score") is None:
        ood = "ood -"
    else:
        ood = f"ood {s['ood_score']:.2f}/{s['ood_threshold']:.2f}"
    goal = f"/{s['episodes_goal']}" if s.get("episodes_goal") else ""
    state = f"STOP: {s['stop_reason']}" if s["stopped"] else ("HOLD" if s.get("held") else "RUN")
    return (f"t {s['elapsed_s']:6.1f}s | ep {s['episodes']}{goal} ok {s['successes']} | cmd {s['command_hz']:5.1f} Hz"
            f" | infer p50 {p50} p99 {p99} ms | miss {s['deadline_misses']} | {ood} | {state}")
