"""`fastdp run MODEL --task push --rate 60`: the closed loop in the MuJoCo simulation, in real time.

Physics and cameras run at their own rates, commands at --rate, inference in its own thread;
every command passes the safety filter. A status line shows the command rate, inference
latency, deadline misses, the OOD score and the stop state; --stats writes the run's
statistics (ticks on time, latency percentiles, successes, stop events) as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import deque
from pathlib import Path

from fastdp_ros.cli.options import add_threads_argument
from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    from fastdp_ros.runtime.evaluate import EVAL_SEED0
    from fastdp_ros.runtime.scheduler import BLEND_MODES

    p = sub.add_parser("run", help="run a model in closed loop against the simulation in real time (no ROS)",
                       description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="model directory")
    p.add_argument("--task", default=None, help="task; when omitted, the one the model's dataset recorded")
    p.add_argument("--rate", type=float, default=60.0, help="command rate (Hz)")
    p.add_argument("--backend", default="torch", help="inference backend, passed to the policy loader")
    end = p.add_mutually_exclusive_group()
    end.add_argument("--episodes", type=int, default=None, help="stop after N episodes")
    end.add_argument("--duration", type=float, default=None,
                     help="stop after S seconds; with neither this nor --episodes, run until Ctrl-C")
    p.add_argument("--video", default=None, help="record the first camera to this .mp4 or .gif")
    p.add_argument("--stats", default=None, help="write the run's statistics (JSON) here")
    p.add_argument("--camera-rate", type=float, default=30.0, help="camera frames per second")
    p.add_argument("--joint-rate", type=float, default=500.0, help="joint-state samples per second")
    p.add_argument("--blend", choices=BLEND_MODES, default="crossfade", help="how overlapping chunks blend")
    p.add_argument("--crossfade-ms", type=float, default=None, help="chunk blend time; when omitted, the model's dt")
    p.add_argument("--replan-ms", type=float, default=None,
                   help="time between the observations plans start from; when omitted, the model's n_action_steps "
                        "* dt (the chunk length it was evaluated with); 0: plan from every new observation")
    p.add_argument("--deadline-ms", type=float, default=None, help="inference deadline; when omitted, the model's dt")
    p.add_argument("--seed0", type=int, default=EVAL_SEED0, help="first episode seed")
    p.add_argument("--sampler", default=None, help="dp: ddpm | ddim | edm; when omitted, the model's")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (ddim / edm)")
    p.add_argument("--device", default="cpu", help="torch device for inference")
    add_threads_argument(p)
    p.add_argument("--ood-dataset", default=None,
                   help="enable the OOD monitor: training embeddings and threshold from this dataset")
    p.add_argument("--ood-model", default=None,
                   help="the OOD monitor's encoder; when omitted, a second copy of MODEL. Without --ood-dataset it "
                        "must have its own calibrated OOD score (an ALT model) and enables the monitor")
    p.add_argument("--ood-samples", type=int, default=1000, help="dataset windows embedded per split")
    p.add_argument("--ood-quantile", type=float, default=0.99, help="threshold quantile of held-out distances")
    p.add_argument("--ood-debounce", type=int, default=3, help="frames over the threshold before the stop")
    p.add_argument("--no-status", action="store_true", help="no live status line")
    p.set_defaults(run=run)


class StatusPrinter:
    """The live status line: rewritten in place on a terminal, logged every few seconds otherwise."""

    def __init__(self, stream=None, log_every_s: float = 5.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_every_s = log_every_s
        self._last_log = -math.inf
        self._width = 0

    def __call__(self, status: dict) -> None:
        from fastdp_ros.runtime.loop import format_status

        line = format_status(status)
        if self.tty:
            self._width = max(self._width, len(line))
            self.stream.write("\r" + line.ljust(self._width))
            self.stream.flush()
        elif status["elapsed_s"] - self._last_log >= self.log_every_s:
            self._last_log = status["elapsed_s"]
            log.info("%s", line)

    def finish(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()


def _jsonable(x):
    """Statistics as strict JSON: numpy scalars to Python, NaN/inf to null."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def run(args) -> int:
    from fastdp_ros.hardware import check_threads, configure_threads
    from fastdp_ros.policies import read_config
    from fastdp_ros.runtime.evaluate import cameras_of, extra_observation, stack_history
    from fastdp_ros.runtime.loop import SIM_WORKSPACE, LoopConfig, VideoRecorder, run_closed_loop
    from fastdp_ros.runtime.runner import PolicyRunner, RunnerConfig, default_loader, resolve_loader, warm_up

    if not (math.isfinite(args.rate) and args.rate > 0):
        raise ConfigError(f"--rate must be > 0 Hz, got {args.rate}")
    loop_config = LoopConfig(rate=args.rate, camera_rate=args.camera_rate, joint_rate=args.joint_rate,
                             episodes=args.episodes, duration_s=args.duration, seed0=args.seed0)
    for name in ("crossfade_ms", "deadline_ms"):
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
    check_threads(args.threads)
    runner_config = RunnerConfig(rate=args.rate, blend=args.blend,
                                 crossfade_s=None if args.crossfade_ms is None else args.crossfade_ms / 1e3,
                                 deadline_s=None if args.deadline_ms is None else args.deadline_ms / 1e3,
                                 replan_s=None if args.replan_ms is None else args.replan_ms / 1e3)
    if args.stats:
        try:
            Path(args.stats).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the folder for --stats {args.stats}: {e.strerror}") from None
    config = read_config(args.model)
    task = args.task or config.get("spec", {}).get("extra", {}).get("task")
    if not task:
        raise ConfigError(f"{args.model} does not record its task; pass --task")
    options = {"device": args.device}
    if args.sampler is not None:
        options["sampler"] = args.sampler
    if args.steps is not None:
        options["steps"] = args.steps

    threads = configure_threads(args.threads)
    if args.backend == "onnxruntime":
        options["threads"] = threads
    loader = default_loader()
    policy = resolve_loader(loader, args.backend)(args.model, **options)
    spec = policy.spec
    if spec.robot != "panda":
        raise ConfigError(f"{args.model} was trained for robot {spec.robot!r}; the simulation models a Franka Panda")
    monitor = None
    if args.ood_model and not args.ood_dataset:  # a model with its own calibrated OOD score (ALT)
        from fastdp_ros.policies import load_policy
        from fastdp_ros.runtime.ood import model_monitor

        monitor = model_monitor(load_policy(args.ood_model, device=args.device), args.ood_model,
                                debounce=args.ood_debounce)
        log.info("OOD monitor: %s's %s score (threshold %.3g, %s)", args.ood_model, monitor.backend,
                 monitor.threshold, monitor.threshold_source)
    elif args.ood_dataset:
        from fastdp_ros.runtime.ood import monitor_from_dataset

        encoder = resolve_loader(loader, args.backend)(args.ood_model or args.model, **options)
        t0 = time.perf_counter()
        monitor = monitor_from_dataset(encoder, args.ood_dataset, samples=args.ood_samples,
                                       quantile=args.ood_quantile, debounce=args.ood_debounce,
                                       model_dir=args.ood_model or args.model)
        log.info("OOD monitor ready in %.1f s (threshold %.3g, %s)", time.perf_counter() - t0, monitor.threshold,
                 monitor.threshold_source)

    from fastdp_ros.sim import make_env

    cameras = cameras_of(spec)
    video_camera = (cameras[0] if cameras else "front") if args.video else None
    h, w, _ = spec.image_shape if spec.image_keys else (96, 96, 3)
    env = make_env(task, image_size=(h, w), cameras=cameras or (video_camera or "front",), control_dt=spec.dt,
                   render=bool(cameras) or bool(args.video))
    runner = None
    video = VideoRecorder(args.video, fps=args.camera_rate) if args.video else None
    try:
        obs, info = env.reset(seed=args.seed0)
        first = stack_history(deque([extra_observation(obs, info, spec.obs_keys)] * spec.n_obs_steps),
                              spec.obs_keys)
        latency = warm_up(policy, first, calls=2)
        log.info("%s (%s, NFE %d) warmed up: act() %.1f ms", args.model, config["policy_type"], policy.nfe,
                 1e3 * latency)
        runner = PolicyRunner(policy, runner_config, loader=loader, backend=args.backend, ood=monitor,
                              workspace=SIM_WORKSPACE, fk=lambda q: env.sim.fk(q)[0], policy_name=str(args.model))
        printer = StatusPrinter() if not args.no_status else None
        try:
            stats = run_closed_loop(runner, env, loop_config, on_status=printer, video=video,
                                    video_camera=video_camera)
        finally:
            if printer is not None:
                printer.finish()
    finally:
        if video is not None:
            video.close()
        if runner is not None:
            runner.close()
        env.close()
    stats.update({"model": str(args.model), "policy_type": config["policy_type"], "task": task,
                  "nfe": int(policy.nfe), "options": options})
    lat = stats["inference"]["latency_ms"]
    log.info("%d ticks in %.1f s (%.1f Hz), %.2f%% on time, %d skipped; inference p50 %s ms p99 %s ms, "
             "%d deadline misses; %d/%d episodes succeeded; %d stop event(s)",
             stats["ticks"], stats["duration_s"], stats["command_hz"], 100 * stats["on_time_fraction"],
             stats["skipped_ticks"], _ms(lat.get("p50")), _ms(lat.get("p99")),
             stats["inference"]["deadline_misses"], stats["successes"], stats["episodes"], len(stats["stop_events"]))
    if args.stats:
        path = Path(args.stats)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_jsonable(stats), indent=2))
        except OSError as e:
            raise ConfigError(f"cannot write --stats {path}: {e.strerror}") from None
        log.info("statistics written to %s", path)
    return 0


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f}"
