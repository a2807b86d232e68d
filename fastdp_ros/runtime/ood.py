"""Out-of-distribution monitor: kNN distance of an observation embedding to the training set.

The monitor has its own encoder (e.g. the teacher's or ALT's `encode`, loaded separately from
the policy that drives the arm), embeds every observation it is shown and measures the
distance to the k-th nearest training embedding (retrieval.EmbeddingIndex.exact: the same
faiss index and single-query search as a policy's lookup table).
Embeddings are standardised with the training set's per-dimension mean and spread first, so
no single feature dominates the distance.

The threshold is calibrated, not guessed: `calibrate` takes embeddings of held-out
in-distribution observations (episodes the training set did not contain) and sets the
threshold to a quantile of their distances (retrieval.calibrate_threshold, the rule ALT's
training uses), i.e. an expected false-alarm rate per frame; `calibrate_false_stops` (below,
scripts/calibrate_ood.py) calibrates any of these scores for false stops per hour instead.
A single frame over the threshold is noise; `debounce` consecutive ones latch the stop,
which stays raised until `reset()`.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fastdp_ros.errors import ConfigError
from fastdp_ros.retrieval.index import EmbeddingIndex
from fastdp_ros.retrieval.ood import calibrate_threshold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OODReading:
    """One monitored frame: its score (kNN distance), whether it is over the threshold, the
    consecutive count, and whether the stop is latched."""

    score: float
    over: bool
    consecutive: int
    stopped: bool
    stamp: float


#: a camera frame whose pixels vary less than this across the image (standard deviation per
#: colour channel, 0-255) is blank: a covered lens, a dead or saturated sensor, a driver sending
#: a fill colour. The push demonstrations' and closed-loop frames spread 26 or more.
BLANK_IMAGE_STD = 4.0


def blank_camera(obs: dict, image_keys, min_std: float = BLANK_IMAGE_STD) -> str | None:
    """Why the newest frame of one of `image_keys` in `obs` is blank, or None. A blank frame is
    out of distribution whatever an encoder makes of it: the learned score of a plain colour
    close to the scene's own can stay under its threshold."""
    for key in image_keys:
        frame = np.asarray(obs[key])
        frame = frame.reshape(-1, *frame.shape[-3:])[-1]  # (H, W, C) of the newest step
        spread = float(frame.reshape(-1, frame.shape[-1]).std(0, dtype=np.float32).max())
        if spread < min_std:
            return (f"camera {key!r} sends a blank frame (pixel spread {spread:.2f} < {min_std:g}: "
                    f"a covered lens or a failed camera)")
    return None


