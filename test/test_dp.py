"""Diffusion Policy teacher: learns a tiny dataset, round-trips exactly, rejects bad files."""

import json

import numpy as np
import pytest
import torch

from fastdp_ros.data import ReplayBuffer
from fastdp_ros.errors import ConfigError, ModelFileError
from fastdp_ros.policies import load_policy
from fastdp_ros.policies.dp import DiffusionPolicyConfig, train_diffusion_policy
from fastdp_ros.policies.training import TrainSettings

H = 16  # tiny images keep the test fast


def make_dataset(path, n_episodes=4, length=20, images=True, seed=0, rewards=True, attrs=None):
    """Episodes whose actions depend on the observation: the policy must read it."""
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer.create(path, attrs={"task": "push", "dt": 0.1, "robot": "panda", **(attrs or {})})
    for e in range(n_episodes):
        sign = 1.0 if e % 2 == 0 else -1.0
        t = np.linspace(0, 1, length, dtype=np.float32)
        joint = np.stack([sign * t] * 7, axis=1).astype(np.float32)
        data = {
            "joint_pos": joint,
            "gripper": np.full((length, 1), 0.04, np.float32),
            "action": np.concatenate([joint + 0.1 * sign, np.full((length, 1), 0.04, np.float32)], 1),
        }
        if rewards:  # higher as the joints approach +1
            data["reward"] = (1.0 - np.abs(1.0 - joint[:, 0]) / 2).astype(np.float32)
        if images:
            img = np.zeros((length, H, H, 3), np.uint8)
            img[..., 0] = 255 if sign > 0 else 0
            data["img_front"] = img + rng.integers(0, 5, img.shape, dtype=np.uint8)
        buf.add_episode(data, episode_seed=e, episode_success=True)
    return path


def tiny_config(**kw):
    base = dict(feature_dim=16, num_keypoints=8, down_dims=(32, 64), diffusion_step_embed_dim=16,
                n_groups=4, crop_ratio=1.0, sampler="ddim", num_inference_steps=10)
    base.update(kw)
    return DiffusionPolicyConfig(**base)


def train_tiny(tmp_path, steps=600, images=True, precision="fp32", **cfg):
    ds = make_dataset(tmp_path / "ds", images=images)
    out = tmp_path / "model"
    settings = TrainSettings(steps=steps, batch_size=16, lr=1e-3, warmup_steps=10, val_every=10**6,
                             ckpt_every=10**6, seed=0, precision=precision)
    result = train_diffusion_policy(str(ds), str(out), tiny_config(**cfg), settings,
                                    image_keys=("img_front",) if images else (),
                                    horizon=8, n_obs_steps=2, n_action_steps=4, val_ratio=0.0)
    return out, result


def obs_of(sign, images=True):
    obs = {"joint_pos": np.full((2, 7), 0.5 * sign, np.float32), "gripper": np.full((2, 1), 0.04, np.float32)}
    if images:
        img = np.zeros((2, H, H, 3), np.uint8)
        img[..., 0] = 255 if sign > 0 else 0
        obs["img_front"] = img
    return obs


def test_tiny_model_overfits_and_acts(tmp_path):
    torch.manual_seed(0)
    out, result = train_tiny(tmp_path)
    assert result.final_loss < result.first_loss / 5
    policy = load_policy(out)
    assert policy.nfe == 10
    for sign in (1.0, -1.0):
        chunk = policy.act(obs_of(sign))
        assert chunk.shape == (8, 8)
        # the action tracks the observed joints plus the episode's offset (+-0.1)
        assert np.all(np.sign(chunk[:, :7].mean()) == sign)
    emb = policy.encode(obs_of(1.0))
    assert emb.ndim == 1 and emb.size == 2 * (16 + 8)


def test_bf16_autocast_training_learns_and_keeps_fp32_weights(tmp_path):
    torch.manual_seed(0)
    out, result = train_tiny(tmp_path, precision="bf16")
    assert result.final_loss < result.first_loss / 5
    policy = load_policy(out)
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())
    config = json.loads((out / "config.json").read_text())
    assert config["provenance"]["train_settings"]["precision"] == "bf16"
    for sign in (1.0, -1.0):
        assert np.sign(policy.act(obs_of(sign))[:, :7].mean()) == sign


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision"):
        TrainSettings(precision="fp8")


