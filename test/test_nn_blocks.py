"""MLP, EMAModel and the hypernetwork."""

import math

import pytest
import torch
from torch import nn

from fastdp_ros.errors import ConfigError
from fastdp_ros.nn import MLP, EMAModel, HyperNetwork, functional_mlp, mlp_param_count


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- MLP -----------------------------------------------------------------------------------

def test_mlp_layers_and_shapes():
    m = MLP(10, [32, 32], 4)
    assert m(torch.randn(5, 10)).shape == (5, 4)
    assert m(torch.randn(2, 3, 10)).shape == (2, 3, 4)
    kinds = [type(l) for l in m.net]
    assert kinds == [nn.Linear, nn.Mish, nn.Linear, nn.Mish, nn.Linear]
    m = MLP(10, [16], 4, activation=nn.ReLU, layer_norm=True)
    assert [type(l) for l in m.net] == [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear]
    assert [type(l) for l in MLP(3, [], 2).net] == [nn.Linear]
    assert isinstance(MLP(3, [4], 2, activation="relu").net[1], nn.ReLU)


def test_mlp_errors():
    with pytest.raises(ConfigError, match="activation"):
        MLP(3, [4], 2, activation="swishy")
    with pytest.raises(ConfigError):
        MLP(0, [4], 2)


# ---- EMA -----------------------------------------------------------------------------------

def test_ema_decay_warmup_values():
    ema = EMAModel(nn.Linear(2, 2), power=0.75, max_value=0.9999)
    # step n after the start: 1 - (1 + n) ** -0.75; the first two calls copy the model
    assert ema.get_decay(0) == 0.0 and ema.get_decay(1) == 0.0
    assert ema.get_decay(2) == pytest.approx(1 - 2**-0.75)  # 0.4054
    assert ema.get_decay(10) == pytest.approx(1 - 10**-0.75)  # 0.8222
    assert ema.get_decay(10_001) == pytest.approx(1 - 10_001**-0.75)  # 0.9990
    assert ema.get_decay(10**9) == 0.9999  # clamped
    decays = [ema.get_decay(n) for n in range(200)]
    assert all(a <= b for a, b in zip(decays, decays[1:]))
    later = EMAModel(nn.Linear(2, 2), update_after_step=100)
    assert later.get_decay(101) == 0.0 and later.get_decay(102) == pytest.approx(1 - 2**-0.75)
    slow = EMAModel(nn.Linear(2, 2), power=2 / 3, inv_gamma=1.0)
    assert slow.get_decay(1001) == pytest.approx(1 - 1001 ** (-2 / 3))


def test_ema_averages_toward_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = EMAModel(model, power=0.75)
    assert not ema.averaged_model.training
    assert all(not p.requires_grad for p in ema.averaged_model.parameters())
    w = model[0].weight
    # first step: decay 0, the average equals the model
    with torch.no_grad():
        w.add_(1.0)
    ema.step(model)
    assert ema.decay == 0.0 and torch.equal(ema.averaged_model[0].weight, w)
    ema.step(model)  # decay 0 again
    # now move the model to a fixed target: the average approaches it monotonically
    target = w.detach().clone() + 2.0
    with torch.no_grad():
        w.copy_(target)
    gaps = []
    for k in range(20):
        before = ema.averaged_model[0].weight.clone()
        ema.step(model)
        after = ema.averaged_model[0].weight
        d = ema.decay
        assert torch.allclose(after, d * before + (1 - d) * target, atol=1e-6)
        gaps.append((after - target).abs().max().item())
    assert all(b < a for a, b in zip(gaps, gaps[1:])) and gaps[-1] < gaps[0]
    assert ema.optimization_step == 22


def test_ema_copies_buffers_and_frozen_parameters():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model[1].weight.requires_grad_(False)
    ema = EMAModel(model)
    ema.step(model)
    ema.step(model)
    model.train()
    model(torch.randn(16, 3) * 5 + 3)  # updates running stats
    with torch.no_grad():
        model[1].weight.fill_(7.0)
        model[0].bias.fill_(7.0)
    ema.step(model)
    assert torch.equal(ema.averaged_model[1].running_mean, model[1].running_mean)
    assert torch.equal(ema.averaged_model[1].num_batches_tracked, model[1].num_batches_tracked)
    assert torch.equal(ema.averaged_model[1].weight, model[1].weight)  # frozen: copied
    assert not torch.equal(ema.averaged_model[0].bias, model[0].bias)  # trained: averaged