class LatchedMonitor:
    """Debounce and latched stop over a per-frame OOD score; subclasses define `score(obs)`.

    `threshold` is the calibrated score above which a frame counts as out of distribution;
    `debounce` consecutive such frames latch the stop until `reset()`. `spec` (optional) is
    the encoder's PolicySpec: the runner builds the observation history it expects from it.
    `backend` names what computes the score (for the run's statistics). A blank camera frame
    (blank_camera, cameras of `spec`) counts as over the threshold without being scored.
    """

    backend = ""
    min_image_std = BLANK_IMAGE_STD

    def __init__(self, threshold: float | None = None, debounce: int = 3, spec=None):
        if debounce < 1:
            raise ConfigError(f"debounce must be >= 1 frame, got {debounce}")
        self.spec = spec
        self.debounce = int(debounce)
        self.threshold = None if threshold is None else float(threshold)
        self._lock = threading.Lock()
        self._consecutive = 0
        self._stopped = False
        self.stop_reason: str | None = None
        self.last: OODReading | None = None
        self.counts = {"frames": 0, "over": 0, "stops": 0}

    def score(self, obs: dict) -> float:
        raise NotImplementedError

    def observe(self, obs: dict, stamp: float = 0.0) -> OODReading:
        """Score one observation and update the debounce and the latch."""
        if self.threshold is None:
            raise ConfigError("the OOD monitor has no threshold: calibrate() it or pass threshold=")
        blank = blank_camera(obs, self.spec.image_keys, self.min_image_std) if self.spec is not None else None
        if blank is not None:
            return self.record(math.inf, stamp, why=blank)
        return self.record(self.score(obs), stamp)

    def record(self, score: float, stamp: float = 0.0, why: str | None = None) -> OODReading:
        """Update the debounce and latch with an already computed score (`why`: the stop
        reason when it is not the score itself)."""
        over = not (score <= self.threshold)  # NaN and inf count as over
        with self._lock:
            self.counts["frames"] += 1
            if over:
                self.counts["over"] += 1
                self._consecutive += 1
            else:
                self._consecutive = 0
            if over and self._consecutive >= self.debounce and not self._stopped:
                self._stopped = True
                self.counts["stops"] += 1
                self.stop_reason = f"out of distribution: {why}" if why else (
                    f"out of distribution: score {score:.3g} > threshold {self.threshold:.3g} for "
                    f"{self._consecutive} consecutive frames")
                log.error("OOD monitor: %s", self.stop_reason)
            self.last = OODReading(score, over, self._consecutive, self._stopped, stamp)
            return self.last

    @property
    def stopped(self) -> bool:
        return self._stopped

    def reset(self) -> None:
        """Release the latched stop (an operator's decision) and the debounce count."""
        with self._lock:
            self._stopped = False
            self._consecutive = 0
            self.stop_reason = None


class OODMonitor(LatchedMonitor):
    """kNN distance to training embeddings, calibrated threshold, debounce, latched stop.

    `encoder(obs) -> embedding` (1-D) is the monitor's own encoder. `train_embeddings` (n, d)
    come from the training set through the same encoder.
    """

    def __init__(self, encoder: Callable[[dict], np.ndarray], train_embeddings, k: int = 1,
                 threshold: float | None = None, debounce: int = 3, spec=None):
        super().__init__(threshold, debounce, spec)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        e = np.asarray(train_embeddings, dtype=np.float64)
        if e.ndim != 2 or e.shape[0] < 1 or e.shape[1] < 1:
            raise ConfigError(f"training embeddings must be a non-empty (n, dim) array, got shape {e.shape}")
        if not np.all(np.isfinite(e)):
            raise ConfigError("training embeddings contain NaN or inf")
        self.encoder = encoder
        self.k = int(k)
        self.mean = e.mean(0)
        # A constant feature carries no distance information; unit scale keeps it harmless.
        std = e.std(0)
        self.scale = np.where(std > 1e-8, std, 1.0)
        self.index = EmbeddingIndex.exact(self._standardise(e))

    backend = "faiss"
    kind = "knn"  # the score's name in a calibration report (calibrated_threshold)

    def _standardise(self, e: np.ndarray) -> np.ndarray:
        return (np.asarray(e, dtype=np.float64) - self.mean) / self.scale

    # ------------------------------------------------------------------ calibration

    def distances(self, embeddings) -> np.ndarray:
        """kNN distance (to the k-th neighbour) of each embedding row."""
        e = np.asarray(embeddings, dtype=np.float64)
        e = e.reshape(1, -1) if e.ndim == 1 else e
        if e.shape[1] != self.index.dim:
            raise ConfigError(f"embedding has {e.shape[1]} values, the training embeddings have {self.index.dim}")
        found = self.index.search(self._standardise(e), min(self.k, len(self.index)))
        return np.sqrt(np.maximum(found.scores[:, -1].astype(np.float64), 0.0))  # scores: squared L2

    def calibrate(self, held_out_embeddings, quantile: float = 0.99) -> float:
        """Threshold = `quantile` of held-out in-distribution distances (1 - quantile is the
        expected per-frame false-alarm rate). Returns the threshold."""
        e = np.asarray(held_out_embeddings, dtype=np.float64)
        if e.size == 0 or not np.all(np.isfinite(e)):
            raise ConfigError("calibration needs finite held-out embeddings (at least one)")
        d = self.distances(e)
        self.threshold = calibrate_threshold(d, quantile)
        log.info("OOD threshold %.4g = %.3f quantile of %d held-out distances (median %.4g, kNN over %d)",
                 self.threshold, quantile, d.size, float(np.median(d)), len(self.index))
        return self.threshold

    # ------------------------------------------------------------------ monitoring

    def score_batch(self, obs: dict) -> np.ndarray:
        """Scores of a batch {key: (B, n_obs, ...)}, one observation at a time through the encoder."""
        rows = len(next(iter(obs.values())))
        return np.array([self.score({k: v[i] for k, v in obs.items()}) for i in range(rows)], dtype=np.float64)

    def score(self, obs: dict) -> float:
        """kNN distance of one observation's embedding; inf when the encoder returns NaN/inf."""
        e = np.asarray(self.encoder(obs), dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(e)):
            return math.inf
        return float(self.distances(e)[0])


