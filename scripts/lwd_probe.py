#!/usr/bin/env python
"""Where an LWD model loses: the generated policies (VAE) or the latent diffusion (prior).

1. Open loop, on demonstration segments (training and held-out episodes): the normalized action
   error of the generated policy fed the recorded states, with the weights written from
   - the trajectory encoder's posterior mean of the segment itself (what the VAE can express),
   - a latent sampled by the latent diffusion from the segment's first observation (run time),
   - another segment's posterior (a wrong plan), and the zero latent (the prior's mean);
   with the distance of the sampled latent to the posterior mean beside the latents' spread.
2. Closed loop in the simulation, from the demonstrations' own seeds (their first state): the
   posterior latents of the recorded segments (an oracle of the latent diffusion: the best it
   could do with this VAE) against the model itself (the latent diffusion's own latents).
3. Latent neighbours: whether episodes that start from nearby cube and goal positions get nearby
   latents (what a latent diffusion has to interpolate between on new positions).

    python scripts/lwd_probe.py models/push_lwd --dataset data/push --episodes 30 --out bench/lwd_probe.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from fastdp_ros.data import ReplayBuffer, split_episodes
from fastdp_ros.diffusion import FixedStepSampler
from fastdp_ros.nn.hypernet import functional_mlp
from fastdp_ros.policies import load_policy
from fastdp_ros.policies.lwd import SegmentDataset
from fastdp_ros.runtime.evaluate import evaluate_policy, extra_observation
from fastdp_ros.runtime.gym_env import success_of
from fastdp_ros.sim import make_env


def open_loop(policy, buffer, episodes, segments: int, seed: int) -> dict:
    model, config = policy.model, policy.config
    data = SegmentDataset(buffer, policy.spec, config.segment_steps, model.policy_keys, episodes)
    rows = np.random.default_rng(seed).choice(len(data), min(segments, len(data)), replace=False)
    batch = torch.utils.data.default_collate([data[int(i)] for i in rows])
    torch.manual_seed(seed)
    with torch.inference_mode():
        action = batch["action"].float()
        b, k = action.shape[:2]
        state = model.policy_state(batch["segment"], torch.arange(k).float().expand(b, k) / k)
        target = model.normalize_action(action, None)
        mu, _ = model.trajectory_encoder(torch.cat([state, target], -1).flatten(1)).chunk(2, -1)
        prior = FixedStepSampler(model.denoiser, model.make_sampler(None))(
            model.encode(batch["obs"]), torch.randn(b, config.latent_dim))

        def error(z):
            pred = functional_mlp(state, model.hypernet(z), model.layer_sizes, config.policy_activation)
            return float(((pred - target) ** 2).mean())

        return {"segments": int(b), "mse_posterior": error(mu), "mse_prior": error(prior),
                "mse_other_segment": error(mu.roll(1, dims=0)), "mse_zero_latent": error(torch.zeros_like(mu)),
                "prior_to_posterior": float((prior - mu).norm(dim=-1).mean()),
                "posterior_spread": float((mu - mu.mean(0)).norm(dim=-1).mean())}


@torch.inference_mode()
def recorded_posterior(policy, recorded: dict, t: int):
    """(posterior mean (1, latent), the segment's policy state, its normalized target actions) of
    the segment that starts at step t of a recorded episode (edge-padded at its end)."""
    model, k, action_key = policy.model, policy.config.segment_steps, policy.spec.action_key
    rows = np.clip(np.arange(t, t + k), 0, len(recorded[action_key]) - 1)
    segment = {key: torch.from_numpy(recorded[key][rows][None]).float() for key in model.policy_keys}
    state = model.policy_state(segment, torch.arange(k).float()[None] / k)
    target = model.normalize_action(torch.from_numpy(recorded[action_key][rows][None]).float(), None)
    mu, _ = model.trajectory_encoder(torch.cat([state, target], -1).flatten(1)).chunk(2, -1)
    return mu, state, target


def latent_neighbours(policy, buffer, train, held_out, key: str) -> dict:
    """Is the latent a smooth function of the task's state? For each held-out episode's first
    segment, the posterior of the training episode whose first `key` (the cube and goal) is
    nearest: its distance to the held-out posterior and the open-loop error of its policy on the
    held-out segment, beside the same for a random training episode."""
    model, config = policy.model, policy.config
    keys = (*model.policy_keys, policy.spec.action_key)

    def first_segment(e):
        return recorded_posterior(policy, buffer.get_episode(e, keys), 0)

    state0 = np.asarray(buffer[key][:])[[buffer.episode_slice(e).start for e in range(buffer.n_episodes)]]
    train_state0 = state0[list(train)]
    train_mu = torch.cat([first_segment(e)[0] for e in train])
    rng = np.random.default_rng(0)
    near, near_mse, other, other_mse = [], [], [], []
    with torch.inference_mode():
        for e in held_out:
            mu, state, target = first_segment(e)
            nearest = int(np.argmin(np.linalg.norm(train_state0 - state0[e], axis=1)))
            for z, dist, mse in ((train_mu[nearest:nearest + 1], near, near_mse),
                                 (train_mu[int(rng.integers(len(train)))][None], other, other_mse)):
                dist.append(float((z - mu).norm()))
                pred = functional_mlp(state, model.hypernet(z), model.layer_sizes, config.policy_activation)
                mse.append(float(((pred - target) ** 2).mean()))
    return {"key": key, "held_out_episodes": len(held_out),
            "nearest_to_posterior": float(np.mean(near)), "mse_nearest": float(np.mean(near_mse)),
            "random_to_posterior": float(np.mean(other)), "mse_random": float(np.mean(other_mse))}


def oracle_closed_loop(policy, buffer, episodes, max_steps: int) -> float:
    """Success of the generated policies written from the recorded segments' posterior means."""
    model, config = policy.model, policy.config
    k = config.segment_steps
    seeds = buffer.episode_meta("episode_seed")
    spec = policy.spec
    env = make_env(buffer.attrs["task"], image_size=tuple(spec.image_shape[:2]) if spec.image_keys else (96, 96),
                   cameras=("front",), control_dt=spec.dt, render=False)  # the generated policy reads no camera
    max_steps = max_steps or env.max_steps
    successes = 0
    for e in episodes:
        recorded = buffer.get_episode(e, (*model.policy_keys, policy.spec.action_key))
        obs, info = env.reset(seed=int(seeds[e]))
        success, params = False, None
        for t in range(max_steps):
            if t % k == 0:
                with torch.inference_mode():
                    params = model.hypernet(recorded_posterior(policy, recorded, t)[0])[0].numpy()
            obs = extra_observation(obs, info, model.policy_keys)  # object_state comes in info
            current = {key: np.asarray(obs[key], np.float32)[None] for key in model.policy_keys}
            obs, _, terminated, truncated, info = env.step(policy.generated_action(current, params, t % k))
            success = success or success_of(info)
            if terminated or truncated:
                break
        successes += success
    env.close()
    return successes / max(len(episodes), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--dataset", default="data/push")
    parser.add_argument("--episodes", type=int, default=30, help="demonstrations rolled out closed loop")
    parser.add_argument("--segments", type=int, default=64, help="segments per open-loop measurement")
    parser.add_argument("--max-steps", type=int, default=None, help="default: the task's time limit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-key", default="object_state",
                        help="the recorded task state that finds a held-out episode's nearest training episode")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = load_policy(args.model, seed=args.seed)
    if policy.model.relative_dims or policy.config.camera_inputs:
        raise SystemExit("lwd_probe: models with --relative-to or --camera-inputs are not supported")
    buffer = ReplayBuffer.open(args.dataset)
    train, val = split_episodes(len(buffer.episode_ends[:]), val_ratio=0.05, seed=args.seed)
    report = {"model": args.model, "open_loop_train": open_loop(policy, buffer, train, args.segments, args.seed),
              "open_loop_held_out": open_loop(policy, buffer, val, args.segments, args.seed)}
    if args.state_key in buffer:
        report["latent_neighbours"] = latent_neighbours(policy, buffer, train, val, args.state_key)
    demos = list(range(args.episodes))
    if not np.array_equal(buffer.episode_meta("episode_seed")[:args.episodes], demos):
        raise SystemExit("lwd_probe: the dataset's first episodes were not recorded from seeds 0, 1, ...")
    report["closed_loop_demo_seeds"] = {
        "episodes": len(demos),
        "posterior_latents": oracle_closed_loop(policy, buffer, demos, args.max_steps),
        "latent_diffusion": evaluate_policy(policy, buffer.attrs["task"], len(demos), seed0=0,
                                            show_progress=False).success_rate}
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
