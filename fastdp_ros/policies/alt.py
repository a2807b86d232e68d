"""ALT, the Action Lookup Table (He et al. 2025, "Demystifying Diffusion Policies").

A Diffusion Policy trained on few demonstrations mostly recalls the action sequence of the
training frame nearest to what it sees. ALT does that explicitly:

  encoder  a small contrastive encoder of the cameras and proprioception (NT-Xent between two
           augmented views of a frame: colour jitter, random resized crop, proprioception
           noise; with action_temperature > 0 its soft form, whose positives are the frames
           calling for similar future action chunks), run at low resolution, giving an
           L2-normalised embedding of the current frame
  table    the embedding of every training frame and its future action sequence (padded
           with the episode's last action), in a faiss index inside the model directory
  act()    the action chunk of the nearest training frame, or the k nearest ones' blended by
           similarity (lookup_k); optionally relative: the chunk's joint targets applied from
           the current joints (relative_to)
  OOD      score = 1 - cosine similarity to that nearest frame; flagged above a threshold
           calibrated as a quantile of the scores of held-out in-distribution episodes

`fastdp train --policy alt` trains the encoder with the shared training loop, builds the
table from the training episodes, calibrates on the held-out ones and writes an OOD
evaluation (AUROC against perturbed frames) beside the model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastdp_ros.errors import ConfigError, DatasetError, ModelFileError
from fastdp_ros.nn import MLP, SmallCNN, SpatialSoftmaxPool
from fastdp_ros.policies.base import BuildRequest, ExportGraph, Policy, flat_export_graph, obs_batch, register_policy
from fastdp_ros.policies.config import PolicyConfig, option
from fastdp_ros.policies.modeldir import WEIGHTS_FILE, load_model_dir, load_state_into, save_model_dir
from fastdp_ros.policies.spec import PolicySpec, check_observation
from fastdp_ros.retrieval import (
    ActionChunks,
    EmbeddingIndex,
    IndexConfig,
    calibrate_threshold,
    check_dataset,
    embed_demonstrations,
    file_hash,
    observation_windows,
    ood_evaluation,
)
from fastdp_ros.retrieval.ood import LOWDIM_PERTURBATIONS, PERTURBATIONS

log = logging.getLogger(__name__)

OOD_REPORT_FILE = "ood_eval.json"
RELATIVE_BASE = "relative_base"  # the table column of each row's value of the relative lookup's key


@dataclass
class ALTConfig(PolicyConfig):
    """Encoder, augmentation and calibration options of ALT: saved into config.json, the flags of
    `fastdp train --policy alt` (e.g. --steps 600 --batch-size 256 --lr 1e-3 --lowdim-keys '')."""

    label: ClassVar[str] = "ALT"

    # encoder
    image_size: int = option(48, flag="--alt-image-size", help="longer image side the encoder sees (images are "
                                                               "area-downsampled to it)")
    channels: tuple[int, ...] = option((16, 32, 32), help="encoder CNN channels")
    strides: tuple[int, ...] = option((2, 2, 1), help="encoder CNN strides")
    num_keypoints: int = option(16, help="spatial-softmax keypoints per camera (where things are matters)")
    camera_features: int = option(32, help="features per camera")
    appearance_features: bool = option(True, help="also the feature map's channel means (what things look like)")
    lowdim_features: int = option(16, help="features of the low-dimensional inputs")
    hidden_dim: int = option(128, help="width of the embedding head")
    # with float16 vectors the table of the 200-demo push set stays under 1 MB
    embed_dim: int = option(24, help="embedding size")
    # contrastive learning
    temperature: float = option(0.1, help="NT-Xent temperature")
    brightness: float = option(0.2, help="colour jitter: brightness factors drawn from [1 - x, 1 + x]")
    contrast: float = option(0.2, help="colour jitter: contrast factors drawn from [1 - x, 1 + x]")
    saturation: float = option(0.2, help="colour jitter: saturation factors drawn from [1 - x, 1 + x]")
    hue: float = option(0.03, help="colour jitter: hue rotation, as a fraction of a full turn")
    crop_scale: tuple[float, float] = option((0.8, 1.0), help="random resized crop of the positive views: area "
                                                              "fraction LO,HI (near 1: the embedding keeps where "
                                                              "things are in the image)")
    crop_ratio: tuple[float, float] = option((0.9, 1.1), help="random resized crop: aspect ratio LO,HI")
    proprio_noise: float = option(0.02, help="Gaussian noise on the normalised low-dim inputs")
    # shifted negatives (CSI, Tack et al. 2020): a copy of each frame with a large hue turn (of the
    # whole image or of one small patch) or a camera translation joins the batch as a frame of its
    # own, a negative of the original. The positives above teach invariance to small changes;
    # these keep the embedding sensitive to the large ones an OOD monitor must see (an object of
    # another colour, a moved camera).
    shifted_negatives: bool = option(True, help="shifted copies of each frame join the batch as its negatives")
    negative_hue: tuple[float, float] = option((0.15, 0.5), help="shifted negatives: hue turn LO,HI, fraction of a "
                                                                 "full turn (either way)")
    negative_translation: tuple[float, float] = option((0.15, 0.3), help="shifted negatives: image shift LO,HI, "
                                                                         "fraction of its size")
    negative_patch_area: tuple[float, float] = option((0.01, 0.05), help="shifted negatives: recoloured patch "
                                                                         "LO,HI, fraction of the image")
    # action-aware contrast (soft InfoNCE, as CLASS, Lee et al. 2025): a frame's positives are the
    # frames of the batch (both views) weighted by softmax(-d / action_temperature), d the mean
    # squared difference of their normalized future action chunks (the frame's own other view has
    # d = 0). Instance discrimination alone spreads frames by appearance; this places frames that
    # call for similar chunks near each other, which is what the lookup needs. Shifted copies keep
    # their own view as the only positive, so the OOD score stays sensitive to them. 0: off.
    action_temperature: float = option(0.0, help="action-aware contrast: positives weighted by exp(-d / this), d the "
                                                 "mean squared difference of the frames' normalized future action "
                                                 "chunks (0: instance discrimination only)")
    # lookup: the chunks of the k nearest frames blended with weights softmax(cosine / temperature)
    # (k = 1: the nearest frame's chunk, as the paper)
    lookup_k: int = option(1, help="act on the k nearest frames' chunks blended by similarity (1: the nearest "
                                   "frame's chunk)")
    lookup_temperature: float = option(0.02, help="blend weights softmax(cosine similarity / this) for --lookup-k > 1")
    # relative lookup: the chunk's first dims (the arm's joint targets) are applied as offsets from
    # this low-dim key's current value, as they were from the retrieved frame's ("": absolute
    # targets, as recorded). Without it, a chunk retrieved from a frame where the arm stood a
    # little elsewhere sends the arm there first.
    relative_to: str = option("", flag="--relative-lookup", const="joint_pos",
                              help="apply the retrieved chunk's arm targets as offsets from the current joint_pos "
                                   "(as they were from the retrieved frame's); needs joint_pos among --lowdim-keys")
    # table and OOD calibration
    holdout_ratio: float = option(0.1, help="episodes held out of the table to calibrate the OOD threshold")
    ood_quantile: float = option(0.99, help="OOD threshold = this quantile of held-out in-distribution scores")
    index_encoding: str = option("float16", choices=("float16", "float32"),
                                 help="table vectors: float16 (half the memory) | float32 (exact similarities)")
    # a build-time choice, not stored
    ood_report: str | None = option(None, stored=False, help="OOD evaluation JSON (None: OUT/ood_eval.json)")

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.strides = tuple(int(s) for s in self.strides)
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        self.crop_ratio = tuple(float(v) for v in self.crop_ratio)
        self.negative_hue = tuple(float(v) for v in self.negative_hue)
        self.negative_translation = tuple(float(v) for v in self.negative_translation)
        self.negative_patch_area = tuple(float(v) for v in self.negative_patch_area)
        if self.image_size < 8 or self.embed_dim < 2:
            raise ConfigError(f"ALT needs image_size >= 8 and embed_dim >= 2, got {self.image_size}, {self.embed_dim}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not (0 < self.crop_scale[0] <= self.crop_scale[1] <= 1 and 0 < self.crop_ratio[0] <= self.crop_ratio[1]):
            raise ConfigError(f"invalid crop_scale {self.crop_scale} or crop_ratio {self.crop_ratio}")
        if not (0 <= self.negative_hue[0] <= self.negative_hue[1] <= 0.5
                and 0 <= self.negative_translation[0] <= self.negative_translation[1] < 1
                and 0 < self.negative_patch_area[0] <= self.negative_patch_area[1] <= 1):
            raise ConfigError(f"invalid negative_hue {self.negative_hue} (within [0, 0.5]), negative_translation "
                              f"{self.negative_translation} (within [0, 1)) or negative_patch_area "
                              f"{self.negative_patch_area} (within (0, 1])")
        if self.action_temperature < 0 or self.lookup_k < 1 or self.lookup_temperature <= 0:
            raise ConfigError(f"need action_temperature >= 0 (0: off), lookup_k >= 1 and lookup_temperature > 0, got "
                              f"{self.action_temperature}, {self.lookup_k}, {self.lookup_temperature}")
        if not 0.0 < self.holdout_ratio < 1.0:
            raise ConfigError(f"holdout_ratio must be in (0, 1): ALT calibrates its OOD threshold on held-out "
                              f"episodes; got {self.holdout_ratio}")
        if not 0.0 < self.ood_quantile <= 1.0:
            raise ConfigError(f"ood_quantile must be in (0, 1], got {self.ood_quantile}")
        IndexConfig(encoding=self.index_encoding)


# --- the encoder --------------------------------------------------------------------------------


def downsampled_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) with the longer side at most max_side (never upsampled)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


class ALTEncoder(nn.Module):
    """Current frame (every camera + proprioception) -> L2-normalised embedding.

    embed(obs) takes raw observation tensors {key: (B, n_obs, ...)} (uint8 images (H, W, 3),
    float low-dim) and uses the last frame; `prepare_frames` + `embed_prepared` are its two
    halves (training prepares every frame once and augments the prepared tensors).
    forward(batch) is the contrastive training loss.
    """

    def __init__(self, spec: PolicySpec, config: ALTConfig, lowdim_scale: np.ndarray, lowdim_offset: np.ndarray):
        super().__init__()
        self.spec, self.config = spec, config
        self.image_keys = tuple(spec.image_keys)
        self.lowdim_keys = tuple(spec.lowdim_dims)
        if not self.image_keys and not self.lowdim_keys:
            raise ConfigError("ALT needs at least one camera or low-dimensional key")
        lowdim_dim = sum(spec.lowdim_dims.values())
        self.register_buffer("lowdim_scale", torch.as_tensor(lowdim_scale, dtype=torch.float32).reshape(lowdim_dim))
        self.register_buffer("lowdim_offset", torch.as_tensor(lowdim_offset, dtype=torch.float32).reshape(lowdim_dim))
        h, w, _ = spec.image_shape if self.image_keys else (1, 1, 3)
        self.input_size = downsampled_size(h, w, config.image_size)
        self.image_hw = (h, w)
        self.cameras = nn.ModuleDict()
        for key in self.image_keys:
            self.cameras[key] = CameraEncoder(self.input_size, config)
        camera_dim = self.cameras[self.image_keys[0]].output_dim if self.image_keys else 0
        self.lowdim = nn.Linear(lowdim_dim, config.lowdim_features) if lowdim_dim else None
        features = len(self.image_keys) * camera_dim + (config.lowdim_features if lowdim_dim else 0)
        self.head = MLP(features, [config.hidden_dim], config.embed_dim, activation="relu")

    # inference ---------------------------------------------------------------------------------

    def prepare_frames(self, images: dict[str, torch.Tensor], lowdim: dict[str, torch.Tensor]):
        """One frame per sample: uint8 (B, H, W, 3) images -> float (B, 3, h, w) in [0, 1] at the
        encoder's resolution; low-dim (B, d) per key -> one normalised (B, D) tensor."""
        prepared = {key: self._prepare_image(images[key]) for key in self.image_keys}
        if self.lowdim_keys:
            flat = torch.cat([lowdim[k].float().reshape(lowdim[k].shape[0], -1) for k in self.lowdim_keys], dim=1)
            low = flat * self.lowdim_scale + self.lowdim_offset
        else:
            low = None
        return prepared, low

    def _prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float() / 255.0
        # in an export the images have the spec's size: decide without reading a traced shape
        hw = self.image_hw if torch.jit.is_tracing() else tuple(x.shape[-2:])
        if hw != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="area")
        return x

    def camera_features(self, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """uint8 (B, H, W, 3) per camera -> that camera's features, before the fusion head (for the
        cameras given: a monitor re-encodes only the camera whose frame is new)."""
        return {key: self.cameras[key](self._prepare_image(images[key]) * 2.0 - 1.0)
                for key in self.image_keys if key in images}

    def embed_prepared(self, images: dict[str, torch.Tensor], lowdim: torch.Tensor | None) -> torch.Tensor:
        feats = [self.cameras[k](images[k].float() * 2.0 - 1.0) for k in self.image_keys]
        if self.lowdim is not None:
            feats.append(torch.relu(self.lowdim(lowdim)))
        return F.normalize(self.head(torch.cat(feats, dim=1)), dim=1)

    def embed(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw observation tensors {key: (B, n_obs, ...)} -> (B, embed_dim), unit norm."""
        images = {k: obs[k][:, -1] for k in self.image_keys}
        lowdim = {k: obs[k][:, -1] for k in self.lowdim_keys}
        return self.embed_prepared(*self.prepare_frames(images, lowdim))

    def affine_per_key(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per low-dim key (scale, offset) of its normalization (x * scale + offset in [-1, 1])."""
        out, start = {}, 0
        for key in self.lowdim_keys:
            n = int(np.prod(self.spec.obs_shape(key)))
            out[key] = (self.lowdim_scale[start:start + n], self.lowdim_offset[start:start + n])
            start += n
        return out

    # training ----------------------------------------------------------------------------------

    def forward(self, batch: dict) -> torch.Tensor:
        """Contrastive loss of a batch of prepared frames {"images": {key: (B, 3, h, w)}, "lowdim": (B, D),
        "chunk": (B, horizon * action_dim) normalized future actions (with action_temperature > 0)}:
        NT-Xent, or its soft form with action-weighted positives; with shifted negatives, of the
        batch plus its shifted copies, each copy an instance of its own."""
        images, lowdim = batch["images"], batch.get("lowdim")
        b = (next(iter(images.values())) if images else lowdim).shape[0]
        n_shifted = 0
        if self.config.shifted_negatives and self.image_keys:  # shifts of images: nothing to shift without cameras
            shifted = shift_frames(images, self.config)
            images = {k: torch.cat([images[k].float(), shifted[k]]) for k in images}
            lowdim = None if lowdim is None else torch.cat([lowdim, lowdim])
            n_shifted = b
        views = [augment(images, lowdim, self.config) for _ in range(2)]
        z1, z2 = (self.embed_prepared(*v) for v in views)
        if self.config.action_temperature <= 0:
            return nt_xent(z1, z2, self.config.temperature)
        return soft_nt_xent(z1, z2, action_positive_weights(batch["chunk"], self.config.action_temperature, n_shifted),
                            self.config.temperature)


class _EmbedModule(nn.Module):
    """forward(obs dict) -> embedding, the module form of ALTEncoder.embed for export; with a
    relative lookup, followed by the current value of its low-dim key (what the chunk is added to)."""

    def __init__(self, encoder: ALTEncoder, relative_to: str = ""):
        super().__init__()
        self.encoder, self.relative_to = encoder, relative_to

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        z = self.encoder.embed(obs)
        if not self.relative_to:
            return z
        current = obs[self.relative_to][:, -1]
        return torch.cat([z, current.reshape(current.shape[0], -1).to(z.dtype)], dim=1)


class CameraEncoder(nn.Module):
    """(B, 3, h, w) in [-1, 1] -> features: spatial-softmax keypoints (where things are),
    projected, and optionally the feature map's channel means (what they look like: without
    them a recoloured or noisy image that keeps its keypoints would embed like the original)."""

    def __init__(self, input_size: tuple[int, int], config: ALTConfig):
        super().__init__()
        self.cnn = SmallCNN(3, config.channels, config.strides)
        with torch.no_grad():
            _, c, fh, fw = self.cnn(torch.zeros(1, 3, *input_size)).shape
        self.keypoints = SpatialSoftmaxPool(c, fh, fw, config.camera_features, config.num_keypoints)
        self.appearance = bool(config.appearance_features)
        self.output_dim = config.camera_features + (c if self.appearance else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.cnn(x)
        feats = self.keypoints(fmap)
        if self.appearance:
            feats = torch.cat([feats, fmap.mean(dim=(2, 3))], dim=1)
        return feats


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalized-temperature cross entropy: each view must pick its partner among 2B - 1."""
    b = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets)


def action_positive_weights(chunks: torch.Tensor, temperature: float, n_shifted: int = 0) -> torch.Tensor:
    """(n, n) positive weights of n = B + n_shifted instances: among the B frames with chunks
    (B, horizon * action_dim), w_ij = exp(-mean((c_i - c_j)^2) / temperature); a shifted copy's
    only positive is itself (its partner view), and it is no positive of any frame."""
    c = chunks.float()
    d = torch.cdist(c, c).pow(2) / c.shape[1]
    w = torch.exp(-d / temperature)
    if n_shifted:
        w = torch.block_diag(w, torch.eye(n_shifted, dtype=w.dtype, device=w.device))
    return w


def soft_nt_xent(z1: torch.Tensor, z2: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent with soft targets: instance i's view picks among the other 2n - 1 views, the target
    distribution spreading over every view of instance j in proportion to weights[i, j] (the
    anchor's own view excluded). weights = identity is NT-Xent."""
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    target = weights.repeat(2, 2).masked_fill(eye, 0.0)
    target = target / target.sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(logits, dim=1).masked_fill(eye, 0.0)).sum(dim=1).mean()


# --- augmentation (batched, plain torch) ---------------------------------------------------------


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float]) -> torch.Tensor:
    """A random crop of area fraction `scale` and aspect `ratio` per sample, resized back to (h, w)."""
    b = x.shape[0]
    area = torch.empty(b, device=x.device).uniform_(*scale)
    log_ratio = torch.empty(b, device=x.device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_ratio)
    sw = torch.sqrt(area * aspect).clamp(max=1.0)  # width and height as fractions of the image
    sh = torch.sqrt(area / aspect).clamp(max=1.0)
    tx = (torch.rand(b, device=x.device) * 2 - 1) * (1 - sw)
    ty = (torch.rand(b, device=x.device) * 2 - 1) * (1 - sh)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, tx, sh, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation and hue changes of (B, 3, h, w) images in [0, 1]."""
    b = x.shape[0]

    def factor(spread: float) -> torch.Tensor:
        return torch.empty(b, 1, 1, 1, device=x.device).uniform_(1 - spread, 1 + spread)

    x = x * factor(brightness)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor(contrast) + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * factor(saturation) + gray
    if hue > 0:
        x = rotate_hue(x, torch.empty(b, device=x.device).uniform_(-hue, hue))
    return x.clamp(0.0, 1.0)


def rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each (3, h, w) image's colours about the grey axis of RGB space by turns[i] of a full turn."""
    angle = turns * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    k = 1.0 / 3.0
    s3 = math.sqrt(k)
    m = torch.stack([
        cos + (1 - cos) * k, k * (1 - cos) - s3 * sin, k * (1 - cos) + s3 * sin,
        k * (1 - cos) + s3 * sin, cos + k * (1 - cos), k * (1 - cos) - s3 * sin,
        k * (1 - cos) - s3 * sin, k * (1 - cos) + s3 * sin, cos + k * (1 - cos),
    ], dim=1).reshape(-1, 3, 3).to(x.dtype)
    return torch.einsum("bij,bjhw->bihw", m, x)