class ModelScoreMonitor(LatchedMonitor):
    """A model's own calibrated OOD score: ALT's 1 - cosine similarity to the nearest frame of
    its table, with the threshold stored in the model directory (no dataset needed). Given the
    `model_dir`, its ood_calibration.json (false stops per hour, see calibrated_threshold)
    replaces the threshold the model was trained with; `threshold_source` says which."""

    backend = "model"

    def __init__(self, policy, debounce: int = 3, model_dir=None):
        if not hasattr(policy, "ood_score") or getattr(policy, "threshold", None) is None:
            raise ConfigError(f"a {getattr(policy, 'policy_type', type(policy).__name__)!r} model has no OOD score "
                              "of its own (ALT models have one); give the monitor a dataset instead")
        super().__init__(policy.threshold, debounce, policy.spec)
        self.policy = policy
        self.threshold_source = "calibrated with the model"
        calibrated = calibrated_threshold(model_dir) if model_dir is not None else None
        if calibrated is not None:
            self.threshold, self.threshold_source = calibrated

    def score(self, obs: dict) -> float:
        s = float(self.policy.ood_score(obs))
        return s if math.isfinite(s) else math.inf


CAMERA_TABLE_FILE = "ood_camera_features.safetensors"


class CameraFeatureMonitor(LatchedMonitor):
    """Every camera on its own: the distance of the camera's encoder features to the nearest
    demonstration frame's (standardised per feature, as OODMonitor does), divided by that
    camera's nominal scale; the score is the largest over the cameras.

    A fused embedding of every camera and the joints, normalised to unit length, lets the
    healthy camera and the joints outvote a failed one and drops the feature magnitudes that
    set noise or a covered lens apart; scripts/ood_feature_probe.py measures both.

    `features(obs) -> {camera: (B, d)}` takes observation batches {key: (B, n_obs, ...)};
    `tables` are the demonstrations' features per camera (build_camera_tables) and `scales`
    each camera's nominal distance (scripts/calibrate_ood.py: its 0.99 quantile on the policy's
    closed-loop frames, so that a camera whose view varies more, the wrist's, counts in its own
    units)."""

    backend = "camera features"

    def __init__(self, features: Callable[[dict], dict], tables: dict, scales: dict, threshold: float | None = None,
                 debounce: int = 3, spec=None):
        super().__init__(threshold, debounce, spec)
        if not tables or set(tables) != set(scales):
            raise ConfigError(f"need a feature table and a scale for every camera, got tables for {sorted(tables)} "
                              f"and scales for {sorted(scales)}")
        bad = {k: v for k, v in scales.items() if not (math.isfinite(float(v)) and float(v) > 0)}
        if bad:
            raise ConfigError(f"camera scales must be finite and > 0, got {bad}")
        self.features = features
        self.cameras = {k: OODMonitor(None, v) for k, v in tables.items()}
        self.scales = {k: float(v) for k, v in scales.items()}
        # camera -> (its newest frame, that frame's score): two unsynchronised cameras bring one
        # new frame per check, and only that camera's encoder needs to run
        self._last: dict[str, tuple[np.ndarray, float]] = {}

    def camera_scores(self, obs: dict) -> dict[str, np.ndarray]:
        """(B,) scaled distances per camera of an observation batch; inf for non-finite features.
        `features` is given only the cameras in `obs`."""
        feats = self.features(obs)
        out = {}
        for key, monitor in self.cameras.items():
            if key not in feats:
                continue
            f = np.asarray(feats[key], dtype=np.float64)
            f = f.reshape(len(f), -1)
            finite = np.all(np.isfinite(f), axis=1)
            d = np.full(len(f), math.inf)
            if finite.any():
                d[finite] = monitor.distances(f[finite]) / self.scales[key]
            out[key] = d
        return out

    def score_batch(self, obs: dict) -> np.ndarray:
        return np.max(np.stack(list(self.camera_scores(obs).values())), axis=0)

    def score(self, obs: dict) -> float:
        """One observation's score; a camera whose newest frame is the one scored last time keeps
        that score instead of being encoded again."""
        newest = {k: np.asarray(obs[k])[-1] for k in self.cameras}
        kept = {k: self._last[k][1] for k in self.cameras
                if k in self._last and np.array_equal(self._last[k][0], newest[k])}
        fresh = [k for k in self.cameras if k not in kept]
        scores = dict(kept)
        if fresh:
            batch = {k: np.asarray(v)[None] for k, v in obs.items() if k not in kept}
            for key, d in self.camera_scores(batch).items():
                scores[key] = float(d[0])
                self._last[key] = (newest[key].copy(), scores[key])
        return max(scores.values())


