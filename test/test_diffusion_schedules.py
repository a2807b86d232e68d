"""Noise schedules and EDM preconditioning."""

import math

import pytest
import torch

from fastdp_ros.diffusion import (
    alphas_cumprod,
    consistency_preconditioning,
    cosine_betas,
    edm_loss_weight,
    edm_preconditioning,
    edm_training_sigmas,
    karras_sigmas,
    linear_betas,
    make_betas,
)
from fastdp_ros.errors import ConfigError


def test_cosine_schedule():
    betas = cosine_betas(100)
    assert betas.shape == (100,) and betas.dtype == torch.float64
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert torch.all(betas[1:] >= betas[:-1])  # increasing
    assert betas[-1] == pytest.approx(0.999)  # capped
    ac = alphas_cumprod(betas)
    # alpha_bar follows the cosine law up to the cap at the very end
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 50, 90):
        assert ac[t].item() == pytest.approx(f((t + 1) / 100) / f(0), rel=1e-9)
    assert betas[0].item() == pytest.approx(1 - f(0.01) / f(0), rel=1e-12)
    assert torch.all(ac[1:] < ac[:-1])
    assert torch.equal(make_betas("squaredcos_cap_v2", 100), betas)


def test_linear_schedule():
    betas = linear_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.equal(make_betas("linear", 1000), betas)
    ac = alphas_cumprod(betas)
    assert ac[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)  # the DDPM paper's schedule
    with pytest.raises(ConfigError, match="beta_schedule"):
        make_betas("cosine_v3", 100)
    with pytest.raises(ConfigError):
        cosine_betas(0)


def test_karras_sigmas():
    s = karras_sigmas(18)
    assert s.shape == (19,)
    assert s[0].item() == pytest.approx(80.0) and s[17].item() == pytest.approx(0.002) and s[18] == 0
    assert torch.all(s[1:] < s[:-1])
    # uniform in sigma ** (1 / rho)
    r = s[:-1] ** (1 / 7)
    assert torch.allclose(r[1:] - r[:-1], (r[1] - r[0]).expand(17), rtol=1e-9)
    assert karras_sigmas(1).tolist() == [80.0, 0.0]
    with pytest.raises(ConfigError):
        karras_sigmas(5, sigma_min=1.0, sigma_max=0.5)


def test_edm_preconditioning_known_values():
    c_skip, c_out, c_in, c_noise = edm_preconditioning(0.5, 0.5)
    assert c_skip == pytest.approx(0.5)
    assert c_out == pytest.approx(0.5 / math.sqrt(2))
    assert c_in == pytest.approx(math.sqrt(2))
    assert c_noise == pytest.approx(math.log(0.5) / 4)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(80.0, 0.5)
    assert c_skip == pytest.approx(0.25 / 6400.25)
    assert c_out == pytest.approx(40 / math.sqrt(6400.25))
    assert c_in == pytest.approx(1 / math.sqrt(6400.25))
    assert c_noise == pytest.approx(math.log(80) / 4)
    c_skip, c_out, _, _ = edm_preconditioning(0.002, 0.5)
    assert c_skip == pytest.approx(1.0, abs=2e-5) and c_out == pytest.approx(0.002, rel=1e-4)
    # the tensor path agrees with the float path elementwise
    sig = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    tens = edm_preconditioning(sig, 0.5)
    for i, s in enumerate(sig.tolist()):
        for a, b in zip(tens, edm_preconditioning(s, 0.5)):
            assert a[i].item() == pytest.approx(b, rel=1e-12)
    s, sd = 1.3, 0.5
    c_skip, c_out, c_in, _ = edm_preconditioning(s, sd)
    assert c_in**2 * (s**2 + sd**2) == pytest.approx(1.0)  # unit-variance network input
    assert (1 - c_skip) ** 2 * sd**2 + c_skip**2 * s**2 == pytest.approx(c_out**2)  # unit target
    assert edm_loss_weight(torch.tensor(s), sd).item() == pytest.approx(1 / c_out**2)
    with pytest.raises(ConfigError):
        edm_preconditioning(0.0)


