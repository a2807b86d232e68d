"""Synchronous policy evaluation in the simulation: rollouts with action chunking.

Each episode resets the task from an evaluation seed, keeps the last n_obs_steps
observations (the first one repeated at the start, as the training windows pad), asks the
policy for a chunk and executes n_action_steps of it from the current step (chunk index
n_obs_steps - 1, where the window's "now" is) before asking again. Physics waits for the
policy: this measures what a policy does, not whether it keeps up (that is `fastdp run`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)

#: evaluation seeds start here; `fastdp collect` records demonstrations from seed 0 upwards
EVAL_SEED0 = 1_000_000


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    episode_return: float
    steps: int
    policy_calls: int
    #: the task's scalar measurements at the episode's end (e.g. cube_goal_distance): why it failed
    final: dict = field(default_factory=dict)
    #: model queries (sampler runs): policy_calls unless the policy acts between queries (LWD)
    queries: int = 0


@dataclass
class EvalReport:
    task: str
    episodes: int
    success_rate: float
    success_ci95: tuple[float, float]
    mean_return: float
    nfe: int
    latency_ms: dict
    n_action_steps: int
    seeds: list[int]
    per_episode: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    #: mean model queries per episode, and what besides NFE the policy costs (Policy.cost_report)
    queries_per_episode: float = float("nan")
    costs: dict = field(default_factory=dict)
    #: where the task reports the way an episode went (pick_place_around's route_mode: the
    #: expert's modes 0 / 1, -1 none): successful episodes per mode, as strings for JSON
    mode_coverage: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["success_ci95"] = list(self.success_ci95)
        return d


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sensible at 0 and n successes)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mode_coverage(results: list[EpisodeResult], key: str = "route_mode") -> dict[str, int]:
    """Successful episodes per mode ({"0": n, "1": m}) where the task reports `key` in its
    final info; {} where it does not."""
    counts: dict[str, int] = {}
    for r in results:
        if r.success and key in r.final:
            mode = str(int(r.final[key]))
            counts[mode] = counts.get(mode, 0) + 1
    return dict(sorted(counts.items()))


def latency_summary(samples_s: list[float]) -> dict:
    """p50/p90/p99/mean/max in milliseconds."""
    if not samples_s:
        return {}
    ms = np.asarray(samples_s) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "max": float(ms.max()),
            "count": int(ms.size)}


def cameras_of(spec) -> tuple[str, ...]:
    """Simulation camera names behind a spec's image keys (img_front -> front)."""
    cams = []
    for key in spec.image_keys:
        if not key.startswith("img_"):
            raise ConfigError(f"image key {key!r} does not name a simulation camera (img_<camera>)")
        cams.append(key[4:])
    return tuple(cams)


def stack_history(history: deque, keys) -> dict[str, np.ndarray]:
    return {k: np.stack([frame[k] for frame in history]) for k in keys}


def extra_observation(obs: dict, info: dict, keys) -> dict:
    """Add keys the simulation reports in `info` rather than `obs` (object_state)."""
    if "object_state" in keys:
        from fastdp_ros.sim import object_state  # the same layout `fastdp collect` records

        obs = {**obs, "object_state": object_state(info)}
    return obs


def evaluate_policy(policy, task: str, episodes: int, seed0: int = EVAL_SEED0, n_action_steps: int | None = None,
                    show_progress: bool = True, env=None, on_step=None, on_episode=None, observe=None,
                    max_steps: int | None = None, stop_at_success: bool = False) -> EvalReport:
    """Roll `policy` out for `episodes` episodes of `task` from seeds seed0, seed0 + 1, ...

    env: None for the simulation's `task`, or any gymnasium env; observe(obs, info) then maps its
    observations onto the policy's keys (runtime.gym_env.ObservationAdapter). An episode ends
    when the env ends it, after max_steps steps, or (stop_at_success) at the first success.
    on_step(obs, info, action, reward) sees every step: the observation and info the action
    was chosen from, the action executed and the reward that followed; on_episode(result) sees
    each finished episode's EpisodeResult (`fastdp collect --policy` records rollouts this way).
    """
    from fastdp_ros.runtime.gym_env import success_of

    spec = policy.spec
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
    n_exec = n_action_steps or spec.n_action_steps
    if not 1 <= n_exec <= spec.horizon - spec.n_obs_steps + 1:
        raise ConfigError(f"n_action_steps must be in [1, {spec.horizon - spec.n_obs_steps + 1}], got {n_exec}")
    own_env = env is None
    sim_extra = {}
    if observe is None:
        from fastdp_ros.sim import STEP_COST, SUCCESS_BONUS

        sim_extra = {"reward": {"step_cost": STEP_COST, "success_bonus": SUCCESS_BONUS}}
        keys = spec.obs_keys

        def observe(obs, info):
            return extra_observation(obs, info, keys)
    if own_env:
        from fastdp_ros.sim import make_env

        h, w, _ = spec.image_shape if spec.image_keys else (96, 96, 3)
        env = make_env(task, image_size=(h, w), cameras=cameras_of(spec) or ("front",), control_dt=spec.dt,
                       render=bool(spec.image_keys))
    keys = spec.obs_keys
    latencies: list[float] = []
    results: list[EpisodeResult] = []
    start = spec.n_obs_steps - 1
    try:
        obs, info = env.reset(seed=seed0)
        policy.act(stack_history(deque([observe(obs, info)] * spec.n_obs_steps), keys))  # warm-up
        for i in tqdm(range(episodes), desc=f"eval {task}", unit="ep", disable=not show_progress):
            seed = seed0 + i
            obs, info = env.reset(seed=seed)
            history = deque([observe(obs, info)] * spec.n_obs_steps, maxlen=spec.n_obs_steps)
            policy.reset()
            queries0 = policy.queries
            ret, steps, calls, success, done = 0.0, 0, 0, False, False
            while not done:
                t0 = time.perf_counter()
                chunk = policy.act(stack_history(history, keys))
                latencies.append(time.perf_counter() - t0)
                calls += 1
                for action in chunk[start:start + n_exec]:
                    before = (obs, info)
                    obs, reward, terminated, truncated, info = env.step(action)
                    if on_step is not None:
                        on_step(*before, action, reward)
                    history.append(observe(obs, info))
                    ret += float(reward)
                    steps += 1
                    success = success or success_of(info)
                    if terminated or truncated or steps == max_steps or (stop_at_success and success):
                        done = True
                        break
            final = {k: float(v) for k, v in info.items()
                     if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)}
            results.append(EpisodeResult(seed, success, ret, steps, calls, final, policy.queries - queries0))
            if on_episode is not None:
                on_episode(results[-1])
    finally:
        if own_env:
            env.close()
    n_ok = sum(r.success for r in results)
    return EvalReport(
        task=task, episodes=episodes, success_rate=n_ok / max(1, episodes),
        success_ci95=wilson_interval(n_ok, episodes),
        mean_return=float(np.mean([r.episode_return for r in results])) if results else float("nan"),
        nfe=int(policy.nfe), latency_ms=latency_summary(latencies), n_action_steps=n_exec,
        seeds=[r.seed for r in results], per_episode=[asdict(r) for r in results],
        extra=sim_extra,
        queries_per_episode=float(np.mean([r.queries for r in results])) if results else float("nan"),
        costs=dict(policy.cost_report()),
        mode_coverage=mode_coverage(results),
    )
