"""Out-of-distribution scoring helpers: calibrated thresholds, AUROC, image perturbations.

A nearest-neighbour OOD score (larger = farther from the demonstrations) is flagged when it
exceeds a threshold calibrated as a quantile of the scores of held-out in-distribution frames.
`ood_evaluation` measures how well a score separates held-out frames from perturbed copies of
them (AUROC) and how often the calibrated flag fires on each.

The perturbations work on uint8 images (N, ..., H, W, 3) and stand in for what a deployed
monitor must catch; each applies to every camera of the observation:

  cube_colour    pixels of the red cube (red clearly above green and blue) turned blue: an
                 unseen cube colour (frames where the cube is hidden stay unchanged)
  global_colour  the whole image's hue turned by 120 degrees (R, G, B -> B, R, G)
  camera_shift   the image translated by 1/8 of its size right and down (edges repeated):
                 a bumped camera
  noise          additive Gaussian noise, std 60 (of 255)
  unrelated      a random two-colour checkerboard instead of the scene

Observations without cameras get low-dimensional perturbations instead, applied to every
low-dimensional key, scaled by each dimension's spread over the batch (its max - min):

  state_offset   every value moved by half its spread, up or down at random per frame: a
                 state beside the demonstrations'
  state_noise    Gaussian noise of a quarter of the spread on every value
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fastdp_ros.errors import ConfigError

PERTURBATIONS = ("cube_colour", "global_colour", "camera_shift", "noise", "unrelated")
LOWDIM_PERTURBATIONS = ("state_offset", "state_noise")
NOISE_STD = 60.0


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve of `scores_out` (positives) against `scores_in` (negatives).

    The probability that a random positive scores higher than a random negative, ties
    counting one half (the Mann-Whitney U statistic over n_in * n_out). 1.0 separates
    perfectly, 0.5 is chance.
    """
    neg = np.asarray(scores_in, dtype=np.float64).reshape(-1)
    pos = np.asarray(scores_out, dtype=np.float64).reshape(-1)
    if len(neg) == 0 or len(pos) == 0:
        raise ConfigError("AUROC needs at least one in-distribution and one out-of-distribution score")
    if not (np.all(np.isfinite(neg)) and np.all(np.isfinite(pos))):
        raise ConfigError("AUROC scores contain NaN or inf")
    both = np.concatenate([neg, pos])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both), dtype=np.float64)
    ranks[order] = np.arange(1, len(both) + 1)
    # tied scores share the mean of their ranks
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    rank_sum = np.bincount(inverse, weights=ranks)
    ranks = (rank_sum / counts)[inverse]
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(neg) * len(pos)))


def calibrate_threshold(scores, quantile: float) -> float:
    """The `quantile` of in-distribution scores: about 1 - quantile of such frames get flagged."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) == 0:
        raise ConfigError("cannot calibrate an OOD threshold without in-distribution scores")
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"the OOD quantile must be in (0, 1], got {quantile}")
    return float(np.quantile(s, quantile, method="higher"))


def cube_mask(images: np.ndarray) -> np.ndarray:
    """Pixels of the red cube: red bright and well above green and blue (the table is brown)."""
    rgb = images.astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r > 90) & (r > 2 * g) & (r > 2 * b)


def perturb_images(images: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A perturbed copy of uint8 images (..., H, W, 3); see the module docs for the kinds."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 3 or images.shape[-1] != 3:
        raise ConfigError(f"perturb_images needs uint8 (..., H, W, 3) images, got {images.dtype} {images.shape}")
    h, w = images.shape[-3:-1]
    if kind == "cube_colour":
        out = images.copy()
        mask = cube_mask(images)
        out[mask] = images[mask][:, ::-1]  # (R, G, B) -> (B, G, R): red cube to blue
        return out
    if kind == "global_colour":
        return np.roll(images, 1, axis=-1)
    if kind == "camera_shift":
        dy, dx = max(1, h // 8), max(1, w // 8)
        rows = np.clip(np.arange(h) - dy, 0, h - 1)
        cols = np.clip(np.arange(w) - dx, 0, w - 1)
        return images[..., rows[:, None], cols[None, :], :]
    if kind == "noise":
        noisy = images.astype(np.float32) + rng.normal(0.0, NOISE_STD, images.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if kind == "unrelated":
        lead = images.shape[:-3]
        n = int(np.prod(lead)) if lead else 1
        out = np.empty((n, h, w, 3), np.uint8)
        for i in range(n):
            cell = int(rng.integers(3, max(4, min(h, w) // 4) + 1))
            board = ((np.arange(h)[:, None] // cell + np.arange(w)[None, :] // cell) % 2).astype(bool)
            colours = rng.integers(0, 256, (2, 3), dtype=np.uint8)
            out[i] = np.where(board[..., None], colours[0], colours[1])
        return out.reshape(images.shape)
    raise ConfigError(f"unknown perturbation {kind!r}; known: {', '.join(PERTURBATIONS)}")


def perturb_lowdim(values: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A perturbed copy of a batch of low-dim values (N, ..., d); see the module docs for the kinds."""
    values = np.asarray(values, np.float64)
    spread = np.ptp(values.reshape(-1, values.shape[-1]), axis=0) if values.size else np.zeros(values.shape[-1])
    spread = np.where(spread > 0, spread, 1.0)  # a constant dimension still moves
    if kind == "state_offset":
        sign = np.where(rng.random((len(values),) + (1,) * (values.ndim - 1)) < 0.5, -1.0, 1.0)
        return (values + sign * 0.5 * spread).astype(np.float32)
    if kind == "state_noise":
        return (values + rng.normal(0.0, 1.0, values.shape) * 0.25 * spread).astype(np.float32)
    raise ConfigError(f"unknown low-dimensional perturbation {kind!r}; known: {', '.join(LOWDIM_PERTURBATIONS)}")