def test_save_load_round_trip_exact(tmp_path):
    out, _ = train_tiny(tmp_path, steps=5)
    a = load_policy(out, sampler="ddpm", seed=3)
    b = load_policy(out, sampler="ddpm", seed=3)
    assert a.nfe == 100
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k
    np.testing.assert_array_equal(a.act(obs_of(1.0)), b.act(obs_of(1.0)))


def test_lowdim_and_edm_variants_train(tmp_path):
    out, result = train_tiny(tmp_path, steps=5, images=False, noise_model="edm", sampler="edm",
                             num_inference_steps=4)
    policy = load_policy(out)
    assert policy.spec.image_keys == ()
    assert policy.nfe == 2 * 4 - 1  # Heun: two evaluations a step, Euler on the last
    assert np.all(np.isfinite(policy.act(obs_of(1.0, images=False))))


def test_corrupted_weights_clear_error(tmp_path):
    out, _ = train_tiny(tmp_path, steps=2)
    f = out / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="model.safetensors"):
        load_policy(out)


def test_mismatched_config_clear_error(tmp_path):
    import json

    out, _ = train_tiny(tmp_path, steps=2)
    cfg = json.loads((out / "config.json").read_text())
    cfg["policy"]["down_dims"] = [16, 64]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="does not match the network"):
        load_policy(out)


def test_relative_actions_train_act_and_round_trip(tmp_path):
    out, result = train_tiny(tmp_path, steps=300, relative_to="joint_pos")
    assert result.final_loss < result.first_loss / 2
    policy = load_policy(out)
    model = policy.model
    obs = {k: torch.from_numpy(v)[None] for k, v in obs_of(1.0).items()}
    reference = model.action_reference(obs)
    assert reference.shape == (1, 7)
    action = torch.randn(1, 8, 8)
    back = model.unnormalize_action(model.normalize_action(action, reference), reference)
    torch.testing.assert_close(back, action, rtol=1e-5, atol=1e-5)
    # the arm part is learned as an offset from the current joints: the chunk follows them
    for sign in (1.0, -1.0):
        chunk = policy.act(obs_of(sign))
        assert np.sign(chunk[:, :7].mean()) == sign
    with pytest.raises(Exception, match="relative to 'joint_pos'"):
        model.normalize_action(action)


def test_init_from_seeds_an_edm_model_with_a_ddpm_models_parameters(tmp_path):
    import json

    from fastdp_ros.errors import ConfigError
    from fastdp_ros.policies.dp import DiffusionPolicyModel, load_initial_weights
    from fastdp_ros.policies.modeldir import model_hash
    from fastdp_ros.policies.spec import PolicySpec

    source, _ = train_tiny(tmp_path / "ddpm", steps=20)
    cfg = json.loads((source / "config.json").read_text())
    spec = PolicySpec.from_dict(cfg["spec"])
    edm = DiffusionPolicyModel(spec, tiny_config(noise_model="edm", sampler="edm"), cfg["normalizer"])
    entry = load_initial_weights(edm, source)
    assert entry["model_hash"] == model_hash(source) and entry["noise_model"] == "ddpm"
    teacher = load_policy(source).model
    for name, value in teacher.named_parameters():
        torch.testing.assert_close(dict(edm.named_parameters())[name], value)
    assert not hasattr(edm, "train_sampler")  # buffers (the DDPM schedule) stay the EDM model's own

    other = DiffusionPolicyModel(spec, tiny_config(down_dims=(16, 32)), cfg["normalizer"])
    with pytest.raises(ConfigError, match="down_dims"):
        load_initial_weights(other, source)


