"""OneDP: starts as the teacher's one-step denoiser, distils end to end, rejects bad input."""

import json

import numpy as np
import pytest
import torch

from fastdp_ros.errors import ConfigError, DatasetError
from fastdp_ros.policies import load_policy
from fastdp_ros.policies.distill import load_teacher
from fastdp_ros.policies.onedp import OneDPConfig, OneDPDistillation, distill_onedp
from fastdp_ros.policies.training import TrainSettings
from test_dp import make_dataset, obs_of, train_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one_torch_thread
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher")
    out, _ = train_tiny(path, steps=400)
    torch.set_num_threads(threads)
    return out, path / "ds"


def settings(steps, **kw):
    return TrainSettings(steps=steps, batch_size=16, warmup_steps=1, val_every=10**6, ckpt_every=10**6,
                         seed=0, **kw)


def test_generator_starts_as_teachers_one_step_denoiser(teacher, tmp_path):
    model_dir, dataset = teacher
    t = load_teacher(model_dir, "ddpm", "OneDP")
    module = OneDPDistillation(t, OneDPConfig(t_init=65))
    obs = {k: torch.from_numpy(v)[None] for k, v in obs_of(1.0).items()}
    z = torch.randn(1, t.spec.horizon, t.spec.action_dim)
    with torch.no_grad():
        eps = t.model.unet(z, torch.full((1,), 65.0), t.model.encode(obs))
        abar = t.model.train_sampler.alphas_cumprod[65]
        x0_teacher = (z - (1 - abar).sqrt() * eps) / abar.sqrt()
        np.testing.assert_allclose(module.generator(obs, z).numpy(), x0_teacher.numpy(), atol=1e-5)

    # The saved, reloaded student acts the same before any learning (learning rates 0).
    out = tmp_path / "onedp"
    distill_onedp(str(model_dir), str(dataset), str(out), OneDPConfig(generator_lr=0.0, score_lr=0.0),
                  settings(2))
    student = load_policy(out, seed=0)
    assert student.nfe == 1
    z = student.noise()
    student.generator.manual_seed(0)  # act() draws the same z
    with torch.no_grad():
        eps = t.model.unet(z, torch.full((1,), 65.0), t.model.encode(obs))
        expected = t.model.unnormalize_action(((z - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1))
    np.testing.assert_allclose(student.act(obs_of(1.0)), expected[0].numpy(), atol=1e-4)


@pytest.mark.parametrize("variant, precision", [("s", "fp32"), ("d", "fp32"), ("s", "bf16")])
def test_distillation_runs_end_to_end(teacher, tmp_path, variant, precision):
    model_dir, dataset = teacher
    out = tmp_path / f"onedp_{variant}"
    result = distill_onedp(str(model_dir), str(dataset), str(out), OneDPConfig(variant=variant),
                           settings(20, precision=precision))
    assert np.isfinite(result.final_loss)
    student = load_policy(out)
    assert student.policy_type == "onedp" and student.nfe == 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["provenance"]["teacher"] == str(model_dir.resolve())
    assert cfg["provenance"]["teacher_hash"]
    chunk = student.act(obs_of(1.0))
    assert chunk.shape == (8, 8) and np.all(np.isfinite(chunk))
    assert student.encode(obs_of(1.0)).ndim == 1
    if variant == "d":  # deterministic: the same observation gives the same chunk
        np.testing.assert_array_equal(student.act(obs_of(1.0)), chunk)


def test_deterministic_student_moves_toward_the_teacher(teacher, tmp_path):
    model_dir, dataset = teacher
    t = load_policy(model_dir, seed=0)
    reference = {s: np.mean([t.act(obs_of(s)) for _ in range(10)], axis=0) for s in (1.0, -1.0)}

    def distance(policy):
        return np.mean([np.abs(policy.act(obs_of(s)) - reference[s]).mean() for s in (1.0, -1.0)])

    start, trained = tmp_path / "start", tmp_path / "trained"
    distill_onedp(str(model_dir), str(dataset), str(start), OneDPConfig(variant="d", generator_lr=0.0), settings(1))
    distill_onedp(str(model_dir), str(dataset), str(trained), OneDPConfig(variant="d", generator_lr=1e-3),
                  settings(100))
    assert distance(load_policy(trained)) < 0.8 * distance(load_policy(start))


class PointMassEps(torch.nn.Module):
    """The exact noise prediction of a teacher whose data are a single point `mu`."""

    def __init__(self, mu, chain):
        super().__init__()
        self.mu, self.chain = mu, chain

    def forward(self, x, t, cond):
        k = t.long()
        a = self.chain.sqrt_alphas_cumprod[k].view(-1, 1, 1)
        s = self.chain.sqrt_one_minus_alphas_cumprod[k].view(-1, 1, 1)
        return (x - a * self.mu) / s


def _free_action_gradient(module, batch, action):
    module.generator.forward = lambda obs, z: action  # isolate the gradient w.r.t. the action
    module(batch).backward()
    return action.grad


def test_kl_gradient_points_toward_the_teacher(teacher):
    """OneDP-D against a point-mass teacher: the surrogate's gradient w.r.t. the action is
    exactly abar_k (A - mu) per sample, so descent moves A straight to the teacher's data."""
    model_dir, _ = teacher
    t = load_teacher(model_dir, "ddpm", "OneDP")
    module = OneDPDistillation(t, OneDPConfig(variant="d", k_min=30, k_max=30))
    module.teacher.unet = PointMassEps(torch.full((1, 8, 8), 0.5), module.chain)
    b = 4
    obs = {k: torch.from_numpy(np.repeat(v[None], b, 0)) for k, v in obs_of(1.0).items()}
    action = torch.linspace(-1, 1, b * 64).reshape(b, 8, 8).requires_grad_(True)
    grad = _free_action_gradient(module, {"obs": obs, "action": torch.zeros(b, 8, 8)}, action)
    abar = module.chain.alphas_cumprod[30]
    torch.testing.assert_close(grad, abar * (action.detach() - 0.5) / b, rtol=1e-4, atol=1e-6)


def test_stochastic_variant_starts_with_zero_generator_gradient(teacher):
    """OneDP-S's score network starts as the teacher: no score difference, no push yet."""
    model_dir, _ = teacher
    t = load_teacher(model_dir, "ddpm", "OneDP")
    module = OneDPDistillation(t, OneDPConfig(variant="s"))
    obs = {k: torch.from_numpy(np.repeat(v[None], 4, 0)) for k, v in obs_of(1.0).items()}
    action = torch.randn(4, 8, 8, requires_grad=True)
    grad = _free_action_gradient(module, {"obs": obs, "action": torch.zeros(4, 8, 8)}, action)
    assert torch.count_nonzero(grad) == 0


def test_bad_input_fails_before_training(teacher, tmp_path):
    model_dir, dataset = teacher
    edm_dir, _ = train_tiny(tmp_path / "edm", steps=2, noise_model="edm", sampler="edm", num_inference_steps=4)
    with pytest.raises(ConfigError, match="needs a ddpm teacher"):
        distill_onedp(str(edm_dir), str(dataset), str(tmp_path / "x"), OneDPConfig(), settings(1))
    other = make_dataset(tmp_path / "lowdim", images=False)
    with pytest.raises(DatasetError, match="img_front"):
        distill_onedp(str(model_dir), str(other), str(tmp_path / "y"), OneDPConfig(), settings(1))
    with pytest.raises(ConfigError, match="variant"):
        OneDPConfig(variant="x")
    with pytest.raises(ConfigError, match="t_init"):
        distill_onedp(str(model_dir), str(dataset), str(tmp_path / "z"), OneDPConfig(t_init=500), settings(1))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_onedp_rejects_sampler_choice(teacher, tmp_path):
    model_dir, dataset = teacher
    out = tmp_path / "onedp"
    distill_onedp(str(model_dir), str(dataset), str(out), OneDPConfig(variant="d"), settings(1))
    with pytest.raises(ConfigError, match="no sampler"):
        load_policy(out, sampler="ddim")


@pytest.mark.parametrize("variant", ["s", "d"])
def test_onnxruntime_engine_matches_eager(teacher, tmp_path, variant):
    pytest.importorskip("onnxruntime")
    from fastdp_ros.engines import load_engine_policy

    model_dir, dataset = teacher
    out = tmp_path / "onedp"
    distill_onedp(str(model_dir), str(dataset), str(out), OneDPConfig(variant=variant), settings(2))
    eager = load_policy(out, seed=5)
    engine = load_engine_policy(out, backend="onnxruntime", seed=5, threads=1)
    assert engine.nfe == 1
    for sign in (1.0, -1.0):
        np.testing.assert_allclose(engine.act(obs_of(sign)), eager.act(obs_of(sign)), atol=1e-4)


def test_analytic_kl_gradient_is_the_deterministic_variants(teacher):
    """kl_gradient(analytic=True) of OneDP-S is OneDP-D's gradient for the same steps and noise."""
    model_dir, _ = teacher
    t = load_teacher(model_dir, "ddpm", "OneDP")
    stochastic = OneDPDistillation(t, OneDPConfig(variant="s"))
    deterministic = OneDPDistillation(t, OneDPConfig(variant="d"))
    obs = {k: torch.from_numpy(np.repeat(v[None], 4, 0)) for k, v in obs_of(1.0).items()}
    action, noise = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    k = torch.tensor([2, 20, 50, 95])
    analytic, _ = stochastic.kl_gradient(obs, action, k, noise, analytic=True)
    expected, _ = deterministic.kl_gradient(obs, action, k, noise)
    torch.testing.assert_close(analytic, expected)
    learned, score_loss = stochastic.kl_gradient(obs, action, k, noise)
    assert score_loss > 0 and not torch.allclose(learned, analytic)


def test_probe_script_reports_spread_and_gradient_alignment(teacher, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    model_dir, dataset = teacher
    out = tmp_path / "probe.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "onedp_probe.py"
    subprocess.run([sys.executable, str(script), "--teacher", str(model_dir), "--dataset", str(dataset),
                    "--windows", "3", "--samples", "2", "--score-steps", "2", "--score-lr", "1e-3",
                    "--draws", "2", "--batch-size", "8", "--out", str(out)], check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert set(report["chunks"]) == {"teacher ddim-10", "teacher ddpm-100", "OneDP-S generator before training"}
    assert all(np.isfinite(list(s.values())).all() for s in report["chunks"].values())
    first, trained = report["kl_gradient"]
    assert first["score_steps"] == 0 and first["score network"]["magnitude"] == 0.0  # starts as the teacher
    assert trained["score_steps"] == 2 and trained["score network"]["magnitude"] > 0
    assert first["analytic (OneDP-D)"]["magnitude"] > 0
