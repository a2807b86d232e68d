"""Why the OOD monitor misses OOD camera frames, and which score would separate them.

    fastdp collect --task push --policy models/push_onedp --episodes 40 --seed 4000000 --out /tmp/rollouts
    python scripts/ood_feature_probe.py --monitor models/push_alt_ood --dataset data/push \
        --rollouts /tmp/rollouts --out bench/ood_feature_probe.json

Scores the policy's own closed-loop frames (nominal: what the monitor must never stop on) and the
frames bench/ros_graph.py puts on the camera topics (noise, a solid colour, a checkerboard), in
three ways:

  fused        the monitor's score today: 1 - cosine similarity of ALT's embedding (every
               camera + joints) to the nearest demonstration frame
  camera_cos   per camera, 1 - cosine similarity of that camera's encoder features to the
               nearest demonstration frame's
  camera_l2z   per camera, the distance to the nearest demonstration frame's features after
               standardising each feature on the demonstrations (divided by sqrt(dim))

For each, the nominal p99 and maximum against the OOD frames' minimum and median, with every
camera replaced and with one camera replaced. A score separates where the OOD minimum lies above
the nominal maximum.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

KINDS = ("noise", "solid", "unrelated")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--monitor", default="models/push_alt_ood", help="an ALT model directory (the monitor's)")
    ap.add_argument("--dataset", default="data/push", help="the demonstrations it was trained on")
    ap.add_argument("--rollouts", required=True, help="closed-loop rollouts of the policy (fastdp collect --policy)")
    ap.add_argument("--train-frames", type=int, default=6000, help="demonstration frames to compare against")
    ap.add_argument("--nominal-frames", type=int, default=1500, help="rollout frames to score")
    ap.add_argument("--ood-frames", type=int, default=30, help="frames of each OOD kind")
    ap.add_argument("--out", default=str(ROOT / "bench" / "ood_feature_probe.json"))
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.policies.base import load_policy
    from ros_graph import ood_frames

    policy = load_policy(args.monitor)
    encoder, spec = policy.encoder, policy.spec
    train, rollouts = ReplayBuffer.open(args.dataset), ReplayBuffer.open(args.rollouts)
    rng = np.random.default_rng(0)
    train_idx = np.sort(rng.choice(train.n_steps, min(args.train_frames, train.n_steps), replace=False))
    nominal_idx = np.sort(rng.choice(rollouts.n_steps, min(args.nominal_frames, rollouts.n_steps), replace=False))
    ood = {kind: np.stack([ood_frames(kind, k) for k in range(args.ood_frames)]) for kind in KINDS}

    def frames(buffer, key, idx):
        return np.asarray(buffer[key][:])[idx]

    @torch.inference_mode()
    def camera_features(images: np.ndarray, key: str) -> torch.Tensor:
        out = []
        for i in range(0, len(images), 256):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + 256]))
            zeros = {k: torch.zeros(len(x), d) for k, d in spec.lowdim_dims.items()}
            prepared, _ = encoder.prepare_frames({k: x for k in encoder.image_keys}, zeros)
            out.append(encoder.cameras[key](prepared[key] * 2.0 - 1.0))
        return torch.cat(out)

    def summary(nominal: np.ndarray, scored: dict) -> dict:
        row = {"nominal_p99": float(np.percentile(nominal, 99)), "nominal_max": float(nominal.max())}
        for kind, s in scored.items():
            row[kind] = {"min": float(s.min()), "median": float(np.median(s)),
                         "separates": bool(s.min() > nominal.max())}
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}

    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "monitor": args.monitor,
              "rollout_frames": int(len(nominal_idx)), "train_frames": int(len(train_idx)), "scores": {}}

    # the fused score, every camera replaced and one at a time (joints stay the rollout's); ALT
    # embeds the newest frame only, so each observation is that frame repeated over n_obs_steps
    def newest(buffer, key, idx):
        x = np.asarray(buffer[key][:])[idx]
        return np.repeat(x[:, None], spec.n_obs_steps, axis=1)

    nominal_obs = {key: newest(rollouts, key, nominal_idx) for key in spec.obs_keys}

    def fused(obs) -> np.ndarray:
        return np.concatenate([policy.score_batch({k: v[i:i + 256] for k, v in obs.items()})
                               for i in range(0, len(next(iter(obs.values()))), 256)])

    nominal_fused = fused(nominal_obs)
    n = args.ood_frames
    for cameras in (tuple(encoder.image_keys), *((k,) for k in encoder.image_keys)):
        name = "fused, " + ("every camera" if len(cameras) > 1 else cameras[0]) + " replaced"
        scored = {}
        for kind in KINDS:
            obs = {k: v[:n] for k, v in nominal_obs.items()}
            obs.update({k: np.repeat(ood[kind][:, None], spec.n_obs_steps, axis=1) for k in cameras})
            scored[kind] = fused(obs)
        result["scores"][name] = summary(nominal_fused, scored)
    for key in encoder.image_keys:
        f_train = camera_features(frames(train, key, train_idx), key)
        f_nominal = camera_features(frames(rollouts, key, nominal_idx), key)
        f_ood = {kind: camera_features(ood[kind], key) for kind in KINDS}
        mu, sd = f_train.mean(0), f_train.std(0) + 1e-6

        def cos(f):
            return (1 - (F.normalize(f, dim=1) @ F.normalize(f_train, dim=1).T).max(1).values).numpy()

        def l2z(f):
            return (torch.cdist((f - mu) / sd, (f_train - mu) / sd).min(1).values / f.shape[1] ** 0.5).numpy()

        for name, score in (("camera_cos", cos), ("camera_l2z", l2z)):
            result["scores"][f"{name}, {key}"] = summary(score(f_nominal), {k: score(v) for k, v in f_ood.items()})
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, row in result["scores"].items():
        print(f"{name:40s} nominal p99 {row['nominal_p99']:.3f} max {row['nominal_max']:.3f} | " +
              " ".join(f"{k} min {row[k]['min']:.3f}{'*' if row[k]['separates'] else ''}" for k in KINDS))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