def build_camera_tables(features: Callable[[dict], dict], dataset_path, spec, frames: int = 6000,
                        batch: int = 256) -> dict:
    """Per camera: the features of up to `frames` frames of the dataset (evenly spread)."""
    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.retrieval import episode_observations, window_batches

    if not spec.image_keys:
        raise ConfigError("the camera-feature OOD score needs a model with cameras")
    buffer = ReplayBuffer.open(dataset_path, required_keys=list(spec.obs_keys))
    ends = buffer.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    rows = np.unique(np.linspace(0, buffer.n_steps - 1, num=min(frames, buffer.n_steps)).round().astype(int))
    out = {k: [] for k in spec.image_keys}
    for ep in range(buffer.n_episodes):
        lo, hi = int(starts[ep]), int(ends[ep])
        take = rows[(rows >= lo) & (rows < hi)] - lo
        if len(take) == 0:
            continue
        data = episode_observations(buffer, ep, spec.obs_keys)
        for window in window_batches(data, spec.n_obs_steps, take, batch):
            f = features(window)
            for k in spec.image_keys:
                out[k].append(np.asarray(f[k], dtype=np.float32))
    return {k: np.concatenate(v) for k, v in out.items()}


def save_camera_tables(path, tables: dict, scales: dict) -> None:
    from safetensors.numpy import save_file

    tensors = {f"{k}.features": np.ascontiguousarray(v, dtype=np.float16) for k, v in tables.items()}
    tensors.update({f"{k}.scale": np.asarray([scales[k]], dtype=np.float32) for k in tables})
    save_file(tensors, str(path))


def load_camera_tables(path) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ConfigError(f"{path} is not a camera feature table ({e}): re-run scripts/calibrate_ood.py "
                          f"--camera-table") from None
    cameras = sorted({k.rsplit(".", 1)[0] for k in tensors})
    try:
        tables = {k: tensors[f"{k}.features"].astype(np.float32) for k in cameras}
        scales = {k: float(tensors[f"{k}.scale"][0]) for k in cameras}
    except KeyError as e:
        raise ConfigError(f"{path} lacks {e}: re-run scripts/calibrate_ood.py --camera-table") from None
    return tables, scales


