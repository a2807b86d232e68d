"""`fastdp collect` (scripted expert demonstrations, or rollouts of a model with --policy ->
zarr dataset) and `fastdp replay` (re-run a dataset's recorded actions in the simulation from
the recorded seeds)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastdp_ros.cli.options import add_threads_argument
from fastdp_ros.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

#: first seed of demonstrations; evaluation seeds start far above (runtime.evaluate.EVAL_SEED0)
DEMO_SEED0 = 0


def _cameras(text: str) -> tuple[str, ...]:
    cams = tuple(c.strip() for c in text.split(",") if c.strip())
    return cams


def add_parser(sub) -> None:
    p = sub.add_parser("collect", help="record scripted expert demonstrations in MuJoCo",
                       description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, help="reach | push | pick_place | pick_place_around")
    p.add_argument("--episodes", type=int, default=200, help="episodes to record")
    p.add_argument("--out", required=True, help="output zarr store (a folder)")
    p.add_argument("--seed", type=int, default=DEMO_SEED0, help="seed of the first episode (then +1 each)")
    p.add_argument("--image-size", type=int, default=96, help="camera image height and width (px)")
    p.add_argument("--cameras", type=_cameras, default=("front", "wrist"), help="comma-separated camera names")
    p.add_argument("--rate", type=float, default=10.0, help="recording (control) rate in Hz")
    p.add_argument("--no-images", action="store_true", help="record low-dimensional state only")
    p.add_argument("--keep-failed", action="store_true",
                   help="keep episodes the expert failed (marked in meta/episode_success)")
    p.add_argument("--action-noise", type=float, default=0.0,
                   help="std of Gaussian noise added to every arm action the expert commands (the noisy "
                        "action is executed and recorded): mixed-quality data, with several actions seen "
                        "in similar states, for a reward model such as RACTD's; the gripper is left alone")
    p.add_argument("--policy", default=None, metavar="MODEL",
                   help="record rollouts of this model directory instead of the expert (its cameras, image "
                        "size and rate; every episode kept, failed ones marked): data of a policy's own "
                        "mistakes, e.g. for RACTD's reward model (--reward-dataset)")
    p.add_argument("--sampler", default=None, help="with --policy: the model's sampler (as in `fastdp eval`)")
    p.add_argument("--steps", type=int, default=None, help="with --policy: its sampling steps")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    add_threads_argument(p)
    p.set_defaults(run=run_collect)

    r = sub.add_parser("replay", help="replay a dataset's recorded actions in the simulation",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("dataset", help="zarr store written by `fastdp collect`")
    r.add_argument("--episodes", type=int, default=None, help="replay only the first N episodes")
    r.add_argument("--out", default=None, help="write the replay report (JSON) here")
    r.set_defaults(run=run_replay)


def append_step(steps: dict[str, list], obs: dict, info: dict, action, reward: float, **extra) -> None:
    """One recorded row: the observation and info the action was chosen from, the action executed
    (plus `extra` per-step arrays) and the reward that followed."""
    from fastdp_ros.sim import object_state

    for k, v in obs.items():
        steps.setdefault(k, []).append(v)
    steps.setdefault("object_state", []).append(object_state(info))
    steps.setdefault("action", []).append(np.asarray(action, np.float32))
    for k, v in extra.items():
        steps.setdefault(k, []).append(v)
    steps.setdefault("timestamp", []).append(np.float64(info["time"]))
    steps.setdefault("reward", []).append(np.float32(reward))


def record_episode(env, seed: int, action_noise: float = 0.0) -> tuple[dict[str, np.ndarray], bool, float, int]:
    """Roll the task's scripted expert out from `seed`; returns per-step arrays, success, return
    and the expert's mode (which of its ways to do the task it drew, e.g. the side of a push).

    action_noise > 0 adds N(0, action_noise^2) to every arm dimension of the expert's action
    (not the gripper's, the last one); the noisy action is the one executed and recorded, while
    action_cartesian keeps the expert's noise-free Cartesian command.
    """
    from fastdp_ros.sim import make_expert

    obs, info = env.reset(seed=seed)
    expert = make_expert(env.task_name, env, np.random.default_rng(seed))
    noise_rng = np.random.default_rng([seed, 2])
    steps: dict[str, list] = {}
    ret, success = 0.0, False
    for _ in range(env.max_steps):
        action, action_cartesian = expert.act(env)
        if action_noise > 0:
            action = np.asarray(action, np.float64).copy()
            action[:-1] += noise_rng.normal(0.0, action_noise, size=action.shape[0] - 1)
        before = (obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        append_step(steps, *before, action, reward, action_cartesian=np.asarray(action_cartesian, np.float32))
        ret += float(reward)
        success = bool(info.get("success", False))
        if terminated or truncated:
            break
    return {k: np.stack(v) for k, v in steps.items()}, success, ret, int(expert.mode)


class RolloutRecorder:
    """Writes a policy's rollouts (evaluate_policy's on_step / on_episode) as dataset episodes."""

    def __init__(self, buffer):
        self.buffer = buffer
        self.steps: dict[str, list] = {}

    def on_step(self, obs, info, action, reward) -> None:
        append_step(self.steps, obs, info, action, reward)

    def on_episode(self, result) -> None:
        data = {k: np.stack(v) for k, v in self.steps.items()}
        self.steps = {}
        self.buffer.add_episode(data, episode_seed=result.seed, episode_success=result.success,
                                episode_return=result.episode_return)


def collect_rollouts(args) -> int:
    """`fastdp collect --policy MODEL`: the model's closed-loop rollouts, every episode kept."""
    from fastdp_ros.cli.eval import load_rollout_policy
    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.hardware import configure_threads
    from fastdp_ros.runtime.evaluate import cameras_of, evaluate_policy
    from fastdp_ros.sim import make_env

    configure_threads(args.threads)
    policy, task, _, options = load_rollout_policy(args.policy, args.task, args.sampler, args.steps)
    spec = policy.spec
    h, w, _ = spec.image_shape if spec.image_keys else (96, 96, 3)
    env = make_env(task, image_size=(h, w), cameras=cameras_of(spec) or ("front",), control_dt=spec.dt,
                   render=bool(spec.image_keys))
    attrs = {**env.metadata(), "policy": str(Path(args.policy).resolve()),
             "policy_options": {k: v for k, v in options.items() if k != "device"}, "seed0": args.seed}
    buffer = ReplayBuffer.create(args.out, attrs=attrs, overwrite=args.overwrite)
    recorder = RolloutRecorder(buffer)
    try:
        report = evaluate_policy(policy, task, args.episodes, seed0=args.seed, env=env,
                                 on_step=recorder.on_step, on_episode=recorder.on_episode)
    finally:
        env.close()
    log.info("wrote %d rollouts of %s (%d steps) to %s: %d succeeded, mean return %.2f", buffer.n_episodes,
             args.policy, buffer.n_steps, args.out, round(report.success_rate * report.episodes), report.mean_return)
    return 0