def perturb_observations(obs: Mapping[str, np.ndarray], image_keys: Sequence[str], kind: str,
                         rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Copy of a batch of observations with every camera perturbed (low-dim keys untouched), or,
    for a LOWDIM_PERTURBATIONS kind, every low-dim key perturbed (cameras untouched)."""
    if kind in LOWDIM_PERTURBATIONS:
        return {k: v if k in image_keys else perturb_lowdim(v, kind, rng) for k, v in obs.items()}
    if not image_keys:
        raise ConfigError("image perturbations need an observation with cameras")
    return {k: perturb_images(v, kind, rng) if k in image_keys else v for k, v in obs.items()}


def ood_evaluation(score_batch: Callable[[dict[str, np.ndarray]], np.ndarray], obs: Mapping[str, np.ndarray],
                   image_keys: Sequence[str], threshold: float, kinds: Sequence[str] = PERTURBATIONS,
                   seed: int = 0, batch_size: int = 256) -> dict:
    """AUROC and flag rates of an OOD score: held-out frames `obs` ({key: (N, n_obs, ...)})
    against each perturbation of them.

    score_batch maps a batch of observations to (B,) scores, larger meaning more unusual.
    Returns a JSON-able dict: the in-distribution score summary and flag rate (false
    alarms), per perturbation the AUROC, flag rate (detections) and score summary, and the
    AUROC of all perturbations pooled.
    """
    rng = np.random.default_rng(seed)
    n = len(next(iter(obs.values())))

    def scores_of(batch_obs) -> np.ndarray:
        parts = [np.asarray(score_batch({k: v[i:i + batch_size] for k, v in batch_obs.items()}), np.float64)
                 for i in range(0, n, batch_size)]
        return np.concatenate(parts).reshape(-1)

    def summary(s: np.ndarray) -> dict:
        return {"mean": float(s.mean()), "p50": float(np.median(s)), "p99": float(np.quantile(s, 0.99)),
                "flag_rate": float(np.mean(s > threshold))}

    scores_in = scores_of(obs)
    report = {"threshold": float(threshold), "frames": int(n), "in_distribution": summary(scores_in),
              "perturbations": {}}
    pooled = []
    for kind in kinds:
        perturbed = perturb_observations(obs, image_keys, kind, rng)
        scores_out = scores_of(perturbed)
        pooled.append(scores_out)
        entry = {"auroc": auroc(scores_in, scores_out), **summary(scores_out)}
        if kind == "cube_colour":  # frames where no camera sees the cube are not perturbed at all
            changed = np.zeros(n, bool)
            for k in image_keys:
                changed |= np.any(perturbed[k] != obs[k], axis=tuple(range(1, obs[k].ndim)))
            entry["frames_with_cube_visible"] = float(changed.mean())
            if changed.any():
                entry["auroc_cube_visible"] = auroc(scores_in, scores_out[changed])
        report["perturbations"][kind] = entry
    report["auroc_all"] = auroc(scores_in, np.concatenate(pooled))
    report["auroc_min"] = min(e["auroc"] for e in report["perturbations"].values())
    return report
