#!/usr/bin/env python
"""What ALT retrieves: the action error of the looked-up chunk on held-out demonstration frames.

For every frame of the episodes a model held out of its table (its OOD calibration episodes),
the chunk ALT would act on is compared with the demonstration's own chunk at that frame, in
normalized action units ([-1, 1] over the dataset's limits):

  error          mean |retrieved - demonstration| over the executed steps (chunk indices
                 n_obs_steps - 1 .. n_obs_steps - 2 + n_action_steps)
  error_start    the same over the episodes' first 16 frames (where the lookup must find a
                 demonstration whose cube lies where this one's does), error_rest over the others
  first_step     the same for the first executed action (what the arm is sent now)
  joint_rad      mean |retrieved - demonstration| of the 7 joint targets over the executed
                 steps, in radians
  start_offset   mean |first executed joint targets - current joint_pos| (rad), beside the
                 demonstration's own (a chunk retrieved from a frame where the arm stood
                 elsewhere makes the arm jump)

per model, for the lookup it ships with (single chunk or k-NN blend) and for the other lookups
given by --k and --lookup-temperature, and the nearest chunk moved to start from the current
joints (`nearest_relative`, what --relative-lookup does); and for two retrieval
baselines over the same table episodes that need no training: the nearest frame by
proprioception (joint_pos, gripper) and by proprioception plus the simulator's cube state
(object_state; privileged, no camera sees it this exactly); and the floor of any single-chunk
lookup, the table chunk nearest the demonstration's own (`best_chunk_in_table`). With
`--state-lookup-episodes N`, the privileged state lookup (`StateLookup`: target and cube
position plus joints, k = 1 or 8, absolute or relative) is rolled out on the first N evaluation
seeds: what a lookup of recorded chunks does in closed loop when it knows the state; with
`--coverage-dataset` (a larger demonstration set) the same over its first 180 and 900 episodes.
With `--eval` reports of
`fastdp eval` (same order as --models), closed-loop success is put beside each model.

    python scripts/alt_probe.py --dataset data/push --models runs/push_alt_v1 runs/push_alt_aw \
        runs/push_alt_aw2_k1_none models/push_alt runs/push_alt_aw2_k1_joint_pos \
        --eval bench/eval/push_alt.json bench/eval/push_alt_aw_t0.01.json bench/eval/push_alt_aw2_k1.json \
        bench/eval/push_alt_v2.json bench/eval/push_alt_aw2_relative.json \
        --k 1 8 --lookup-temperature 0.05 --state-lookup-episodes 50 \
        --coverage-dataset data/push_state1000 --out bench/alt_probe.json
    # data/push_state1000: fastdp collect --task push --episodes 1000 --no-images --out data/push_state1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def normalized_limits(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale and offset taking each action dimension's [min, max] to [-1, 1] (constant dims: 1, -min)."""
    lo, hi = actions.min(0), actions.max(0)
    span = np.where(hi - lo > 1e-6, hi - lo, 2.0)
    return 2.0 / span, -1.0 - 2.0 * lo / span


#: frame of each held-out row (set by main): `error_start` is the error over the first frames of
#: the episodes, where the lookup must pick a demonstration whose cube lies where this one's does
FRAMES: dict = {}
START_FRAMES = 16


def chunk_errors(retrieved: np.ndarray, demo: np.ndarray, joint_now: np.ndarray, scale: np.ndarray,
                 executed: slice) -> dict:
    """retrieved, demo (N, T, D) raw actions -> the errors described in the module docstring."""
    r, d = retrieved[:, executed], demo[:, executed]
    diff = np.abs((r - d) * scale)
    start = FRAMES["frame"] < START_FRAMES
    def part(mask):
        return float(diff[mask].mean()) if mask.any() else None

    return {"error": float(diff.mean()), "error_start": part(start), "error_rest": part(~start),
            "first_step": float(diff[:, 0].mean()),
            "joint_rad": float(np.abs(r[..., :7] - d[..., :7]).mean()),
            "start_offset": float(np.abs(r[:, 0, :7] - joint_now).mean()),
            "start_offset_demo": float(np.abs(d[:, 0, :7] - joint_now).mean())}


