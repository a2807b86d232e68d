"""DDPM, DDIM and EDM samplers: equivalences, exactness with perfect denoisers, splitting."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdp_ros.diffusion import (
    DDIMSampler,
    DDPMSampler,
    EDMSampler,
    alphas_cumprod,
    make_betas,
    ddim_timesteps,
    edm_denoise,
    edm_preconditioning,
    euler_step,
    heun_step,
)
from fastdp_ros.errors import ConfigError
from fastdp_ros.nn import ConditionalUnet1D


pytestmark = pytest.mark.usefixtures("one_torch_thread")


B, T, D, C = 3, 8, 2, 4


def tiny_net(dtype=torch.float32):
    torch.manual_seed(0)
    net = ConditionalUnet1D(D, C, 16, (16, 32), kernel_size=3, n_groups=8).eval()
    return net.to(dtype)


def perfect_eps(sampler, x0):
    """The exact epsilon predictor when the data is the single point x0."""
    table = alphas_cumprod(make_betas(sampler.beta_schedule, sampler.num_train_timesteps))

    def fn(x, t, cond):
        abar = table[t.long()].to(x.dtype).reshape(-1, 1, 1)
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    return fn


# ---- DDPM == DDIM(K = N, eta = 1) -----------------------------------------------------------

@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip_sample", [True, False])
def test_ddim_full_steps_eta1_reproduces_ddpm(prediction_type, clip_sample):
    kw = dict(prediction_type=prediction_type, clip_sample=clip_sample)
    ddpm = DDPMSampler(100, **kw)
    ddim = DDIMSampler(100, num_inference_steps=100, eta=1.0, **kw)
    assert ddim.timesteps == ddpm.timesteps == tuple(range(99, -1, -1))
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    step_noise = torch.randn(100, B, T, D, generator=g, dtype=torch.float64)
    cond = torch.randn(B, C, generator=g, dtype=torch.float64)
    net = tiny_net(torch.float64)
    with torch.no_grad():
        a = ddpm.sample(net, noise, cond, step_noise)
        b = ddim.sample(net, noise, cond, step_noise)
        assert (a - b).abs().max().item() < 1e-9
        net32 = net.float()
        a = ddpm.sample(net32, noise.float(), cond.float(), step_noise.float())
        b = ddim.sample(net32, noise.float(), cond.float(), step_noise.float())
    # unclipped x0 predictions of a random net reach ~1e3: compare relative to the scale
    assert (a - b).abs().max().item() < 1e-5 * max(1.0, a.abs().max().item())
    assert a.shape == (B, T, D)


def test_ddim_full_steps_eta1_reproduces_ddpm_linear_schedule_and_generator():
    ddpm = DDPMSampler(50, beta_schedule="linear")
    ddim = DDIMSampler(50, num_inference_steps=50, eta=1.0, beta_schedule="linear")
    net = tiny_net(torch.float64)
    noise = torch.randn(B, T, D, dtype=torch.float64)
    with torch.no_grad():
        a = ddpm.sample(net, noise, torch.zeros(B, C, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(5))
        b = ddim.sample(net, noise, torch.zeros(B, C, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(5))
        c = ddim.sample(net, noise, torch.zeros(B, C, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(6))
    assert (a - b).abs().max().item() < 1e-9  # same generator draws, same result
    assert (a - c).abs().max().item() > 1e-3  # the per-step noise matters


def test_ddim_eta0_is_deterministic_and_needs_no_noise():
    ddim = DDIMSampler(100, num_inference_steps=10)
    assert not ddim.stochastic and DDPMSampler().stochastic
    net = tiny_net()
    x = torch.randn(B, T, D)
    with torch.no_grad():
        a = ddim.sample(net, x, torch.zeros(B, C))
        b = ddim.sample(net, x, torch.zeros(B, C), step_noise=torch.randn(10, B, T, D))
    assert torch.equal(a, b)


# ---- timesteps -----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 1000), data=st.data(),
       spacing=st.sampled_from(["leading", "trailing", "linspace"]))
def test_ddim_timesteps_valid(n, data, spacing):
    k = data.draw(st.integers(1, n))
    ts = ddim_timesteps(n, k, spacing)
    assert len(ts) == k
    assert all(0 <= t < n for t in ts)
    assert all(a > b for a, b in zip(ts, ts[1:]))
    if k == n:
        assert ts == tuple(range(n - 1, -1, -1))


def test_ddim_timestep_spacings():
    assert DDIMSampler(100, 4).timesteps == (75, 50, 25, 0)
    assert DDIMSampler(100, 4, timestep_spacing="trailing").timesteps == (99, 74, 49, 24)
    assert DDIMSampler(100, 4, timestep_spacing="linspace").timesteps == (99, 66, 33, 0)
    with pytest.raises(ConfigError):
        DDIMSampler(100, 0)
    with pytest.raises(ConfigError):
        DDIMSampler(100, 101)
    with pytest.raises(ConfigError, match="timestep_spacing"):
        DDIMSampler(100, 4, timestep_spacing="middle")
    with pytest.raises(ConfigError, match="prediction_type"):
        DDPMSampler(prediction_type="score")


# ---- perfect denoisers ---------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 100), eta=st.sampled_from([0.0, 1.0]),
       spacing=st.sampled_from(["leading", "trailing", "linspace"]), seed=st.integers(0, 2**16))
def test_ddim_any_k_recovers_single_point_with_perfect_denoiser(k, eta, spacing, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(2, T, D, generator=g, dtype=torch.float64) * 1.6 - 0.8
    sampler = DDIMSampler(100, k, eta=eta, timestep_spacing=spacing)
    noise = torch.randn(2, T, D, generator=g, dtype=torch.float64)
    out = sampler.sample(perfect_eps(sampler, x0), noise, None,
                         step_noise=torch.randn(k, 2, T, D, generator=g, dtype=torch.float64))
    assert torch.allclose(out, x0, atol=1e-8)


def test_ddpm_recovers_single_point_with_perfect_denoiser():
    x0 = torch.rand(2, T, D, dtype=torch.float64) - 0.5
    sampler = DDPMSampler()
    out = sampler.sample(perfect_eps(sampler, x0), torch.randn(2, T, D, dtype=torch.float64),
                         None, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-8)


def test_sample_prediction_with_perfect_denoiser():
    x0 = torch.rand(2, T, D) - 0.5
    sampler = DDIMSampler(100, 5, prediction_type="sample")
    out = sampler.sample(lambda x, t, c: x0.expand_as(x), torch.randn(2, T, D), None)
    assert torch.allclose(out, x0, atol=1e-6)


# ---- forward process -----------------------------------------------------------------------

def test_add_noise_and_training_targets():
    s = DDPMSampler()
    x0, noise = torch.randn(4, T, D), torch.randn(4, T, D)
    t = torch.tensor([0, 10, 50, 99])
    xt = s.add_noise(x0, noise, t)
    ac = s.alphas_cumprod[t].reshape(-1, 1, 1)
    assert torch.allclose(xt, ac.sqrt() * x0 + (1 - ac).sqrt() * noise)
    assert torch.allclose(s.add_noise(x0[1:2], noise[1:2], 10), xt[1:2])
    assert torch.equal(s.training_target(x0, noise, t), noise)
    assert torch.equal(DDPMSampler(prediction_type="sample").training_target(x0, noise, t), x0)
    v = DDPMSampler(prediction_type="v_prediction").training_target(x0, noise, t)
    # v = sqrt(abar) eps - sqrt(1 - abar) x0 recovers x0 = sqrt(abar) x_t - sqrt(1 - abar) v
    assert torch.allclose(ac.sqrt() * xt - (1 - ac).sqrt() * v, x0, atol=1e-5)
    ts = s.sample_timesteps(1000, generator=torch.Generator().manual_seed(0))
    assert ts.min() >= 0 and ts.max() <= 99 and len(ts.unique()) > 90


# ---- starting from an intermediate step ----------------------------------------------------

@pytest.mark.parametrize("make", [lambda: DDIMSampler(100, 10, eta=0.5), lambda: DDPMSampler(20)])
def test_sample_from_continues_the_loop(make):
    sampler = make()
    k, n = 4, sampler.num_steps
    net = tiny_net(torch.float64)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    cond = torch.randn(B, C, generator=g, dtype=torch.float64)
    step_noise = torch.randn(n, B, T, D, generator=g, dtype=torch.float64)
    with torch.no_grad():
        full = sampler.sample(net, noise, cond, step_noise)
        x = noise
        for i in range(k):  # the first k steps by hand
            x = sampler.step(x, net(x, torch.full((B,), float(sampler.timesteps[i]), dtype=torch.float64), cond),
                             i, step_noise[i])
        rest_abs = sampler.sample_from(net, x, k, cond, step_noise)
        rest_rel = sampler.sample_from(net, x, k, cond, step_noise[k:])
    assert torch.allclose(rest_abs, full, atol=1e-10)
    assert torch.allclose(rest_rel, full, atol=1e-10)
    assert sampler.nfe(k) == n - k
    with pytest.raises(ConfigError, match="step_noise"):
        sampler.sample_from(net, x, k, cond, step_noise[:3])
    with pytest.raises(ConfigError, match="start_index"):
        sampler.sample_from(net, x, n, cond)


def test_noise_to_index_then_sample_from_recovers_point():
    x0 = torch.rand(2, T, D, dtype=torch.float64) - 0.5
    sampler = DDIMSampler(100, 10)
    xt = sampler.noise_to_index(x0, torch.randn(2, T, D, dtype=torch.float64), 6)
    abar = sampler.alphas_cumprod[sampler.timesteps[6]].item()
    assert sampler.timesteps[6] == 30 and abar > 0.5
    assert torch.allclose(sampler.sample_from(perfect_eps(sampler, x0), xt, 6), x0, atol=1e-8)


# ---- EDM -----------------------------------------------------------------------------------

@pytest.mark.parametrize("heun", [True, False])
@pytest.mark.parametrize("num_steps", [1, 2, 18])
def test_edm_perfect_denoiser_returns_the_point(heun, num_steps):
    x0 = torch.randn(2, T, D, dtype=torch.float64)
    sampler = EDMSampler(num_steps=num_steps, heun=heun)
    out = sampler.run_ode(lambda x, sigma: x0, torch.randn(2, T, D, dtype=torch.float64) * 80)
    assert torch.allclose(out, x0, atol=1e-9)
    assert sampler.nfe() == (2 * num_steps - 1 if heun else num_steps)


def test_edm_preconditioned_network_path_returns_the_point():
    """A network F for which c_skip x + c_out F(c_in x, c_noise) = x0 exactly."""
    x0 = torch.randn(2, T, D, dtype=torch.float64)
    sd = 0.5

    def net(x_in, c_noise, cond):
        sigma = torch.exp(4 * c_noise).reshape(-1, 1, 1)
        c_skip, c_out, c_in, _ = edm_preconditioning(sigma, sd)
        return (x0 - c_skip * (x_in / c_in)) / c_out

    sampler = EDMSampler(num_steps=6, sigma_data=sd)
    assert torch.allclose(sampler.sample(net, torch.randn(2, T, D, dtype=torch.float64)), x0, atol=1e-8)
    xs = sampler.noise_to_index(x0, torch.randn(2, T, D, dtype=torch.float64), 3)
    assert torch.allclose(sampler.sample_from(net, xs, 3), x0, atol=1e-8)
    # edm_denoise with float and with per-sample tensor sigma agree
    x = torch.randn(2, T, D, dtype=torch.float64)
    a = edm_denoise(net, x, 1.7, None, sd)
    b = edm_denoise(net, x, torch.tensor([1.7, 1.7], dtype=torch.float64), None, sd)
    assert torch.allclose(a, x0) and torch.allclose(b, x0)


def test_edm_heun_is_second_order_on_gaussian_data():
    """Data N(0, sd^2): D(x; s) = x sd^2 / (sd^2 + s^2) and the ODE solution is
    x(s) = x(s_max) sqrt(sd^2 + s^2) / sqrt(sd^2 + s_max^2)."""
    sd = 0.5

    def denoiser(x, sigma):
        return x * sd**2 / (sd**2 + sigma**2)

    x_start = torch.randn(64, T, D, dtype=torch.float64) * 80.0
    exact = x_start * sd / math.sqrt(sd**2 + 80.0**2)
    err = {}
    for heun in (True, False):
        for n in (18, 72):
            out = EDMSampler(num_steps=n, heun=heun, sigma_data=sd).run_ode(denoiser, x_start)
            err[heun, n] = ((out - exact).abs().max() / exact.abs().max()).item()
    assert err[True, 18] < 0.06 and err[True, 18] < err[False, 18] / 2
    # 4x the steps: Heun's error falls ~16x (2nd order), Euler's ~4x (1st order)
    assert err[True, 72] < err[True, 18] / 10
    assert err[False, 18] / 6 < err[False, 72] < err[False, 18] / 2


def test_heun_step_tensor_sigmas_match_float_sigmas():
    sd = 0.5

    def denoiser(x, sigma):
        s = sigma.reshape(-1, 1, 1) if torch.is_tensor(sigma) else sigma
        return torch.tanh(x) * sd**2 / (sd**2 + s**2)

    x = torch.randn(3, T, D, dtype=torch.float64)
    s_from = torch.tensor([2.0, 0.7, 0.1], dtype=torch.float64)
    s_to = torch.tensor([1.5, 0.0, 0.05], dtype=torch.float64)
    out = heun_step(denoiser, x, s_from, s_to)
    for i in range(3):
        ref = heun_step(denoiser, x[i : i + 1], s_from[i].item(), s_to[i].item())
        assert torch.allclose(out[i : i + 1], ref, atol=1e-12)
    assert torch.allclose(out[1:2], euler_step(denoiser, x[1:2], 0.7, 0.0))
    # differentiable, with a finite gradient even where sigma_to == 0
    xg = x.clone().requires_grad_(True)
    heun_step(denoiser, xg, s_from, s_to).sum().backward()
    assert torch.isfinite(xg.grad).all()
    # 0-d tensor sigmas broadcast over the batch
    assert torch.allclose(heun_step(denoiser, x, torch.tensor(2.0, dtype=torch.float64),
                                    torch.tensor(1.5, dtype=torch.float64)),
                          heun_step(denoiser, x, 2.0, 1.5))


def test_edm_with_a_network_runs_and_is_deterministic():
    net = tiny_net()
    sampler = EDMSampler(num_steps=4)
    noise, cond = torch.randn(B, T, D), torch.randn(B, C)
    with torch.no_grad():
        a = sampler.sample(net, noise, cond)
        b = sampler.sample(net, noise, cond)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert sampler.sigmas.shape == (5,) and sampler.sigma_levels[-1] == 0.0