def camera_feature_monitor(policy, model_dir, debounce: int = 3) -> CameraFeatureMonitor | None:
    """The camera-feature monitor of a model directory that has a camera table (and a policy
    with `camera_features`); None without a table. Its threshold is the directory's
    calibration, which must have been made for this score."""
    from pathlib import Path

    path = Path(model_dir) / CAMERA_TABLE_FILE
    if not path.is_file():
        return None
    if not hasattr(policy, "camera_features"):
        raise ConfigError(f"{path} exists, but a {getattr(policy, 'policy_type', '?')!r} model has no camera "
                          f"features to compare with it")
    tables, scales = load_camera_tables(path)
    missing = set(policy.spec.image_keys) - set(tables)
    if missing:
        raise ConfigError(f"{path} has no table for camera(s) {sorted(missing)}: re-run scripts/calibrate_ood.py "
                          f"--camera-table")
    monitor = CameraFeatureMonitor(policy.camera_features, {k: tables[k] for k in policy.spec.image_keys},
                                   {k: scales[k] for k in policy.spec.image_keys}, debounce=debounce, spec=policy.spec)
    calibrated = calibrated_threshold(model_dir, score=CameraFeatureMonitor.backend)
    if calibrated is None:
        raise ConfigError(f"{path} has no calibration beside it: run scripts/calibrate_ood.py --monitor {model_dir} "
                          f"--camera-table")
    monitor.threshold, monitor.threshold_source = calibrated
    return monitor


def model_monitor(policy, model_dir=None, debounce: int = 3) -> LatchedMonitor:
    """The OOD monitor of a model that scores observations itself (ALT): per camera when its
    directory has a camera table (camera_feature_monitor), else the model's own score
    (ModelScoreMonitor). The ROS monitor node and `fastdp run --ood-model` both build it here."""
    if model_dir is not None:
        camera = camera_feature_monitor(policy, model_dir, debounce)
        if camera is not None:
            return camera
    return ModelScoreMonitor(policy, debounce=debounce, model_dir=model_dir)


def embed_dataset(encoder: Callable[[dict], np.ndarray], dataset, indices) -> np.ndarray:
    """Embeddings (len(indices), d) of windows `indices` of a WindowDataset through `encoder`."""
    rows = [np.asarray(encoder(dataset[int(i)]["obs"]), dtype=np.float32).reshape(-1) for i in indices]
    if not rows:
        raise ConfigError("no dataset windows to embed")
    return np.stack(rows)


def monitor_from_dataset(encoder_policy, dataset_path, samples: int = 1000, quantile: float = 0.99,
                         debounce: int = 3, k: int = 1, val_ratio: float = 0.2, seed: int = 0,
                         model_dir=None) -> OODMonitor:
    """An OODMonitor whose encoder is `encoder_policy.encode`, with training embeddings from the
    training episodes of a dataset and its threshold calibrated on held-out episodes; given the
    encoder's `model_dir`, its ood_calibration.json for this score ("knn", the same dataset and
    `samples`; scripts/calibrate_ood.py --ood-dataset) replaces that threshold.

    At most `samples` windows are embedded from each side (evenly spread), so start-up time is
    bounded whatever the dataset's size.
    """
    from fastdp_ros.data import ReplayBuffer, WindowDataset, split_episodes
    from fastdp_ros.data.fingerprint import dataset_fingerprint

    spec = encoder_policy.spec
    buffer = ReplayBuffer.open(dataset_path, required_keys=list(spec.obs_keys))
    train_eps, val_eps = split_episodes(buffer.n_episodes, val_ratio=val_ratio, seed=seed)
    if len(val_eps) == 0:
        raise ConfigError(f"dataset {dataset_path} has {buffer.n_episodes} episode(s); the OOD threshold needs "
                          f"held-out episodes (at least 2 episodes in all)")
    kw = dict(obs_keys=list(spec.obs_keys), action_key=spec.action_key, n_obs_steps=spec.n_obs_steps,
              horizon=spec.horizon, n_action_steps=spec.n_action_steps,
              in_memory=not spec.image_keys)  # images: read the few sampled windows, not the whole store
    embeddings = []
    for eps in (train_eps, val_eps):
        ds = WindowDataset(buffer, episodes=eps, **kw)
        idx = np.unique(np.linspace(0, len(ds) - 1, num=min(samples, len(ds))).round().astype(int))
        embeddings.append(embed_dataset(encoder_policy.encode, ds, idx))
    monitor = OODMonitor(encoder_policy.encode, embeddings[0], k=k, debounce=debounce, spec=spec)
    monitor.calibrate(embeddings[1], quantile)
    monitor.threshold_source = f"quantile {quantile} of held-out {dataset_path} frames"
    # what the training embeddings are: a calibration for other ones measured another distance
    monitor.embedded = {"dataset_fingerprint": dataset_fingerprint(buffer), "samples": int(samples),
                        "val_ratio": float(val_ratio), "seed": int(seed), "k": int(k)}
    calibrated = calibrated_threshold(model_dir, OODMonitor.kind, monitor.embedded) if model_dir is not None else None
    if calibrated is not None:
        monitor.threshold, monitor.threshold_source = calibrated
    return monitor