def table_joints(buffer, table) -> np.ndarray:
    """joint_pos of every row (episode, frame) of a row table."""
    episodes = {int(e): buffer.get_episode(int(e), ["joint_pos"])["joint_pos"] for e in np.unique(table["episode"])}
    return np.stack([episodes[int(e)][int(f)] for e, f in zip(table["episode"], table["frame"])])


def relative(chunks: np.ndarray, row_joints: np.ndarray, joint_now: np.ndarray) -> np.ndarray:
    """Chunks whose joint targets are moved by joint_now - the joints of the frame they came from."""
    out = chunks.copy()
    out[..., :7] += (joint_now - row_joints)[:, None, :]
    return out


class StateLookup:
    """A lookup policy on privileged state, for the closed-loop ceiling of retrieval on this data:
    the table rows of `episodes` keyed by (target xy, cube xy) * position_weight (m) and joint_pos
    (rad); act() blends the chunks of the k nearest rows (weights exp(-(d2 - d2_min) / temperature)),
    absolute or moved to start from the current joints (relative)."""

    nfe = 1

    def __init__(self, buffer, episodes, k: int, relative: bool, position_weight: float = 10.0,
                 temperature: float = 1.0):
        import faiss

        from fastdp_ros.policies.spec import PolicySpec
        from fastdp_ros.retrieval import ActionChunks

        self.spec = PolicySpec(image_keys=(), image_shape=(96, 96, 3), lowdim_dims={"joint_pos": 7, "object_state": 10},
                               action_dim=8, dt=0.1, horizon=16, n_obs_steps=2, n_action_steps=8)
        self.k, self.relative, self.weight, self.temperature = k, relative, position_weight, temperature
        table = {"episode": [], "frame": [], "action": []}
        keys, joints = [], []
        for ep in episodes:
            d = buffer.get_episode(int(ep), ["joint_pos", "object_state", "action"])
            n = len(d["action"])
            keys.append(self.key(d["object_state"], d["joint_pos"]))
            joints.append(d["joint_pos"])
            table["episode"].append(np.full(n, ep, np.int32))
            table["frame"].append(np.arange(n, dtype=np.int32))
            table["action"].append(d["action"].reshape(n, -1))
        self.chunks = ActionChunks({k: np.concatenate(v) for k, v in table.items()}, 2, 16)
        self.joints = np.concatenate(joints)
        self.index = faiss.IndexFlatL2(keys[0].shape[1])
        self.index.add(np.ascontiguousarray(np.concatenate(keys), np.float32))

    def key(self, object_state: np.ndarray, joint_pos: np.ndarray) -> np.ndarray:
        """object_state = target xyz + cube xyz wxyz (fastdp_ros.sim.object_state)."""
        return np.concatenate([object_state[:, [0, 1, 3, 4]] * self.weight, joint_pos], 1).astype(np.float32)

    def act(self, obs: dict) -> np.ndarray:
        joint = obs["joint_pos"][-1]
        d2, ids = self.index.search(self.key(obs["object_state"][-1:], obs["joint_pos"][-1:]), self.k)
        chunks = self.chunks(ids[0])
        if self.relative:
            chunks[..., :7] += (joint - self.joints[ids[0]])[:, None, :]
        w = np.exp(-(d2[0] - d2[0, 0]) / self.temperature)
        return np.tensordot(w / w.sum(), chunks, axes=1).astype(np.float32)


