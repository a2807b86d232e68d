"""`fastdp train --policy dp|alt`: train a policy on a dataset into a model directory."""

from __future__ import annotations

import argparse
import logging

from fastdp_ros.cli.options import add_threads_argument
from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)

TRAINABLE = ("dp", "alt")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _keys(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_precision_argument(p) -> None:
    """`--precision` and `--threads`, shared by `fastdp train` and `fastdp distill` (TrainSettings)."""
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: bfloat16 autocast of the forward pass (weights stay fp32); ~1.5x faster "
                        "on CPUs with AMX / AVX512-BF16 and on recent GPUs. Without such hardware bf16 is "
                        "emulated and slower: the run falls back to fp32 with a warning (recorded in the "
                        "model's provenance)")
    add_threads_argument(p, "training")


def settings_options(args) -> dict:
    """The TrainSettings fields the machine decides: threads set now, the precision that runs here."""
    from fastdp_ros.hardware import configure_threads, resolve_precision

    configure_threads(args.threads, role="training")
    return {"precision": resolve_precision(args.precision, args.device)}


def warmup_steps(args) -> int:
    """--warmup-steps, shortened to a tenth of a run too short for it (else the run ends mid-warm-up)."""
    steps = min(args.warmup_steps, max(1, args.steps // 10))
    if steps < args.warmup_steps:
        log.info("warm-up shortened from %d to %d steps (a tenth of --steps %d)", args.warmup_steps, steps, args.steps)
    return steps


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a policy (dp: the Diffusion Policy teacher; alt: action lookup table)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--policy", required=True, help=f"one of: {', '.join(TRAINABLE)}")
    p.add_argument("--dataset", required=True, help="zarr dataset from `fastdp collect`")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--steps", type=int, default=20000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="windows per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="peak learning rate (AdamW): linear warm-up to it, then cosine decay to 0 at --steps")
    p.add_argument("--warmup-steps", type=int, default=500,
                   help="linear warm-up steps, at most a tenth of --steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization, the split and the batches")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--ckpt-every", type=int, default=2000)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--half", action="store_true", help="store fp16 weights (smaller model files)")
    add_precision_argument(p)
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="dp: start from this Diffusion Policy's parameters (same network; the noise model may "
                        "differ, e.g. an EDM teacher from a DDPM one)")
    p.add_argument("--max-episodes", type=int, default=None, help="use only the first N episodes")
    g = p.add_argument_group("observation and action layout")
    g.add_argument("--image-keys", type=_keys, default=("img_front", "img_wrist"),
                   help="comma-separated camera keys; empty ('') for a low-dimensional policy")
    g.add_argument("--lowdim-keys", type=_keys, default=("joint_pos", "gripper"),
                   help="comma-separated low-dimensional keys (add object_state for a state-based policy)")
    g.add_argument("--horizon", type=int, default=16)
    g.add_argument("--n-obs-steps", type=int, default=2)
    g.add_argument("--n-action-steps", type=int, default=8)
    g.add_argument("--relative-actions", action="store_true",
                   help="learn the arm's targets relative to the current joint positions (joint_pos)")
    n = p.add_argument_group("network and diffusion")
    n.add_argument("--backbone", default="small_cnn", help="small_cnn | resnet18")
    n.add_argument("--pool", default="spatial_softmax", help="spatial_softmax | avg")
    n.add_argument("--down-dims", type=_ints, default=(64, 128, 256))
    n.add_argument("--noise-model", default="ddpm", help="ddpm (VP, epsilon) | edm (VE, Karras)")
    n.add_argument("--preconditioning", default="edm",
                   help="edm models: edm (Karras et al.'s) | vp (the network reads DDPM inputs and timesteps: "
                        "a DDPM model's weights start it as they are; see `fastdp convert`)")
    n.add_argument("--num-inference-steps", type=int, default=None,
                   help="default sampling steps stored with the model (ddpm: 100, edm: 18)")
    a = p.add_argument_group("ALT (action lookup table; e.g. --steps 600 --batch-size 256 --lr 1e-3 --lowdim-keys '')")
    a.add_argument("--alt-image-size", type=int, default=48, help="longer image side the encoder sees")
    a.add_argument("--embed-dim", type=int, default=24, help="embedding size")
    a.add_argument("--temperature", type=float, default=0.1, help="NT-Xent temperature")
    a.add_argument("--action-temperature", type=float, default=0.0,
                   help="action-aware contrast: positives weighted by exp(-d / this), d the mean squared "
                        "difference of the frames' normalized future action chunks (0: instance discrimination only)")
    def area_range(text: str) -> tuple[float, float]:
        values = tuple(float(v) for v in text.split(","))
        if len(values) != 2:
            raise ValueError(text)
        return values

    a.add_argument("--crop-scale", type=area_range, default=(0.8, 1.0),
                   help="random resized crop of the positive views: area fraction LO,HI (near 1: the embedding "
                        "keeps where things are in the image)")
    a.add_argument("--lookup-k", type=int, default=1,
                   help="act on the k nearest frames' chunks blended by similarity (1: the nearest frame's chunk)")
    a.add_argument("--lookup-temperature", type=float, default=0.02,
                   help="blend weights softmax(cosine similarity / this) for --lookup-k > 1")
    a.add_argument("--relative-lookup", action="store_true",
                   help="apply the retrieved chunk's arm targets as offsets from the current joint_pos "
                        "(as they were from the retrieved frame's); needs joint_pos among --lowdim-keys")
    a.add_argument("--holdout-ratio", type=float, default=0.1,
                   help="episodes held out of the table to calibrate the OOD threshold")
    a.add_argument("--ood-quantile", type=float, default=0.99,
                   help="OOD threshold = this quantile of held-out in-distribution scores")
    a.add_argument("--index-encoding", default="float16",
                   help="table vectors: float16 (half the memory) | float32 (exact similarities)")
    a.add_argument("--ood-report", default=None, help="OOD evaluation JSON (None: OUT/ood_eval.json)")
    p.set_defaults(run=run)