# ------------------------------------------------------------------------------- false stops per hour


CALIBRATION_FILE = "ood_calibration.json"


def calibrated_threshold(model_dir, score: str = "model", embedded: dict | None = None) -> tuple[float, str] | None:
    """(threshold, what it is for) from `model_dir`/ood_calibration.json, written by
    scripts/calibrate_ood.py, for the monitor's `score` ("model": the model's own OOD score;
    CameraFeatureMonitor.backend; OODMonitor.kind with `embedded`, what its training embeddings
    were made from); None without one, or for a kNN monitor beside another score's calibration.
    A broken file, or one calibrated for another score or other embeddings, raises ConfigError."""
    import json
    from pathlib import Path

    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
        value = float(report["threshold"])
        rate = report.get("calibration", {}).get("target_per_hour")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path} is not a calibration report ({e}): re-run scripts/calibrate_ood.py "
                          f"or delete it") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{path} has threshold {value}: re-run scripts/calibrate_ood.py")
    calibrated_score = report.get("score", "model")
    if calibrated_score != score and embedded is not None:
        return None  # the model's own score was calibrated: this kNN monitor keeps its quantile
    if calibrated_score != score:
        # the two scores have different scales: one's threshold would stop the other at random or never
        raise ConfigError(f"{path} calibrates the {calibrated_score!r} score, this monitor computes {score!r}: "
                          f"re-run scripts/calibrate_ood.py --monitor {model_dir}"
                          + {"model": "", "knn": " --ood-dataset DATASET"}.get(score, " --camera-table DATASET"))
    if embedded is not None and report.get("embedded") != embedded:
        # kNN distances are to these training embeddings: others have another scale
        raise ConfigError(f"{path} calibrates kNN distances to other training embeddings ({report.get('embedded')}, "
                          f"this monitor has {embedded}): re-run scripts/calibrate_ood.py --monitor {model_dir} "
                          f"--ood-dataset DATASET --ood-samples {embedded.get('samples')}")
    calibrated_for = report.get("monitor_model_hash")
    if calibrated_for is not None:
        from fastdp_ros.policies import model_hash

        current = model_hash(model_dir)
        if calibrated_for != current:
            # a score's scale belongs to the weights that compute it: another encoder's threshold
            # would stop the arm at random or never
            raise ConfigError(f"{path} was calibrated for other weights of {Path(model_dir).name} (model hash "
                              f"{calibrated_for}, these are {current}): re-run "
                              f"scripts/calibrate_ood.py --monitor {model_dir}")
    return value, f"{path.name}, {rate} false stops per hour"