def main(argv=None) -> int:
    import torch

    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.policies.alt import ALTPolicy, holdout_observations
    from fastdp_ros.retrieval import ActionChunks

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--models", nargs="+", required=True, help="ALT model directories")
    ap.add_argument("--eval", nargs="*", default=[], help="fastdp eval reports, one per model (same order)")
    ap.add_argument("--k", type=int, nargs="*", default=[1, 4, 16], help="lookups to compare: k nearest chunks")
    ap.add_argument("--lookup-temperature", type=float, nargs="*", default=[0.01, 0.05],
                    help="blend temperatures to compare for k > 1")
    ap.add_argument("--state-lookup-episodes", type=int, default=0,
                    help="also roll out the privileged state lookup (StateLookup) on this many evaluation seeds")
    ap.add_argument("--coverage-dataset", default=None,
                    help="a larger demonstration set of the task: the state lookup over its first N episodes")
    ap.add_argument("--coverage-episodes", type=int, nargs="*", default=[180, 900], help="the N of --coverage-dataset")
    ap.add_argument("--out", required=True, help="JSON report")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    buffer = ReplayBuffer.open(args.dataset)
    report = {"dataset": args.dataset, "units": "normalized actions ([-1, 1] over the dataset's limits) "
              "unless named _rad", "models": {}, "baselines": {}}
    first = None
    for i, path in enumerate(args.models):
        started = time.perf_counter()
        policy = ALTPolicy.from_model_dir(path)
        spec = policy.spec
        cfg = json.loads((Path(path) / "config.json").read_text())
        holdout = cfg["provenance"]["holdout_episodes"]
        obs = holdout_observations(policy, buffer, holdout, max_frames=10 ** 9)
        demo_table = {"episode": [], "frame": [], "action": [], "joint_pos": []}
        for ep in holdout:
            data = buffer.get_episode(int(ep), [spec.action_key, "joint_pos"])
            n = len(data[spec.action_key])
            demo_table["episode"].append(np.full(n, ep, np.int32))
            demo_table["frame"].append(np.arange(n, dtype=np.int32))
            demo_table["action"].append(data[spec.action_key].reshape(n, -1))
            demo_table["joint_pos"].append(data["joint_pos"].reshape(n, -1))
        demo_table = {k: np.concatenate(v) for k, v in demo_table.items()}
        demo = ActionChunks(demo_table, spec.n_obs_steps, spec.horizon)(np.arange(len(demo_table["frame"])))
        FRAMES["frame"] = demo_table["frame"]
        if first is None:
            all_actions = np.asarray(buffer[spec.action_key][:]); all_actions = all_actions.reshape(len(all_actions), -1)
            scale, _ = normalized_limits(all_actions)
            executed = slice(spec.n_obs_steps - 1, spec.n_obs_steps - 1 + spec.n_action_steps)
            first = dict(holdout=holdout, demo=demo, joint=demo_table["joint_pos"],
                         table_episodes=cfg["table"]["episodes"], spec=spec)
        with torch.inference_mode():
            z = np.concatenate([
                policy.encoder.embed({k: torch.from_numpy(np.ascontiguousarray(v[s:s + 512])) for k, v in obs.items()})
                .numpy() for s in range(0, len(demo), 512)])
        current = obs[policy.config.relative_to][:, -1] if policy.config.relative_to else [None] * len(z)
        retrieved = np.stack([policy.chunk_for(row, c) for row, c in zip(z, current)])
        entry = {"holdout_frames": int(len(demo)), "lookup": {"k": policy.config.lookup_k,
                                                              "temperature": policy.config.lookup_temperature},
                 "retrieved": chunk_errors(retrieved, demo, demo_table["joint_pos"], scale, executed),
                 "by_k": {},
                 "ood_auroc_all": json.loads((Path(path) / "ood_eval.json").read_text()).get("auroc_all")
                 if (Path(path) / "ood_eval.json").exists() else None,
                 "seconds": round(time.perf_counter() - started, 1)}
        # the nearest row's chunk moved to start from the current joints (what --relative-lookup does)
        ids = policy.index.search(z, 1).ids[:, 0]
        entry["nearest_relative"] = chunk_errors(
            relative(policy.chunks(ids), table_joints(buffer, policy.index.table)[ids], demo_table["joint_pos"]),
            demo, demo_table["joint_pos"], scale, executed)
        for k in args.k:  # other lookups of the same embedding
            for t in args.lookup_temperature:
                policy.config.lookup_k, policy.config.lookup_temperature = k, t
                chunks = np.stack([policy.chunk_for(row, c) for row, c in zip(z, current)])
                entry["by_k"][f"k={k},t={t}" if k > 1 else "k=1"] = chunk_errors(
                    chunks, demo, demo_table["joint_pos"], scale, executed)
                if k == 1:
                    break
        if i < len(args.eval):
            ev = json.loads(Path(args.eval[i]).read_text())
            entry["closed_loop"] = {"report": args.eval[i], "success_rate": ev.get("success_rate"),
                                    "episodes": ev.get("episodes") or ev.get("n_episodes")}
        report["models"][path] = entry
        print(path, json.dumps(entry))

    # retrieval baselines over the first model's table episodes: nearest frame by state
    import faiss

    spec = first["spec"]
    keysets = {"proprio": ["joint_pos", "gripper"], "proprio_cube_state": ["joint_pos", "gripper", "object_state"]}
    for name, keys in keysets.items():
        if any(k not in buffer for k in keys):
            continue
        def features(episodes):
            rows = []
            for ep in episodes:
                data = buffer.get_episode(int(ep), keys)
                rows.append(np.concatenate([np.asarray(data[k], np.float32).reshape(len(data[k]), -1) for k in keys], 1))
            return np.concatenate(rows)

        train_x, query_x = features(first["table_episodes"]), features(first["holdout"])
        lo, hi = train_x.min(0), train_x.max(0)
        s = np.where(hi - lo > 1e-6, 2.0 / (hi - lo + 1e-12), 0.0).astype(np.float32)
        index = faiss.IndexFlatL2(train_x.shape[1])
        index.add(np.ascontiguousarray(train_x * s))
        _, ids = index.search(np.ascontiguousarray(query_x * s), 1)
        table = {"episode": [], "frame": [], "action": []}
        for ep in first["table_episodes"]:
            a = buffer.get_episode(int(ep), [spec.action_key])[spec.action_key]
            table["episode"].append(np.full(len(a), ep, np.int32))
            table["frame"].append(np.arange(len(a), dtype=np.int32))
            table["action"].append(a.reshape(len(a), -1))
        table = {k: np.concatenate(v) for k, v in table.items()}
        chunks = ActionChunks(table, spec.n_obs_steps, spec.horizon)(ids[:, 0])
        report["baselines"][name] = {"keys": keys, **chunk_errors(chunks, first["demo"], first["joint"], scale, executed)}
        report["baselines"][name + "_relative"] = {"keys": keys, **chunk_errors(
            relative(chunks, table_joints(buffer, table)[ids[:, 0]], first["joint"]), first["demo"], first["joint"],
            scale, executed)}
        print(name, json.dumps(report["baselines"][name]))
    # the floor of single-chunk retrieval: the table chunk nearest the demonstration's own
    all_rows = ActionChunks(table, spec.n_obs_steps, spec.horizon)(np.arange(len(table["frame"])))
    flat = np.ascontiguousarray((all_rows[:, executed] * scale).reshape(len(all_rows), -1), np.float32)
    index = faiss.IndexFlatL2(flat.shape[1])
    index.add(flat)
    _, ids = index.search(np.ascontiguousarray((first["demo"][:, executed] * scale).reshape(len(first["demo"]), -1),
                                               np.float32), 1)
    report["baselines"]["best_chunk_in_table"] = chunk_errors(all_rows[ids[:, 0]], first["demo"], first["joint"],
                                                              scale, executed)
    print("best_chunk_in_table", json.dumps(report["baselines"]["best_chunk_in_table"]))
    if args.state_lookup_episodes:
        from fastdp_ros.runtime.evaluate import evaluate_policy

        report["state_lookup_closed_loop"] = {}
        for k, rel in ((1, False), (1, True), (8, False), (8, True)):
            name = f"k={k},{'relative' if rel else 'absolute'}"
            result = evaluate_policy(StateLookup(buffer, first["table_episodes"], k, rel), "push",
                                     args.state_lookup_episodes, show_progress=False)
            report["state_lookup_closed_loop"][name] = {"success_rate": result.success_rate,
                                                        "mean_return": result.mean_return,
                                                        "episodes": args.state_lookup_episodes}
            print("state lookup", name, report["state_lookup_closed_loop"][name])
    if args.coverage_dataset:  # the same lookup with more demonstrations (e.g. `fastdp collect --no-images`)
        from fastdp_ros.runtime.evaluate import evaluate_policy

        more = ReplayBuffer.open(args.coverage_dataset)
        report["state_lookup_coverage"] = {"dataset": args.coverage_dataset, "runs": {}}
        for n in args.coverage_episodes:
            for k in (1, 8):
                result = evaluate_policy(StateLookup(more, range(min(n, more.n_episodes)), k, False), "push",
                                         args.state_lookup_episodes or 50, show_progress=False)
                name = f"{n} episodes,k={k},absolute"
                report["state_lookup_coverage"]["runs"][name] = {"success_rate": result.success_rate,
                                                                 "mean_return": result.mean_return}
                print("state lookup", name, report["state_lookup_coverage"]["runs"][name])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