def test_ema_state_dict_roundtrip():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    ema = EMAModel(model)
    for _ in range(5):
        with torch.no_grad():
            model.weight.add_(0.1)
        ema.step(model)
    state = ema.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # safetensors-ready
    other = EMAModel(nn.Linear(4, 2))
    other.load_state_dict(state)
    assert other.optimization_step == 5 and other.decay == pytest.approx(ema.decay)
    assert torch.equal(other.averaged_model.weight, ema.averaged_model.weight)
    with pytest.raises(ConfigError):
        EMAModel(nn.Linear(3, 2)).load_state_dict(state)


# ---- hypernetwork --------------------------------------------------------------------------

def test_param_count():
    assert mlp_param_count([10, 32, 4]) == 10 * 32 + 32 + 32 * 4 + 4
    with pytest.raises(ConfigError):
        mlp_param_count([10])


def test_functional_mlp_matches_nn_mlp():
    torch.manual_seed(0)
    ref = MLP(5, [16, 8], 3, activation=nn.Mish)
    linears = [l for l in ref.net if isinstance(l, nn.Linear)]
    flat = torch.cat([t.reshape(-1) for l in linears for t in (l.weight, l.bias)]).detach()
    x = torch.randn(7, 5)
    expected = ref(x)
    assert torch.allclose(functional_mlp(x, flat, [5, 16, 8, 3], "mish"), expected, atol=1e-6)
    # batched over networks: B copies of the same weights
    batched = flat.expand(4, -1)
    xb = torch.randn(4, 6, 5)
    out = functional_mlp(xb, batched, [5, 16, 8, 3], nn.Mish())
    assert out.shape == (4, 6, 3)
    assert torch.allclose(out, ref(xb), atol=1e-6)
    assert functional_mlp(xb[:, 0], batched, [5, 16, 8, 3]).shape == (4, 3)
    assert torch.allclose(functional_mlp(x, flat, [5, 16, 8, 3], final_activation=torch.tanh),
                          torch.tanh(expected), atol=1e-6)


def test_functional_mlp_uses_each_networks_own_weights():
    sizes = [2, 3, 1]
    p = torch.randn(2, mlp_param_count(sizes))
    x = torch.randn(2, 4, 2)
    out = functional_mlp(x, p, sizes, "relu")
    for b in range(2):
        assert torch.allclose(out[b], functional_mlp(x[b], p[b], sizes, "relu"), atol=1e-6)
    with pytest.raises(ConfigError):
        functional_mlp(x, p[:, :-1], sizes)


def test_hypernetwork_outputs_and_init():
    torch.manual_seed(0)
    sizes = [10, 32, 4]
    hyper = HyperNetwork(16, sizes, hidden=64)
    z = torch.randn(5, 16)
    flat = hyper(z)
    assert flat.shape == (5, mlp_param_count(sizes)) == (5, hyper.num_target_params)
    # at init every latent decodes near one sensibly scaled target network
    w1 = flat[:, : 10 * 32]
    assert w1.std().item() == pytest.approx(1 / math.sqrt(3 * 10), rel=0.35)
    assert (flat - flat.mean(0)).abs().max() < 0.2
    out = hyper.run_target(z, torch.randn(5, 7, 10))
    assert out.shape == (5, 7, 4)
    # gradients reach the hypernetwork through the target's outputs
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hyper.parameters())


def test_hypernetwork_can_fit_two_latent_conditioned_targets():
    torch.manual_seed(0)
    sizes = [1, 16, 1]
    hyper = HyperNetwork(2, sizes, hidden=32)
    z = torch.eye(2)
    x = torch.linspace(-1, 1, 16).reshape(1, 16, 1).expand(2, 16, 1)
    y = torch.stack([x[0] * 0.5, -x[1]])  # latent 0 -> slope 0.5, latent 1 -> slope -1
    opt = torch.optim.Adam(hyper.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss = (hyper.run_target(z, x) - y).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 20
