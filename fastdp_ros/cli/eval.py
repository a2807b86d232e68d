"""`fastdp eval MODEL --task push --episodes N --out R.json`: success rate and latency in MuJoCo,
or in any gymnasium environment with `--env package.module:factory` (runtime/gym_env.py)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from fastdp_ros.cli.options import add_threads_argument
from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    from fastdp_ros.runtime.evaluate import EVAL_SEED0

    p = sub.add_parser("eval", help="roll a model out in the simulation or a gymnasium env (--env): success rate, "
                                    "return, latency",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="model directory")
    p.add_argument("--task", default=None, help="task (default: the one the model's dataset recorded)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--out", default=None, help="write the report (JSON) here")
    p.add_argument("--seed0", type=int, default=EVAL_SEED0, help="first evaluation seed")
    p.add_argument("--sampler", default=None, help="dp: ddpm | ddim | edm (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (ddim / edm)")
    p.add_argument("--n-action-steps", type=int, default=None, help="actions executed per chunk")
    add_policy_option_argument(p)
    p.add_argument("--device", default="cpu")
    add_threads_argument(p)
    g = p.add_argument_group("your own environment (docs/dataset.md)")
    g.add_argument("--env", default=None, metavar="MODULE:FACTORY",
                   help="evaluate in the gymnasium env this callable returns instead of the simulation")
    g.add_argument("--env-kwargs", default="{}", metavar="JSON", help="keyword arguments of the factory")
    g.add_argument("--obs-map", action="append", default=None, metavar="KEY=ENTRY",
                   help="the policy's observation KEY is the env's observation (or info) ENTRY; repeatable")
    g.add_argument("--max-steps", type=int, default=None, help="end an episode after this many steps")
    g.add_argument("--stop-at-success", action="store_true", help="end an episode at its first success")
    p.set_defaults(run=run)


def _option_value(text: str):
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def add_policy_option_argument(p) -> None:
    p.add_argument("-o", "--option", action="append", default=None, metavar="KEY=VALUE",
                   help="a run-time option of the policy's loader (a keyword of its from_model_dir), e.g. "
                        "seed=3; repeatable")


def policy_options(pairs: list[str] | None) -> dict:
    """--option KEY=VALUE pairs as loader keyword arguments."""
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--option takes KEY=VALUE (a loader option such as query_every=16), got {pair!r}")
        options[key.strip()] = _option_value(value.strip())
    return options


def check_seed_overlap(model_config: dict, seed0: int, episodes: int) -> None:
    """Refuse evaluation seeds that were demonstration seeds of the model's dataset."""
    dataset = model_config.get("provenance", {}).get("dataset")
    if not dataset or not Path(dataset).exists():
        return
    from fastdp_ros.data import ReplayBuffer

    buffer = ReplayBuffer.open(dataset)
    if "episode_seed" not in buffer.meta_keys:
        return
    demo = set(int(s) for s in buffer.episode_meta("episode_seed"))
    clash = demo.intersection(range(seed0, seed0 + episodes))
    if clash:
        raise ConfigError(f"evaluation seeds {sorted(clash)[:5]}... were demonstration seeds of {dataset}; "
                          f"choose --seed0 outside [{min(demo)}, {max(demo)}]")


def load_rollout_policy(model: str, task: str | None = None, sampler: str | None = None, steps: int | None = None,
                        device: str = "cpu", extra: dict | None = None):
    """(policy, its task, its config, the load options) of a model to roll out in the simulation."""
    from fastdp_ros.policies import load_policy, read_config

    config = read_config(model)
    task = task or config.get("spec", {}).get("extra", {}).get("task")
    if not task:
        raise ConfigError(f"{model} does not record its task; pass --task")
    options = {"device": device}
    if sampler is not None:
        options["sampler"] = sampler
    if steps is not None:
        options["steps"] = steps
    options.update(extra or {})
    return load_policy(model, **options), task, config, options


def run(args) -> int:
    from fastdp_ros.hardware import configure_threads
    from fastdp_ros.policies import read_config
    from fastdp_ros.runtime.evaluate import evaluate_policy

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    configure_threads(args.threads)
    if args.env is None:  # the demonstration seeds are the simulation's; another env's seeds are its own
        check_seed_overlap(read_config(args.model), args.seed0, args.episodes)
    policy, task, config, options = load_rollout_policy(args.model, args.task or args.env, args.sampler, args.steps,
                                                        args.device, policy_options(args.option))
    episode_end = {"max_steps": args.max_steps, "stop_at_success": args.stop_at_success}
    if args.env is None:
        report = evaluate_policy(policy, task, args.episodes, seed0=args.seed0, n_action_steps=args.n_action_steps,
                                 **episode_end)
    else:
        from fastdp_ros.data.importers import parse_mapping
        from fastdp_ros.runtime.gym_env import ObservationAdapter, make_env

        adapter = ObservationAdapter(policy.spec, parse_mapping(args.obs_map, "--obs-map"))
        env = make_env(args.env, args.env_kwargs)
        try:
            report = evaluate_policy(policy, task, args.episodes, seed0=args.seed0, n_action_steps=args.n_action_steps,
                                     env=env, observe=adapter, **episode_end)
        finally:
            getattr(env, "close", lambda: None)()
        report.extra.update({"env": args.env, "env_kwargs": args.env_kwargs})
    report.extra.update({"model": str(args.model), "policy_type": config["policy_type"], **options})
    lo, hi = report.success_ci95
    lat = report.latency_ms
    log.info("%s on %s: success %.1f%% (95%% CI %.1f-%.1f) over %d episodes, mean return %.2f, NFE %d, "
             "act() p50 %.1f ms p99 %.1f ms", args.model, task, 100 * report.success_rate, 100 * lo, 100 * hi,
             report.episodes, report.mean_return, report.nfe, lat.get("p50", np.nan), lat.get("p99", np.nan))
    log.info("%.1f model queries per episode%s", report.queries_per_episode,
             "".join(f", {k.replace('_', ' ')} {v}" for k, v in report.costs.items()))
    if report.mode_coverage:
        log.info("successful episodes per expert mode: %s",
                 ", ".join(f"{mode} {n}" for mode, n in report.mode_coverage.items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report.to_dict(), indent=2))
    return 0