def debounced_stops(scores, threshold: float, debounce: int) -> int:
    """Stops a monitor raises on one sequence of check scores: `debounce` consecutive scores
    over `threshold` raise one (NaN counts as over); the count starts again after it (an
    operator released the stop)."""
    run = stops = 0
    for s in np.asarray(scores, dtype=np.float64).reshape(-1):
        run = run + 1 if not s <= threshold else 0
        if run >= debounce:
            stops, run = stops + 1, 0
    return stops


def debounced_peaks(scores, debounce: int) -> np.ndarray:
    """For every `debounce` consecutive checks, the lowest score: a threshold below it stops."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) < debounce:
        return np.zeros(0)
    windows = np.lib.stride_tricks.sliding_window_view(s, debounce)
    return windows.min(axis=1)


@dataclass(frozen=True)
class FalseStopCalibration:
    """A threshold chosen for a rate of false stops per hour of nominal operation.

    `threshold` is the larger of `zero_stop_threshold` (no stop at all in the recorded nominal
    operation) and `tail_threshold`, where an exponential tail fitted to the highest debounced
    scores (above their `tail_quantile`) predicts `target_per_hour` stops per hour: the recorded
    hours alone cannot show rates below one per recorded duration."""

    threshold: float
    target_per_hour: float
    debounce: int
    check_period_s: float
    hours: float
    checks: int
    sequences: int
    zero_stop_threshold: float
    tail_threshold: float
    tail_quantile: float
    tail_start: float
    tail_mean_excess: float
    tail_rate_per_hour: float
    stops_at_threshold: int

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def calibrate_false_stops(sequences, debounce: int, check_period_s: float, target_per_hour: float,
                          tail_quantile: float = 0.99) -> FalseStopCalibration:
    """The OOD threshold for `target_per_hour` false stops per hour, from check-score sequences
    of nominal operation (e.g. the policy's own closed-loop rollouts, one sequence per episode)
    checked every `check_period_s` with `debounce`."""
    if debounce < 1 or not (check_period_s > 0) or not (target_per_hour > 0) or not 0 < tail_quantile < 1:
        raise ConfigError("need debounce >= 1, check_period_s > 0, target_per_hour > 0, 0 < tail_quantile < 1")
    seqs = [np.asarray(s, dtype=np.float64).reshape(-1) for s in sequences]
    if any(not np.all(np.isfinite(s)) for s in seqs):
        raise ConfigError("nominal OOD scores contain NaN or inf: the encoder fails on nominal frames")
    peaks = [debounced_peaks(s, debounce) for s in seqs]
    all_peaks = np.concatenate(peaks) if peaks else np.zeros(0)
    if len(all_peaks) < 100:
        raise ConfigError(f"{len(all_peaks)} debounced checks of nominal operation are too few to calibrate "
                          f"a false-stop rate: record more episodes")
    checks = int(sum(len(s) for s in seqs))
    hours = checks * check_period_s / 3600.0
    zero = float(all_peaks.max())
    start = float(np.quantile(all_peaks, tail_quantile))
    excess = all_peaks[all_peaks > start] - start
    mean_excess = float(excess.mean()) if len(excess) else 0.0
    rate_start = sum(debounced_stops(s, start, debounce) for s in seqs) / hours
    if mean_excess > 0 and rate_start > target_per_hour:
        tail = start + mean_excess * math.log(rate_start / target_per_hour)
    else:
        tail = start
    threshold = max(zero, tail)
    return FalseStopCalibration(
        threshold=float(threshold), target_per_hour=float(target_per_hour), debounce=int(debounce),
        check_period_s=float(check_period_s), hours=float(hours), checks=checks, sequences=len(seqs),
        zero_stop_threshold=zero, tail_threshold=float(tail), tail_quantile=float(tail_quantile),
        tail_start=start, tail_mean_excess=mean_excess, tail_rate_per_hour=float(rate_start),
        stops_at_threshold=int(sum(debounced_stops(s, threshold, debounce) for s in seqs)))
