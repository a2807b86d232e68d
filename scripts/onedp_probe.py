#!/usr/bin/env python
"""Why OneDP-S trails OneDP-D on a near-deterministic teacher: two measurements.

1. Spread and error of action chunks on held-out demonstration windows: for the teacher's
   samplers, the untrained OneDP-S generator and each OneDP model given, `--samples` chunks
   per window; spread is the mean standard deviation across a window's chunks, error the mean
   |chunk - demonstration|, both in normalized action units ([-1, 1]).
2. How well OneDP-S's KL gradient points where it should. A fresh OneDP-S generator (the
   teacher's one-step denoiser) draws one chunk A per window; its generator-score network is
   trained on the generator's chunks with its denoising loss, as in `fastdp distill --variant
   s`, but with the generator frozen, in fp32, and on the teacher's center crop (so that at
   step 0 the two networks agree exactly).
   After each number of score steps, the gradient d KL / d A averaged over `--draws` (k, noise)
   draws is compared, by cosine, with A - (the teacher's DDIM-10 chunk): the direction that
   brings A to the teacher. The analytic gradient that OneDP-D uses (eps_G = noise) is given
   for the same chunks.

    python scripts/onedp_probe.py --teacher models/push_dp --dataset data/push \
        --models models/push_onedp runs/push_onedp_s_v2 --out bench/onedp_probe.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn


def chunk_stats(chunks: torch.Tensor, demo: torch.Tensor) -> dict:
    """chunks (W, S, T, D) against demo (W, T, D): spread and error in normalized units."""
    return {"spread": float(chunks.std(1).mean()), "error": float((chunks - demo[:, None]).abs().mean()),
            "error_first_step": float((chunks[:, :, 0] - demo[:, None, 0]).abs().mean())}


def main(argv=None) -> int:
    from fastdp_ros.diffusion import DDPMSampler, FixedStepSampler
    from fastdp_ros.policies import load_policy
    from fastdp_ros.policies.distill import distillation_windows, load_teacher, trainable
    from fastdp_ros.policies.onedp import OneDPConfig, OneDPDistillation
    from fastdp_ros.policies.training import _infinite

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--models", nargs="*", default=[], help="OneDP model directories to measure")
    ap.add_argument("--windows", type=int, default=24, help="held-out windows")
    ap.add_argument("--samples", type=int, default=16, help="chunks per window")
    ap.add_argument("--score-steps", type=int, nargs="+", default=[25, 100, 300])
    ap.add_argument("--score-lr", type=float, nargs="+", default=[5e-4, 2e-5])
    ap.add_argument("--draws", type=int, default=32, help="(k, noise) draws averaged per gradient")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSON report")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    teacher = load_teacher(args.teacher, "ddpm", "OneDP")
    _, train_set, val_set = distillation_windows(args.dataset, teacher.spec, seed=args.seed)
    idx = np.linspace(0, len(val_set) - 1, args.windows).astype(int)
    batch = torch.utils.data.default_collate([val_set[i] for i in idx])
    obs, w, s = batch["obs"], len(idx), args.samples
    tm = teacher.model
    report = {"teacher": args.teacher, "dataset": args.dataset, "windows": w, "samples": s, "seed": args.seed,
              "chunks": {}, "kl_gradient": []}
    t0 = time.perf_counter()

    with torch.no_grad():
        demo = tm.normalize_action(batch["action"].float(), tm.action_reference(obs))
        shape = (w * s, *demo.shape[1:])
        cond = tm.encode(obs).repeat_interleave(s, 0)
        samplers = {"teacher ddim-10": tm.make_sampler("ddim", 10), "teacher ddpm-100": tm.make_sampler("ddpm")}
        for name, sampler in samplers.items():
            loop = FixedStepSampler(tm.unet, sampler)
            step_noise = torch.randn(sampler.num_steps, *shape) if isinstance(sampler, DDPMSampler) else None
            chunks = loop(cond, torch.randn(shape), step_noise=step_noise)
            report["chunks"][name] = chunk_stats(chunks.view(w, s, *shape[1:]), demo)

        def generator_stats(generator, z):
            chunks = generator.generate(generator.model.encode(obs).repeat_interleave(s, 0), z).clamp(-1, 1)
            return chunk_stats(chunks.view(w, s, *shape[1:]), demo)

        for path in args.models:
            policy = load_policy(path)
            z = torch.randn(shape) if policy.config.variant == "s" else torch.zeros(shape)
            report["chunks"][path] = generator_stats(policy.graph.generator, z)
        fresh = OneDPDistillation(teacher, OneDPConfig(variant="s")).generator.eval()
        report["chunks"]["OneDP-S generator before training"] = generator_stats(fresh, torch.randn(shape))
        target = FixedStepSampler(tm.unet, tm.make_sampler("ddim", 10))(tm.encode(obs), torch.randn(w, *shape[1:]))

    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True)

    for score_lr in args.score_lr:
        torch.manual_seed(args.seed)
        module = OneDPDistillation(teacher, OneDPConfig(variant="s"))
        module.generator.eval()
        module.score.eval()  # center crop, as the teacher sees the image: at step 0 they agree exactly
        opt = torch.optim.AdamW(trainable(module.score), lr=score_lr, betas=module.config.betas, weight_decay=1e-6)
        with torch.no_grad():
            chunk = module.generator(obs, torch.randn(w, *shape[1:]))
        wanted = (chunk - target).flatten(1)

        def measure(step: int) -> None:
            sums = {"score network": 0.0, "analytic (OneDP-D)": 0.0}
            with torch.no_grad():
                for _ in range(args.draws):
                    k, noise = module.sample_steps(w, chunk.device), torch.randn_like(chunk)
                    for name in sums:
                        grad, _ = module.kl_gradient(obs, chunk, k, noise, analytic=name.startswith("analytic"))
                        sums[name] = sums[name] + grad / args.draws
            row = {"score_lr": score_lr, "score_steps": step}
            for name, grad in sums.items():
                row[name] = {"cosine": float(nn.functional.cosine_similarity(grad.flatten(1), wanted).mean()),
                             "magnitude": float(grad.abs().mean())}
            report["kl_gradient"].append(row)
            print(json.dumps(row), flush=True)

        measure(0)
        data = _infinite(loader, None)
        for step in range(1, max(args.score_steps) + 1):
            b = next(data)
            with torch.no_grad():
                actions = module.generator(b["obs"], torch.randn(b["action"].shape))
            _, loss = module.kl_gradient(b["obs"], actions, module.sample_steps(len(actions), actions.device),
                                         torch.randn_like(actions))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(trainable(module.score), 1.0)
            opt.step()
            if step in args.score_steps:
                measure(step)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report["chunks"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