def test_train_init_from_records_provenance(tmp_path):
    import json

    source, _ = train_tiny(tmp_path / "ddpm", steps=5)
    ds = tmp_path / "ddpm" / "ds"
    out = tmp_path / "edm"
    settings = TrainSettings(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, val_every=10**6, ckpt_every=10**6)
    train_diffusion_policy(str(ds), str(out), tiny_config(noise_model="edm", sampler="edm", num_inference_steps=3),
                           settings, image_keys=("img_front",), horizon=8, n_obs_steps=2, n_action_steps=4,
                           val_ratio=0.0, init_from=str(source))
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["init_from"]["model"] == str(source.resolve())
    assert np.all(np.isfinite(load_policy(out).act(obs_of(1.0))))


def test_converted_edm_model_is_the_ddpm_model(tmp_path):
    """`fastdp convert --to edm`: D(x; sigma_t) is the DDPM model's own x0 estimate at t."""
    import json

    from fastdp_ros.cli.main import main
    from fastdp_ros.diffusion import alphas_cumprod, cosine_betas

    source, _ = train_tiny(tmp_path / "ddpm", steps=20)
    out = tmp_path / "edm"
    assert main(["convert", str(source), "--to", "edm", "--out", str(out), "--steps", "6"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["policy"]["noise_model"] == "edm" and cfg["policy"]["preconditioning"] == "vp"
    assert cfg["provenance"]["converted_from"] == str(source.resolve())
    ddpm, edm = load_policy(source).model, load_policy(out).model
    for (name, a), (_, b) in zip(ddpm.state_dict().items(), edm.state_dict().items()):
        assert torch.equal(a, b), name

    abar = alphas_cumprod(cosine_betas(100)).float()
    cond = ddpm.encode({k: torch.from_numpy(v[None]) for k, v in obs_of(1.0).items()}).expand(3, -1)
    x_t = torch.randn(3, 8, 8)
    t = torch.tensor([3, 40, 90])
    a = abar[t].view(-1, 1, 1)
    with torch.no_grad():
        eps = ddpm.unet(x_t, t.float(), cond)
        x0_ddpm = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        sigma = ((1 - abar[t]) / abar[t]).sqrt()
        x0_edm = edm.edm_denoiser(x_t / a.sqrt(), sigma, cond)
    torch.testing.assert_close(x0_edm, x0_ddpm, atol=1e-4, rtol=1e-4)
    policy = load_policy(out)
    assert policy.nfe == 2 * 6 - 1
    assert np.all(np.isfinite(policy.act(obs_of(-1.0))))

    assert main(["convert", str(out), "--to", "edm", "--out", str(tmp_path / "again")]) == 2  # already EDM
    assert main(["convert", str(source), "--to", "ddim", "--out", str(tmp_path / "x")]) == 2


def test_converted_edm_model_starts_at_the_chosen_sigma_max(tmp_path):
    """`--sigma-max` moves where the Heun sampler (and a consistency student) starts."""
    import json

    from fastdp_ros.cli.main import main

    source, _ = train_tiny(tmp_path / "ddpm", steps=5)
    out = tmp_path / "edm"
    assert main(["convert", str(source), "--to", "edm", "--out", str(out), "--steps", "4", "--sigma-max", "5"]) == 0
    assert json.loads((out / "config.json").read_text())["policy"]["sigma_max"] == 5.0
    sampler = load_policy(out).model.make_sampler("edm", 4)
    assert float(sampler.sigmas[0]) == pytest.approx(5.0)
    assert np.all(np.isfinite(load_policy(out).act(obs_of(0.5))))
    # below sigma_min there is no schedule: refused before anything is written
    assert main(["convert", str(source), "--to", "edm", "--out", str(tmp_path / "bad"), "--sigma-max", "0.001"]) == 2
    assert not (tmp_path / "bad").exists()


def test_vp_preconditioning_is_for_edm_models():
    from fastdp_ros.errors import ConfigError

    with pytest.raises(ConfigError, match="for EDM models"):
        tiny_config(preconditioning="vp")
    with pytest.raises(ConfigError, match="preconditioning must be one of"):
        tiny_config(noise_model="edm", sampler="edm", preconditioning="karras")