def run_collect(args) -> int:
    # imported here so `fastdp --help` stays fast and works without a renderer
    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.sim import make_env

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    out = Path(args.out)
    if (out.exists() or out.is_symlink()) and not args.overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it, or choose another path")
    if args.policy is not None:
        if args.action_noise or args.keep_failed or args.no_images:
            raise ConfigError("--action-noise, --keep-failed and --no-images are options of the scripted expert; "
                              "--policy rollouts keep every episode and record what the model observes")
        return collect_rollouts(args)
    if args.rate <= 0:
        raise ConfigError(f"--rate must be > 0 Hz, got {args.rate}")
    if not np.isfinite(args.action_noise) or args.action_noise < 0:
        raise ConfigError(f"--action-noise must be a finite std >= 0, got {args.action_noise}")
    env = make_env(args.task, image_size=args.image_size, cameras=args.cameras,
                   control_dt=1.0 / args.rate, render=not args.no_images)
    attrs = {**env.metadata(), "expert": f"scripted_{args.task}", "seed0": args.seed,
             "action_noise": float(args.action_noise)}
    buffer = ReplayBuffer.create(args.out, attrs=attrs, overwrite=args.overwrite)
    n_kept = n_success = n_tried = 0
    t0 = time.perf_counter()
    sim_time = 0.0
    bar = tqdm(total=args.episodes, desc=f"collect {args.task}", unit="ep")
    seed = args.seed
    # Failed expert episodes are dropped by default; give up if the expert keeps failing.
    while n_kept < args.episodes and n_tried < 3 * args.episodes + 10:
        data, success, ret, mode = record_episode(env, seed, args.action_noise)
        n_tried += 1
        n_success += success
        sim_time += len(data["action"]) * env.dt
        if success or args.keep_failed:
            buffer.add_episode(data, episode_seed=seed, episode_success=success, episode_return=ret,
                               expert_mode=mode)
            n_kept += 1
            bar.update(1)
        else:
            log.warning("expert failed on seed %d; episode dropped", seed)
        seed += 1
        bar.set_postfix(success=f"{n_success}/{n_tried}")
    bar.close()
    env.close()
    wall = time.perf_counter() - t0
    log.info("wrote %d episodes (%d steps) to %s; expert success %d/%d; %.1f s simulated in %.1f s wall (%.1fx real time)",
             buffer.n_episodes, buffer.n_steps, args.out, n_success, n_tried, sim_time, wall, sim_time / max(wall, 1e-9))
    if n_kept < args.episodes:
        raise DatasetError(f"the expert succeeded on only {n_success} of {n_tried} episodes; "
                           f"{args.out} holds fewer episodes than asked")
    return 0