def check_dataset_keys(args) -> None:
    """Every problem of the dataset in one line, before any work (data/check.py)."""
    from fastdp_ros.data.check import require_dataset

    require_dataset(args.dataset, keys=(*args.image_keys, *args.lowdim_keys))


def run(args) -> int:
    if args.policy not in TRAINABLE:
        raise ConfigError(f"`fastdp train` trains {', '.join(TRAINABLE)}; got --policy {args.policy!r}")
    if args.policy == "alt":
        if args.init_from:
            raise ConfigError("--init-from seeds a Diffusion Policy (--policy dp); ALT trains its own encoder")
        return run_alt(args)
    from fastdp_ros.policies.dp import DiffusionPolicyConfig, train_diffusion_policy
    from fastdp_ros.policies.training import TrainSettings

    edm = args.noise_model == "edm"
    config = DiffusionPolicyConfig(
        backbone=args.backbone, pool=args.pool, down_dims=args.down_dims, noise_model=args.noise_model,
        preconditioning=args.preconditioning, relative_to="joint_pos" if args.relative_actions else "",
        sampler="edm" if edm else "ddpm",
        num_inference_steps=args.num_inference_steps or (18 if edm else 100),
        batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
    )
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=warmup_steps(args),
                             val_every=args.val_every, ckpt_every=args.ckpt_every, seed=args.seed,
                             device=args.device, num_workers=args.num_workers, **settings_options(args))
    check_dataset_keys(args)
    result = train_diffusion_policy(
        args.dataset, args.out, config, settings, image_keys=args.image_keys, lowdim_keys=args.lowdim_keys,
        horizon=args.horizon, n_obs_steps=args.n_obs_steps, n_action_steps=args.n_action_steps,
        max_episodes=args.max_episodes, resume=args.resume, half=args.half, init_from=args.init_from,
    )
    log.info("trained %d steps in %.0f s: loss %.4f -> %.4f%s; model in %s", result.steps, result.seconds,
             result.first_loss, result.final_loss,
             "" if result.val_loss is None else f", validation {result.val_loss:.4f}", args.out)
    return 0


def run_alt(args) -> int:
    """ALT: contrastive encoder with the shared loop, then its table and OOD calibration."""
    from fastdp_ros.policies.alt import ALTConfig, train_alt
    from fastdp_ros.policies.training import TrainSettings

    config = ALTConfig(image_size=args.alt_image_size, embed_dim=args.embed_dim, temperature=args.temperature,
                       action_temperature=args.action_temperature, crop_scale=args.crop_scale, lookup_k=args.lookup_k,
                       lookup_temperature=args.lookup_temperature,
                       relative_to="joint_pos" if args.relative_lookup else "", holdout_ratio=args.holdout_ratio, ood_quantile=args.ood_quantile,
                       index_encoding=args.index_encoding)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=warmup_steps(args),
                             val_every=args.val_every, ckpt_every=args.ckpt_every, seed=args.seed,
                             device=args.device, num_workers=args.num_workers, **settings_options(args))
    check_dataset_keys(args)
    summary = train_alt(
        args.dataset, args.out, config, settings, image_keys=args.image_keys, lowdim_keys=args.lowdim_keys,
        horizon=args.horizon, n_obs_steps=args.n_obs_steps, n_action_steps=args.n_action_steps,
        max_episodes=args.max_episodes, resume=args.resume, half=args.half, ood_report=args.ood_report,
    )
    log.info("trained ALT %d steps in %.0f s: loss %.4f -> %.4f; table of %d frames, OOD threshold %.4f, "
             "AUROC (all perturbations) %.3f; model in %s", args.steps, summary["train_seconds"],
             summary["train_loss_first"], summary["train_loss_final"], summary["table_frames"],
             summary["threshold"], summary["ood_auroc_all"], args.out)
    return 0
