"""Calibrate the OOD monitor's threshold for false stops per hour of nominal operation.

    python scripts/calibrate_ood.py --monitor models/push_alt_ood --policy models/push_onedp --episodes 200
    python scripts/calibrate_ood.py --monitor models/push_dp --ood-dataset data/push   # any model's encoder

The threshold the monitor model brings was a quantile of demonstration frames: about one frame
in a hundred over it, so with the policy driving (its own frames differ from the expert's) the
monitor stopped the arm within seconds. Here the policy's own closed-loop rollouts (`fastdp
collect --policy`, recorded at the model's 10 Hz) are scored by the monitor model, and the
threshold is set for `--target-per-hour` false stops (runtime.ood.calibrate_false_stops).

The monitor node checks every new camera frame (30 Hz cameras, at most `max_check_rate` 60
checks a second) with `debounce` 1: about three checks per recorded frame of nearly the same
scene. The calibration counts a stop for every recorded frame over the threshold (debounce 1
on the recording); where exceedances do not come in runs, the node's rate can reach 3x it.

It then reports the detection that remains at that threshold (AUROC and the share of frames
flagged for each perturbation of retrieval.ood, against the rollout frames) and writes
<monitor>/ood_calibration.json, which the monitor node reads (its `ood_threshold` parameter
still overrides it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def collect(policy: str, task: str, episodes: int, seed: int, out: Path) -> None:
    fastdp = Path(sys.executable).parent / "fastdp"
    subprocess.run([str(fastdp), "collect", "--task", task, "--policy", policy, "--episodes", str(episodes),
                    "--seed", str(seed), "--out", str(out), "--overwrite"], check=True)


def episode_scores(monitor, buffer) -> tuple[list[np.ndarray], dict]:
    """Check scores per episode (every recorded frame with its history), and the windows."""
    from fastdp_ros.retrieval import episode_observations, window_batches

    spec = monitor.spec
    sequences, parts = [], {k: [] for k in spec.obs_keys}
    for ep in range(buffer.n_episodes):
        windows = list(window_batches(episode_observations(buffer, ep, spec.obs_keys), spec.n_obs_steps))
        sequences.append(np.concatenate([monitor.score_batch(w) for w in windows]).astype(np.float64))
        for k in spec.obs_keys:
            parts[k].extend(w[k] for w in windows)
    return sequences, {k: np.concatenate(v) for k, v in parts.items()}


def camera_distances(monitor, buffer) -> dict[str, np.ndarray]:
    """Every recorded frame's distance per camera (a CameraFeatureMonitor with unit scales)."""
    from fastdp_ros.retrieval import episode_observations, window_batches

    spec = monitor.spec
    out = {k: [] for k in spec.image_keys}
    for ep in range(buffer.n_episodes):
        for window in window_batches(episode_observations(buffer, ep, spec.obs_keys), spec.n_obs_steps):
            for k, d in monitor.camera_scores(window).items():
                out[k].append(d)
    return {k: np.concatenate(v) for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monitor", default=str(ROOT / "models" / "push_alt_ood"), help="the monitor's model (ALT)")
    ap.add_argument("--policy", default=str(ROOT / "models" / "push_onedp"), help="the policy that drives")
    ap.add_argument("--task", default="push")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=3_000_000, help="first rollout seed (eval uses 1000000+)")
    ap.add_argument("--rollouts", default="", help="an existing `fastdp collect --policy` store to reuse")
    ap.add_argument("--target-per-hour", type=float, default=0.1, help="false stops per hour of nominal operation")
    ap.add_argument("--debounce", type=int, default=1, help="recorded frames over the threshold for a stop")
    ap.add_argument("--camera-table", default="", metavar="DATASET",
                    help="score each camera on its own (runtime.ood.CameraFeatureMonitor): build the "
                         "demonstrations' feature table from DATASET into the monitor's directory, scale each "
                         "camera by its 0.99 quantile on the rollouts, then calibrate that score")
    ap.add_argument("--camera-frames", type=int, default=6000, help="demonstration frames in the camera table")
    ap.add_argument("--ood-dataset", default="", metavar="DATASET",
                    help="a monitor model without an OOD score of its own: calibrate its kNN distance to the "
                         "training embeddings of DATASET (runtime.ood.monitor_from_dataset, as the monitor node's "
                         "ood_dataset parameter builds it)")
    ap.add_argument("--ood-samples", type=int, default=1000, help="with --ood-dataset: the node's ood_samples")
    ap.add_argument("--out", default="", help="default: <monitor>/ood_calibration.json")
    args = ap.parse_args(argv)

    import torch

    from fastdp_ros.data.replay_buffer import ReplayBuffer
    from fastdp_ros.policies.base import load_policy
    from fastdp_ros.retrieval.ood import ood_evaluation
    from fastdp_ros.errors import ConfigError
    from fastdp_ros.runtime.ood import (CALIBRATION_FILE, CAMERA_TABLE_FILE, CameraFeatureMonitor, OODMonitor,
                                        build_camera_tables, calibrate_false_stops, load_camera_tables,
                                        monitor_from_dataset, save_camera_tables)

    if args.camera_table and args.ood_dataset:
        raise ConfigError("--camera-table and --ood-dataset calibrate two different scores: give one")

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.rollouts) if args.rollouts else Path(tmp) / "rollouts"
        if not args.rollouts:
            collect(args.policy, args.task, args.episodes, args.seed, store)
        buffer = ReplayBuffer.open(str(store))
        monitor = load_policy(args.monitor)
        score_kind, camera_table, embedded = "model", None, None
        if args.ood_dataset:
            monitor = monitor_from_dataset(monitor, args.ood_dataset, samples=args.ood_samples)
            score_kind, embedded = OODMonitor.kind, monitor.embedded
        if args.camera_table:
            tables = build_camera_tables(monitor.camera_features, args.camera_table, monitor.spec,
                                         frames=args.camera_frames)
            # each camera in its own units: its 0.99 quantile on these closed-loop frames
            unscaled = CameraFeatureMonitor(monitor.camera_features, tables, {k: 1.0 for k in tables},
                                            spec=monitor.spec)
            raw = camera_distances(unscaled, buffer)
            scales = {k: float(np.quantile(v, 0.99)) for k, v in raw.items()}
            path = Path(args.monitor) / CAMERA_TABLE_FILE
            save_camera_tables(path, tables, scales)
            tables, scales = load_camera_tables(path)  # calibrate what the monitor will load (fp16 features)
            monitor = CameraFeatureMonitor(monitor.camera_features, tables, scales, spec=monitor.spec)
            score_kind = CameraFeatureMonitor.backend
            camera_table = {"dataset": args.camera_table, "file": CAMERA_TABLE_FILE,
                            "frames": {k: len(v) for k, v in tables.items()},
                            "scales": {k: round(v, 6) for k, v in scales.items()}}
        sequences, obs = episode_scores(monitor, buffer)
        success = buffer.episode_meta("episode_success") if "episode_success" in buffer.meta_keys else None
    period = float(monitor.spec.dt)
    calibration = calibrate_false_stops(sequences, args.debounce, period, args.target_per_hour)
    n = len(next(iter(obs.values())))
    keep = np.sort(np.random.default_rng(0).choice(n, min(n, 2000), replace=False))
    detection = ood_evaluation(monitor.score_batch, {k: v[keep] for k, v in obs.items()}, monitor.spec.image_keys,
                               calibration.threshold)
    old = None if monitor.threshold is None else float(monitor.threshold)
    frames = np.concatenate(sequences)
    from fastdp_ros.policies import model_hash

    report = {
        "threshold": calibration.threshold,
        "score": score_kind,
        "camera_table": camera_table,
        "embedded": embedded,
        "monitor_model_hash": model_hash(args.monitor),  # a retrained monitor needs a new calibration
        "calibration": calibration.to_dict(),
        "rollouts": {"policy": str(args.policy), "task": args.task, "episodes": len(sequences),
                     "first_seed": args.seed, "successes": None if success is None else int(np.sum(success)),
                     "frames": int(len(frames)), "score_p50": float(np.median(frames)),
                     "score_p99": float(np.quantile(frames, 0.99)), "score_max": float(frames.max())},
        "previous_threshold": None if old is None else {
            "value": old, "rule": "quantile of held-out demonstration frames",
            "false_stops_per_hour_on_these_rollouts": sum(np.sum(s > old) for s in sequences) / calibration.hours},
        "detection_at_threshold": detection,
        "note": "stops counted per recorded 10 Hz frame; the monitor node checks each new 30 Hz camera frame "
                "(debounce 1), so where exceedances do not come in runs its rate can reach 3x the target; "
                "AUROC and flag rates are of perturbed rollout frames against the rollout frames",
        "command": " ".join(["python", "scripts/calibrate_ood.py", *(argv if argv is not None else sys.argv[1:])]),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out) if args.out else Path(args.monitor) / CALIBRATION_FILE
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{score_kind} score: threshold {calibration.threshold:.4f} for {args.target_per_hour}/h false stops "
          f"({calibration.hours:.2f} h of rollouts, previous {old}); AUROC "
          + ", ".join(f"{k} {v['auroc']:.3f} (flags {v['flag_rate']:.2f})"
                      for k, v in detection["perturbations"].items()) + f"; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