def run_replay(args) -> int:
    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.sim import make_env

    buffer = ReplayBuffer.open(args.dataset)
    attrs = buffer.attrs
    if "task" not in attrs or "episode_seed" not in buffer.meta_keys:
        raise DatasetError(f"{args.dataset} was not written by `fastdp collect` (no task / episode seeds)")
    render = any(k.startswith("img_") for k in buffer.keys)
    env = make_env(attrs["task"], image_size=attrs.get("image_size", 96), cameras=tuple(attrs.get("cameras", ())),
                   control_dt=attrs["dt"], render=render)
    seeds = buffer.episode_meta("episode_seed")
    recorded = buffer.episode_meta("episode_success")
    n = buffer.n_episodes if args.episodes is None else min(args.episodes, buffer.n_episodes)
    report = []
    for i in tqdm(range(n), desc="replay", unit="ep"):
        ep = buffer.get_episode(i, keys=["action", "joint_pos"])
        obs, info = env.reset(seed=int(seeds[i]))
        max_dev = 0.0
        success = False
        for t, action in enumerate(ep["action"]):
            max_dev = max(max_dev, float(np.max(np.abs(obs["joint_pos"] - ep["joint_pos"][t]))))
            obs, _, terminated, truncated, info = env.step(action)
            success = bool(info.get("success", False))
            if terminated or truncated:
                break
        report.append({"episode": i, "seed": int(seeds[i]), "recorded_success": bool(recorded[i]),
                       "replay_success": success, "max_joint_deviation": max_dev})
    env.close()
    n_ok = sum(r["replay_success"] for r in report)
    worst = max((r["max_joint_deviation"] for r in report), default=0.0)
    log.info("replayed %d episodes of %s: %d succeeded; largest joint deviation from the recording %.2e rad",
             n, args.dataset, n_ok, worst)
    if args.out:
        Path(args.out).write_text(json.dumps({"dataset": str(args.dataset), "episodes": report}, indent=2))
    mismatched = [r["episode"] for r in report if r["replay_success"] != r["recorded_success"]]
    if mismatched:
        log.error("replay outcome differs from the recording for episodes %s", mismatched)
        return 1
    return 0