def test_consistency_preconditioning_boundary():
    c_skip, c_out, _, _ = consistency_preconditioning(0.002, sigma_min=0.002)
    assert c_skip == pytest.approx(1.0) and c_out == pytest.approx(0.0)
    c_skip, c_out, _, _ = consistency_preconditioning(torch.tensor([0.002, 80.0]), sigma_min=0.002)
    assert c_skip[0].item() == pytest.approx(1.0) and c_out[0].item() == pytest.approx(0.0)
    assert c_skip[1].item() < 1e-4


def test_edm_training_sigmas():
    g = torch.Generator().manual_seed(0)
    s = edm_training_sigmas(20000, generator=g)
    assert (s > 0).all()
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.05)
    assert s.log().std().item() == pytest.approx(1.2, abs=0.05)


def test_vp_preconditioning_reads_ddpm_timesteps_and_samples():
    from fastdp_ros.diffusion import VPPreconditioning

    abar = alphas_cumprod(cosine_betas(100))
    pre = VPPreconditioning(abar)
    sigmas = torch.sqrt((1 - abar) / abar)
    # t(sigma_k) = k, for floats and tensors, and the two paths agree in between
    assert [round(pre.timestep(float(s)), 6) for s in sigmas[[0, 1, 50, 98, 99]]] == [0, 1, 50, 98, 99]
    torch.testing.assert_close(pre.timestep(sigmas), torch.arange(100, dtype=torch.float64), atol=1e-9, rtol=0)
    between = torch.tensor([0.03, 0.5, 3.0, 80.0], dtype=torch.float64)
    assert pre.timestep(between).tolist() == pytest.approx([pre.timestep(float(s)) for s in between], abs=1e-9)
    assert 98.0 < pre.timestep(80.0) < 98.1
    # clamped to [0, T - 1] beyond the table
    assert pre.timestep(1e-4) == 0.0 and pre.timestep(1e5) == 99.0
    assert pre.timestep(torch.tensor([1e-4, 1e5])).tolist() == [0.0, 99.0]
    # c_in (x0 + sigma eps) is the DDPM sample x_t; D = x - sigma F with F the noise
    k = 37
    c_skip, c_out, c_in, c_noise = pre(float(sigmas[k]))
    x0, eps = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    x = x0 + sigmas[k] * eps
    torch.testing.assert_close(c_in * x, abar[k].sqrt() * x0 + (1 - abar[k]).sqrt() * eps)
    torch.testing.assert_close(c_skip * x + c_out * eps, x0)
    assert c_noise == pytest.approx(k)
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        pre(0.0)


def test_vp_timestep_table_moves_to_a_device_once():
    """The tensor path must not copy the table on every call: on a GPU that copy is a transfer
    inside each step, which CUDA graph capture refuses (seen on an H200 with a VP consistency
    student)."""
    from fastdp_ros.diffusion import VPPreconditioning

    pre = VPPreconditioning(alphas_cumprod(cosine_betas(100)))
    first = pre.table_on(torch.device("cpu"), torch.float32)
    pre.timestep(torch.tensor([0.5, 2.0]))
    assert pre.table_on(torch.device("cpu"), torch.float32) is first
    assert pre.table_on(torch.device("cpu"), torch.float64).dtype == torch.float64
    assert len(pre._device_tables) == 2


def test_preconditioned_loss_weight_is_edm_lambda_or_one_over_sigma_squared():
    from fastdp_ros.diffusion import VPPreconditioning, preconditioned_loss_weight

    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0])
    torch.testing.assert_close(preconditioned_loss_weight(edm_preconditioning, sigma, 0.5),
                               edm_loss_weight(sigma, 0.5))
    vp = VPPreconditioning(alphas_cumprod(cosine_betas(100)))
    torch.testing.assert_close(preconditioned_loss_weight(vp, sigma), 1.0 / sigma**2)
