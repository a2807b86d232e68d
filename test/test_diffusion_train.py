"""A tiny ConditionalUnet1D + DDPM learns a two-mode distribution of action sequences."""

import statistics

import pytest
import torch

from fastdp_ros.diffusion import DDIMSampler, DDPMSampler
from fastdp_ros.nn import ConditionalUnet1D, EMAModel


pytestmark = pytest.mark.usefixtures("one_torch_thread")


T, D = 8, 2


def two_modes() -> torch.Tensor:
    """Two action sequences: a rising/negative and a falling/positive trajectory, (2, T, D)."""
    u = torch.linspace(0, 1, T)
    a = torch.stack([0.6 * u, torch.full((T,), -0.3)], dim=-1)
    b = torch.stack([-0.6 * u, torch.full((T,), 0.3)], dim=-1)
    return torch.stack([a, b])


def nearest_mode(samples, modes):
    dist = (samples[:, None] - modes[None]).flatten(2).norm(dim=-1)  # (N, 2)
    return dist.min(dim=1)


def test_ddpm_overfits_two_modes():
    torch.manual_seed(0)
    modes = two_modes()
    separation = (modes[0] - modes[1]).norm().item()  # about 2.65
    net = ConditionalUnet1D(D, 0, 16, (16, 32), kernel_size=3, n_groups=8)
    sampler = DDPMSampler(100)
    ema = EMAModel(net, power=0.75)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(300):
        x0 = modes[torch.randint(0, 2, (64,))]
        noise = torch.randn_like(x0)
        t = sampler.sample_timesteps(64)
        pred = net(sampler.add_noise(x0, noise, t), t.float())
        loss = (pred - sampler.training_target(x0, noise, t)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.step(net)
        losses.append(loss.item())
    first, last = statistics.mean(losses[:10]), statistics.mean(losses[-50:])
    assert last < first / 5, (first, last)

    net.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        samples = sampler.sample(net, torch.randn(64, T, D, generator=g), None, generator=g)
    dist, which = nearest_mode(samples, modes)
    assert (dist < 0.2 * separation).float().mean() >= 0.9, dist
    share = which.float().mean().item()
    assert 0.15 < share < 0.85  # both modes, not their average

    # a 10-step DDIM sampler, and the EMA weights, also land on the modes
    with torch.no_grad():
        fast = DDIMSampler(100, 10).sample(net, torch.randn(64, T, D, generator=g), None)
        averaged = sampler.sample(ema.averaged_model, torch.randn(64, T, D, generator=g), None,
                                  generator=g)
    for out in (fast, averaged):
        dist, which = nearest_mode(out, modes)
        assert (dist < 0.3 * separation).float().mean() >= 0.8, dist
        assert 0.1 < which.float().mean().item() < 0.9