def translate(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Shift each image by (dx, dy) fractions of its width and height, repeating the edges."""
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = -2.0 * dx, -2.0 * dy  # the grid samples where the content came from
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def patch_mask(b: int, height: int, width: int, area: tuple[float, float], device) -> torch.Tensor:
    """(b, 1, h, w) boolean masks of one random square-ish patch per sample, of the given area fraction."""
    side = torch.sqrt(torch.empty(b, device=device).uniform_(*area))  # fraction of each side
    cx = side / 2 + torch.rand(b, device=device) * (1 - side)
    cy = side / 2 + torch.rand(b, device=device) * (1 - side)
    ys = (torch.arange(height, device=device) + 0.5) / height
    xs = (torch.arange(width, device=device) + 0.5) / width
    inside_y = (ys[None, :] - cy[:, None]).abs() <= side[:, None] / 2
    inside_x = (xs[None, :] - cx[:, None]).abs() <= side[:, None] / 2
    return (inside_y[:, :, None] & inside_x[:, None, :])[:, None]


def shift_frames(images: dict[str, torch.Tensor], config: ALTConfig) -> dict[str, torch.Tensor]:
    """Shifted copies of prepared frames, a third each: a large hue turn of the whole image, of
    one small patch, or a large camera translation (random direction); the same kind of shift
    for every camera of a frame."""
    first = next(iter(images.values()))
    b, device = first.shape[0], first.device

    def magnitude(bounds) -> torch.Tensor:
        sign = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)
        return sign * torch.empty(b, device=device).uniform_(*bounds)

    turns = magnitude(config.negative_hue)
    angle = torch.rand(b, device=device) * 2 * math.pi
    distance = magnitude(config.negative_translation).abs()
    dx, dy = distance * torch.cos(angle), distance * torch.sin(angle)
    kind = torch.randint(0, 3, (b,), device=device).view(-1, 1, 1, 1)  # 0 image hue, 1 patch hue, 2 move
    out = {}
    for key, x in images.items():
        x = x.float()
        turned = rotate_hue(x, turns).clamp(0.0, 1.0)
        patch = patch_mask(b, x.shape[2], x.shape[3], config.negative_patch_area, device)
        recoloured = torch.where((kind == 0) | ((kind == 1) & patch), turned, x)
        out[key] = torch.where(kind == 2, translate(x, dx, dy), recoloured)
    return out


def augment(images: dict[str, torch.Tensor], lowdim: torch.Tensor | None, config: ALTConfig):
    """One augmented view of prepared frames: every camera cropped and jittered independently."""
    out = {}
    for key, x in images.items():
        x = random_resized_crop(x.float(), config.crop_scale, config.crop_ratio)
        out[key] = colour_jitter(x, config.brightness, config.contrast, config.saturation, config.hue)
    if lowdim is not None and config.proprio_noise > 0:
        lowdim = lowdim + config.proprio_noise * torch.randn_like(lowdim)
    return out, lowdim


# --- the policy -------------------------------------------------------------------------------------


@dataclass
class OODResult:
    """The OOD verdict of one observation."""

    score: float  # 1 - cosine similarity to the nearest training frame
    flag: bool  # score > threshold
    threshold: float
    episode: int  # the nearest training frame
    frame: int


def train_from_request(request: BuildRequest) -> dict:
    """`fastdp train --policy alt`: the encoder with the shared loop, then its table and OOD calibration."""
    summary = train_alt(request.dataset, request.out, request.config, request.settings,
                        image_keys=request.image_keys, lowdim_keys=request.lowdim_keys, horizon=request.horizon,
                        n_obs_steps=request.n_obs_steps, n_action_steps=request.n_action_steps,
                        max_episodes=request.max_episodes, resume=request.resume, half=request.half,
                        ood_report=request.config.ood_report)
    return {"steps": request.settings.steps, "seconds": summary["train_seconds"],
            "first_loss": summary["train_loss_first"], "final_loss": summary["train_loss_final"],
            "table_frames": summary["table_frames"], "ood_threshold": summary["threshold"],
            "ood_auroc_all": summary["ood_auroc_all"]}


@register_policy("alt", config=ALTConfig, train=train_from_request,
                 summary="Action Lookup Table: contrastive encoder + nearest demonstration chunk, with an OOD flag")
class ALTPolicy(Policy):
    """Look up the nearest training frame's action chunk; flag frames unlike any training frame."""

    def __init__(self, spec: PolicySpec, config: ALTConfig, encoder: ALTEncoder, index: EmbeddingIndex,
                 threshold: float, device: str = "cpu"):
        super().__init__(spec)
        self.config = config
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.index = index
        self.chunks = ActionChunks(index.table, spec.n_obs_steps, spec.horizon)
        self.relative_base = None
        if config.relative_to:
            if config.relative_to not in spec.lowdim_dims or RELATIVE_BASE not in index.table:
                raise ModelFileError(f"ALT's relative lookup needs the low-dim input {config.relative_to!r} and the "
                                     f"table's {RELATIVE_BASE!r} column; the model has inputs "
                                     f"{sorted(spec.lowdim_dims)} and columns {sorted(index.table)}")
            self.relative_base = np.asarray(index.table[RELATIVE_BASE], np.float32)
        self.threshold = float(threshold)
        #: the OOD verdict of the last act() / ood() call
        self.last_ood: OODResult | None = None

    @property
    def nfe(self) -> int:
        return 1  # one encoder pass, no denoising

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike, device: str = "cpu", seed: int = 0, **options) -> "ALTPolicy":
        """Load an ALT model directory (seed is accepted for a uniform interface: ALT is deterministic)."""
        unknown = sorted(k for k, v in options.items() if v is not None)
        if unknown:
            raise ConfigError(f"ALT has no run-time options {unknown} (it samples nothing)")
        files = load_model_dir(path)
        spec, config, encoder = build_encoder_from_files(files)
        try:
            threshold = float(files.config["ood"]["threshold"])
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{files.path / 'config.json'} has no calibrated OOD threshold ('ood'); "
                                 "the model's training did not finish") from None
        index = EmbeddingIndex.load(path, expected_model_hash=file_hash(Path(path) / WEIGHTS_FILE),
                                    expected_dim=config.embed_dim)
        if index.metric != "cosine":
            raise ModelFileError(f"the index in {path} uses metric {index.metric!r}; ALT needs cosine")
        return cls(spec, config, encoder, index, threshold, device=device)

    @torch.inference_mode()
    def _encode(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.encoder.embed(obs_batch(obs, self.device))[0].cpu().numpy()

    def _lookup(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self._lookup_embedding(self._encode(obs))

    def _current(self, obs: dict[str, np.ndarray]) -> np.ndarray | None:
        """The current value of the relative lookup's key (None for absolute chunks)."""
        if not self.config.relative_to:
            return None
        return np.asarray(obs[self.config.relative_to][-1], np.float32).reshape(-1)

    def _lookup_embedding(self, embedding: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows and their cosine similarities (best first); the OOD verdict is the nearest's."""
        found = self.index.search(embedding, k)
        ids, sims = found.ids[0], found.scores[0]
        keep = ids >= 0  # faiss pads with -1 when the table has fewer than k rows
        ids, sims = ids[keep], sims[keep]
        row = int(ids[0])
        score = 1.0 - float(sims[0])
        self.last_ood = OODResult(score=score, flag=score > self.threshold, threshold=self.threshold,
                                  episode=int(self.index.table["episode"][row]),
                                  frame=int(self.index.table["frame"][row]))
        return ids, sims

    def _chunk(self, ids: np.ndarray, sims: np.ndarray, current: np.ndarray | None = None) -> np.ndarray:
        """The nearest row's chunk, or the k rows' chunks blended by softmax(similarity / lookup_temperature);
        with a relative lookup, each chunk's first dims moved by current - its row's base."""
        chunks = self.chunks(ids)
        if current is not None:
            d = len(current)
            chunks[..., :d] += (current[None] - self.relative_base[ids])[:, None, :]
        if len(ids) == 1:
            return chunks[0]
        w = np.exp((sims - sims[0]) / self.config.lookup_temperature)
        return np.tensordot(w / w.sum(), chunks, axes=1).astype(np.float32)

    def chunk_for(self, embedding: np.ndarray, current: np.ndarray | None = None) -> np.ndarray:
        """The action chunk of an embedding (and, for a relative lookup, the current value of its key)."""
        return self._chunk(*self._lookup_embedding(embedding, self.config.lookup_k), current)

    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.chunk_for(self._encode(obs), self._current(obs))

    def _act_from_graph(self, out: np.ndarray) -> np.ndarray:
        """act() from the export graph's output: the embedding (then the relative key's current value)."""
        out = np.asarray(out, np.float32).reshape(-1)
        dim = self.config.embed_dim
        return self.chunk_for(out[:dim], out[dim:] if self.config.relative_to else None)

    def export_graph(self) -> ExportGraph:
        """The encoder as the graph (raw observation -> embedding); the table lookup, which
        faiss does, finishes act() outside it and keeps the OOD verdict in last_ood."""
        relative = self.config.relative_to
        signature = {"policy": self.policy_type, "embed_dim": self.config.embed_dim, "relative_to": relative}
        graph = flat_export_graph(_EmbedModule(self.encoder, relative), self.spec, {}, signature,
                                  device=self.device, lowdim_affine=self.encoder.affine_per_key())
        graph.output_name = f"embedding+{relative}" if relative else "embedding"
        graph.finish = self._act_from_graph
        return graph

    def ood(self, obs: dict) -> OODResult:
        """The OOD verdict of an observation (also kept as last_ood)."""
        self._lookup(check_observation(self.spec, obs))
        return self.last_ood

    def ood_score(self, obs: dict) -> float:
        """1 - cosine similarity of the observation to its nearest training frame."""
        return self.ood(obs).score

    @torch.inference_mode()
    def camera_features(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each camera's encoder features of the newest frames of a batch {key: (B, n_obs, ...)}
        (runtime.ood.CameraFeatureMonitor compares them with the demonstrations')."""
        images = {k: torch.from_numpy(np.ascontiguousarray(np.asarray(obs[k])[:, -1])).to(self.device)
                  for k in self.encoder.image_keys if k in obs}
        return {k: v.float().cpu().numpy() for k, v in self.encoder.camera_features(images).items()}

    @torch.inference_mode()
    def score_batch(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """OOD scores of a batch of observations {key: (B, n_obs, ...)} (for evaluation)."""
        z = self.encoder.embed({k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in obs.items()})
        return 1.0 - self.index.search(z.cpu().numpy(), 1).scores[:, 0]

    def memory_bytes(self) -> int:
        """Encoder weights and buffers plus the table (stored vectors, row table, actions)."""
        tensors = list(self.encoder.parameters()) + list(self.encoder.buffers())
        return int(sum(t.numel() * t.element_size() for t in tensors) + self.index.nbytes())


def build_encoder_from_files(files) -> tuple[PolicySpec, ALTConfig, ALTEncoder]:
    """Rebuild the encoder of an ALT model directory and load its weights."""
    cfg = files.config
    try:
        spec = PolicySpec.from_dict(cfg["spec"])
        config = ALTConfig.from_dict(cfg["policy"])
        scale = np.asarray(cfg["lowdim_normalizer"]["scale"], np.float32)
        offset = np.asarray(cfg["lowdim_normalizer"]["offset"], np.float32)
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"{files.path / 'config.json'} lacks {e}: not an ALT model") from None
    except ConfigError as e:
        raise ModelFileError(f"{files.path / 'config.json'}: {e}") from None
    encoder = ALTEncoder(spec, config, scale, offset)
    load_state_into(encoder, files.state_dict, files.path)
    return spec, config, encoder.eval()


# --- training ------------------------------------------------------------------------------------


class FrameDataset(torch.utils.data.Dataset):
    """Prepared frames for contrastive training: {"images": {key: (3, h, w)}, "lowdim": (D,),
    "chunk": (horizon * action_dim,) normalized future actions}."""

    def __init__(self, images: dict[str, torch.Tensor], lowdim: torch.Tensor | None, chunks: torch.Tensor | None = None):
        self.images, self.lowdim, self.chunks = images, lowdim, chunks
        first = next(iter(images.values())) if images else lowdim
        self.n = len(first)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        item = {"images": {k: v[i] for k, v in self.images.items()}}
        if self.lowdim is not None:
            item["lowdim"] = self.lowdim[i]
        if self.chunks is not None:
            item["chunk"] = self.chunks[i]
        return item


def normalized_chunks(actions: np.ndarray, spec: PolicySpec, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """(L, horizon * action_dim) chunks of every frame of one episode's (L, action_dim) actions, as
    the table's lookup returns them, each dimension mapped by x * scale + offset."""
    n = len(actions)
    table = {"episode": np.zeros(n, np.int32), "frame": np.arange(n, dtype=np.int32), "action": actions}
    chunks = ActionChunks(table, spec.n_obs_steps, spec.horizon)(np.arange(n)) * scale + offset
    return chunks.reshape(n, -1).astype(np.float32)


@torch.no_grad()
def load_frames(buffer, episodes, encoder: ALTEncoder, action_affine: tuple[np.ndarray, np.ndarray] | None = None
                ) -> FrameDataset:
    """Every frame of `episodes`, prepared at the encoder's resolution (images kept as float16),
    with its normalized action chunk when `action_affine` (scale, offset) is given."""
    images: dict[str, list] = {k: [] for k in encoder.image_keys}
    lowdim, chunks = [], []
    spec = encoder.spec
    for ep in episodes:
        keys = list(encoder.image_keys) + list(encoder.lowdim_keys)
        data = buffer.get_episode(int(ep), keys + ([spec.action_key] if action_affine is not None else []))
        if action_affine is not None:
            actions = data.pop(spec.action_key)
            chunks.append(normalized_chunks(actions.reshape(len(actions), -1).astype(np.float32), spec,
                                            *action_affine))
        length = len(data[next(iter(data))])
        for start in range(0, length, 256):
            sl = slice(start, start + 256)
            prepared, low = encoder.prepare_frames(
                {k: torch.from_numpy(data[k][sl]) for k in encoder.image_keys},
                {k: torch.from_numpy(np.asarray(data[k][sl], np.float32).reshape(len(data[k][sl]), -1))
                 for k in encoder.lowdim_keys})
            for k, v in prepared.items():
                images[k].append(v.half())
            if low is not None:
                lowdim.append(low)
    return FrameDataset({k: torch.cat(v) for k, v in images.items()}, torch.cat(lowdim) if lowdim else None,
                        torch.from_numpy(np.concatenate(chunks)) if chunks else None)


def lowdim_affine(buffer, spec: PolicySpec) -> tuple[np.ndarray, np.ndarray]:
    """Scale and offset mapping each low-dim input to [-1, 1] over the dataset (concatenated)."""
    from fastdp_ros.data import Normalizer

    if not spec.lowdim_dims:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    norm = Normalizer.fit(buffer, {k: "limits" for k in spec.lowdim_dims})
    pairs = [norm.scale_offset(k) for k in spec.lowdim_dims]
    return (np.concatenate([p[0].reshape(-1) for p in pairs]).astype(np.float32),
            np.concatenate([p[1].reshape(-1) for p in pairs]).astype(np.float32))


def action_limits(buffer, spec: PolicySpec) -> tuple[np.ndarray, np.ndarray]:
    """Scale and offset mapping each action dimension to [-1, 1] over the dataset."""
    from fastdp_ros.data import Normalizer

    scale, offset = Normalizer.fit(buffer, {spec.action_key: "limits"}).scale_offset(spec.action_key)
    return (np.asarray(scale, np.float32).reshape(-1), np.asarray(offset, np.float32).reshape(-1))


def train_alt(dataset: str, out: str, config: ALTConfig, settings, image_keys=("img_front", "img_wrist"),
              lowdim_keys=("joint_pos", "gripper"), horizon: int = 16, n_obs_steps: int = 2,
              n_action_steps: int = 8, max_episodes: int | None = None, resume: bool = False,
              half: bool = False, ood_report: str | os.PathLike | None = None, show_progress: bool = True) -> dict:
    """Train ALT's encoder on a dataset, build its table, calibrate its OOD threshold, write `out`.

    The demonstration episodes are split by episode: the table holds the training ones, the
    held-out ones (holdout_ratio) calibrate the threshold and are the in-distribution frames of
    the OOD evaluation written to `ood_report` (default OUT/ood_eval.json). Returns a summary.
    """
    from fastdp_ros.data import ReplayBuffer, dataset_fingerprint, split_episodes
    from fastdp_ros.policies.dp import demonstration_episodes, make_spec_from_dataset
    from fastdp_ros.policies.training import jsonable, train

    buffer = ReplayBuffer.open(dataset)
    spec = make_spec_from_dataset(buffer, image_keys, lowdim_keys, horizon, n_obs_steps, n_action_steps)
    if config.relative_to and not (config.relative_to in spec.lowdim_dims
                                   and spec.lowdim_dims[config.relative_to] <= spec.action_dim):
        raise ConfigError(f"ALT's relative lookup adds the chunk to the current {config.relative_to!r}, which must be "
                          f"one of the low-dim inputs {sorted(spec.lowdim_dims)} with at most {spec.action_dim} values")
    episodes = demonstration_episodes(buffer)
    if max_episodes is not None:
        episodes = episodes[:max_episodes]
    if len(episodes) < 2:
        raise DatasetError(f"dataset {dataset} has {len(episodes)} usable episode(s); ALT needs at least 2: "
                           "training episodes for its table and held-out ones to calibrate its OOD threshold")
    tr, ho = split_episodes(len(episodes), val_ratio=config.holdout_ratio, seed=settings.seed)
    train_eps, holdout_eps = episodes[tr], episodes[ho]
    scale, offset = lowdim_affine(buffer, spec)
    torch.manual_seed(settings.seed)
    encoder = ALTEncoder(spec, config, scale, offset)
    action_affine = action_limits(buffer, spec) if config.action_temperature > 0 else None
    train_set = load_frames(buffer, train_eps, encoder, action_affine)
    val_set = load_frames(buffer, holdout_eps, encoder, action_affine)
    log.info("ALT encoder: %.1fk parameters, input %s, %d training frames from %d episodes, %d held out",
             sum(p.numel() for p in encoder.parameters()) / 1e3, encoder.input_size, len(train_set),
             len(train_eps), len(holdout_eps))
    base_cfg = {
        "spec": spec.to_dict(), "policy": config.to_dict(),
        "lowdim_normalizer": {"keys": list(spec.lowdim_dims), "scale": scale.tolist(), "offset": offset.tolist()},
        "provenance": {"dataset": os.path.abspath(dataset), "dataset_fingerprint": dataset_fingerprint(buffer),
                       "train_episodes": [int(e) for e in train_eps], "holdout_episodes": [int(e) for e in holdout_eps],
                       "train_settings": jsonable(dataclasses.asdict(settings))},
    }

    def save(m: nn.Module, step: int) -> None:
        cfg = json.loads(json.dumps(base_cfg))
        cfg["provenance"]["train_steps"] = step
        save_model_dir(out, ALTPolicy.policy_type, cfg, m.state_dict(), half=half)

    result = train(encoder, lambda net, batch: net(batch), train_set, val_set, settings, out, save, resume=resume)
    del train_set, val_set
    summary = build_alt_table(out, buffer, train_eps, holdout_eps, device=settings.device,
                              ood_report=ood_report, show_progress=show_progress)
    summary.update({"train_loss_first": result.first_loss, "train_loss_final": result.final_loss,
                    "val_loss": result.val_loss, "train_seconds": result.seconds})
    return summary


def build_alt_table(model_dir: str | os.PathLike, buffer, table_episodes, holdout_episodes, device: str = "cpu",
                    ood_report: str | os.PathLike | None = None, batch_size: int = 256,
                    show_progress: bool = True) -> dict:
    """Embed `table_episodes` into the model's index, calibrate the OOD threshold on
    `holdout_episodes`, evaluate it against perturbed held-out frames; rewrite the model dir."""
    from fastdp_ros.data import dataset_fingerprint

    model_dir = Path(model_dir)
    files = load_model_dir(model_dir)
    spec, config, encoder = build_encoder_from_files(files)
    check_dataset(buffer, {k: spec.obs_shape(k) for k in spec.obs_keys}, spec.image_keys, spec.action_key,
                  spec.action_dim)
    if len(holdout_episodes) == 0:
        raise DatasetError("ALT needs held-out episodes to calibrate its OOD threshold")
    encoder = encoder.to(device)

    @torch.inference_mode()
    def embed_batch(obs: dict[str, np.ndarray]) -> np.ndarray:
        return encoder.embed({k: torch.from_numpy(v).to(device) for k, v in obs.items()}).cpu().numpy()

    embed = dict(obs_keys=spec.obs_keys, action_key=spec.action_key, n_obs_steps=spec.n_obs_steps,
                 embed_batch=embed_batch, batch_size=batch_size, show_progress=show_progress)
    table_z, table = embed_demonstrations(buffer, table_episodes, **embed)
    if config.relative_to:
        table[RELATIVE_BASE] = np.concatenate([
            np.asarray(buffer.get_episode(int(ep), [config.relative_to])[config.relative_to], np.float32)
            .reshape(-1, spec.lowdim_dims[config.relative_to]) for ep in table_episodes])
    fingerprint = dataset_fingerprint(buffer)
    index_config = IndexConfig(metric="cosine", encoding=config.index_encoding)
    # the final weights are written first: the index records their hash
    cfg = dict(files.config)
    cfg.pop("policy_type", None)
    cfg.pop("format_version", None)
    index = EmbeddingIndex.build(table_z, table, model_hash="pending", dataset_fingerprint=fingerprint,
                                 config=index_config,
                                 extra_meta={"n_obs_steps": spec.n_obs_steps, "horizon": spec.horizon,
                                             "action_dim": spec.action_dim, "dataset": str(buffer.path)})
    holdout_z, _ = embed_demonstrations(buffer, holdout_episodes, **embed)
    holdout_scores = 1.0 - index.search(holdout_z, 1).scores[:, 0]
    threshold = calibrate_threshold(holdout_scores, config.ood_quantile)
    cfg["ood"] = {"score": "1 - cosine similarity to the nearest table frame", "threshold": threshold,
                  "quantile": config.ood_quantile, "calibration_frames": int(len(holdout_scores)),
                  "calibration_episodes": [int(e) for e in holdout_episodes]}
    cfg["table"] = {"frames": len(index), "episodes": [int(e) for e in table_episodes]}
    save_model_dir(model_dir, ALTPolicy.policy_type, cfg, files.state_dict,
                   half=any(t.dtype == torch.float16 for t in files.state_dict.values()))
    index.meta["embedding_model_hash"] = file_hash(model_dir / WEIGHTS_FILE)
    index.save(model_dir)
    log.info("ALT table: %d frames; OOD threshold %.4f (%.3f quantile of %d held-out frames)", len(index),
             threshold, config.ood_quantile, len(holdout_scores))
    summary = {"table_frames": len(index), "threshold": threshold, "calibration_frames": int(len(holdout_scores))}
    policy = ALTPolicy.from_model_dir(model_dir, device=device)
    report = evaluate_ood(policy, buffer, holdout_episodes)
    path = Path(ood_report) if ood_report else model_dir / OOD_REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    log.info("OOD evaluation: AUROC %s (all %.3f) -> %s",
             ", ".join(f"{k} {v['auroc']:.3f}" for k, v in report["perturbations"].items()), report["auroc_all"], path)
    summary["ood_auroc"] = {k: v["auroc"] for k, v in report["perturbations"].items()}
    summary["ood_auroc_all"] = report["auroc_all"]
    return summary


def holdout_observations(policy: ALTPolicy, buffer, episodes, max_frames: int = 2000, seed: int = 0) -> dict:
    """{key: (N, n_obs, ...)} observations of (up to max_frames, evenly subsampled) frames of `episodes`."""
    spec = policy.spec
    parts: dict[str, list] = {k: [] for k in spec.obs_keys}
    for ep in episodes:
        data = buffer.get_episode(int(ep), list(spec.obs_keys))
        data = {k: v if v.ndim == 4 else v.reshape(len(v), -1) for k, v in data.items()}
        length = len(next(iter(data.values())))
        window = observation_windows(data, np.arange(length), spec.n_obs_steps)
        for k in spec.obs_keys:
            parts[k].append(window[k])
    obs = {k: np.concatenate(v) for k, v in parts.items()}
    n = len(next(iter(obs.values())))
    if n > max_frames:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_frames, replace=False))
        obs = {k: v[keep] for k, v in obs.items()}
    return obs


def evaluate_ood(policy: ALTPolicy, buffer, episodes, max_frames: int = 2000, seed: int = 0) -> dict:
    """AUROC of the OOD score: frames of `episodes` (not in the table) against perturbed copies."""
    obs = holdout_observations(policy, buffer, episodes, max_frames, seed)
    cameras = bool(policy.spec.image_keys)
    report = ood_evaluation(policy.score_batch, obs, policy.spec.image_keys, policy.threshold,
                            kinds=PERTURBATIONS if cameras else LOWDIM_PERTURBATIONS, seed=seed)
    notes = ("applied to every camera: cube_colour recolours red-cube pixels blue, global_colour rolls RGB channels "
             "(120 degree hue turn), camera_shift translates by 1/8 of the image, noise adds N(0, 60^2), unrelated "
             "is a random checkerboard") if cameras else (
             "no cameras; applied to every low-dimensional key, per dimension scaled by its spread s (max - min) "
             "over the held-out frames: state_offset adds +-s/2, state_noise adds N(0, (s/4)^2)")
    report.update({"episodes": [int(e) for e in episodes], "dataset": str(buffer.path),
                   "quantile": policy.config.ood_quantile, "perturbation_notes": notes})
    return report
