"""Consistency Policy and RACTD: start as the teacher, distil end to end, reward term's sign,
bad input rejected before training."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdp_ros.errors import ConfigError, DatasetError
from fastdp_ros.policies import load_policy
from fastdp_ros.policies.consistency import ConsistencyConfig, ConsistencyDistillation, distill_consistency
from fastdp_ros.policies.distill import load_teacher
from fastdp_ros.policies.ractd import RACTDConfig, discounted_returns, distill_ractd
from fastdp_ros.policies.training import TrainSettings
from test_dp import make_dataset, obs_of, train_tiny


@pytest.fixture(scope="module")
def edm_teacher(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("edm_teacher")
    out, _ = train_tiny(path, steps=300, noise_model="edm", sampler="edm", num_inference_steps=6)
    return out, path / "ds"


@pytest.fixture(scope="module")
def vp_teacher(tmp_path_factory):
    """A tiny DDPM model converted to EDM with VP preconditioning (`fastdp convert --to edm`)."""
    from fastdp_ros.policies.dp import convert_to_edm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vp_teacher")
    ddpm, _ = train_tiny(path, steps=100)
    return convert_to_edm(ddpm, path / "edm", steps=4), path / "ds"


def settings(steps):
    return TrainSettings(steps=steps, batch_size=16, warmup_steps=1, val_every=10**6, ckpt_every=10**6, seed=0)


def batch_of(sign, n=8):
    obs = {k: torch.from_numpy(np.repeat(v[None], n, 0)) for k, v in obs_of(sign).items()}
    return obs


@pytest.mark.parametrize("kind", ["edm_teacher", "vp_teacher"])
def test_student_starts_as_the_teachers_denoiser(kind, request):
    model_dir, _ = request.getfixturevalue(kind)
    teacher = load_teacher(model_dir, "edm", "test")
    module = ConsistencyDistillation(teacher, ConsistencyConfig())
    obs = batch_of(1.0, 4)
    x = torch.randn(4, 8, 8) * 3.0
    t = torch.full((4,), 3.0)
    with torch.no_grad():
        cond = teacher.model.encode(obs)
        expected = teacher.model.edm_denoiser(x, t, cond)
        for s in (0.0, 0.5, 2.0):  # the s columns start at zero: g ignores s
            got = module.student.denoise(x, t, torch.full((4,), s), cond)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # G(x_t, t, t) = x_t: a jump to the same level goes nowhere
        torch.testing.assert_close(module.student(x, t, t, cond), x)


@pytest.mark.parametrize("steps", [1, 3])
def test_consistency_distils_end_to_end(edm_teacher, tmp_path, steps):
    model_dir, dataset = edm_teacher
    out = tmp_path / "cp"
    result = distill_consistency(str(model_dir), str(dataset), str(out), ConsistencyConfig(), settings(15))
    assert np.isfinite(result.final_loss)
    policy = load_policy(out, steps=steps)
    assert policy.policy_type == "consistency" and policy.nfe == steps
    chunk = policy.act(obs_of(1.0))
    assert chunk.shape == (8, 8) and np.all(np.isfinite(chunk))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["provenance"]["teacher"] == str(model_dir.resolve())
    with pytest.raises(ConfigError, match="not a sampler"):
        load_policy(out, sampler="ddim")


@pytest.mark.parametrize("kind", ["edm_teacher", "vp_teacher"])
def test_onnxruntime_engine_matches_eager_for_three_steps(kind, request, tmp_path):
    pytest.importorskip("onnxruntime")
    from fastdp_ros.engines import load_engine_policy

    model_dir, dataset = request.getfixturevalue(kind)
    out = tmp_path / "cp"
    distill_consistency(str(model_dir), str(dataset), str(out), ConsistencyConfig(inference_steps=3), settings(2))
    eager = load_policy(out, seed=2)
    engine = load_engine_policy(out, backend="onnxruntime", seed=2, threads=1)
    assert engine.nfe == 3
    np.testing.assert_allclose(engine.act(obs_of(-1.0)), eager.act(obs_of(-1.0)), atol=1e-4)


class PreferFirstJointUp(torch.nn.Module):
    """A reward that only likes a larger first joint target."""

    def forward(self, cond, action):
        return action[:, 0]


def test_reward_term_moves_actions_toward_the_reward(edm_teacher, tmp_path):
    model_dir, dataset = edm_teacher
    plain, rewarded = tmp_path / "plain", tmp_path / "rewarded"
    torch.manual_seed(0)
    distill_ractd(str(model_dir), str(dataset), str(plain), RACTDConfig(reward_weight=0.0, lr=1e-3),
                  settings(60), reward_model=PreferFirstJointUp())
    torch.manual_seed(0)
    distill_ractd(str(model_dir), str(dataset), str(rewarded), RACTDConfig(reward_weight=5.0, lr=1e-3),
                  settings(60), reward_model=PreferFirstJointUp())

    def first_joint(path):
        policy = load_policy(path, seed=0)
        assert policy.policy_type == "ractd"
        return np.mean([policy.act(obs_of(s))[1, 0] for s in (1.0, -1.0) for _ in range(4)])

    assert first_joint(rewarded) > first_joint(plain) + 0.05


def test_ractd_fits_a_reward_model_and_records_it(edm_teacher, tmp_path):
    model_dir, dataset = edm_teacher
    out = tmp_path / "ractd"
    distill_ractd(str(model_dir), str(dataset), str(out), RACTDConfig(), settings(3), reward_steps=20)
    prov = json.loads((out / "config.json").read_text())["provenance"]
    assert prov["reward_fit_steps"] == 20 and np.isfinite(prov["reward_fit_loss"])
    assert "reward_datasets" not in prov and prov["reward_discount"] == 0.0


def test_discounted_returns_stay_within_their_episode():
    reward = np.array([1.0, 2.0, 4.0, 10.0, 20.0], np.float32)
    ends = np.array([3, 5])
    np.testing.assert_allclose(discounted_returns(reward, ends, 0.0), reward)
    np.testing.assert_allclose(discounted_returns(reward, ends, 0.5), [1 + 1 + 1, 2 + 2, 4, 10 + 10, 20])


def test_ractd_fits_its_reward_model_on_other_datasets(edm_teacher, tmp_path):
    model_dir, dataset = edm_teacher
    mixed, rollouts = make_dataset(tmp_path / "mixed"), make_dataset(tmp_path / "rollouts", n_episodes=2, seed=3)
    out = tmp_path / "ractd"
    distill_ractd(str(model_dir), str(dataset), str(out), RACTDConfig(), settings(2), reward_steps=5,
                  reward_datasets=[str(mixed), str(rollouts)], reward_discount=0.9)
    prov = json.loads((out / "config.json").read_text())["provenance"]
    assert prov["reward_datasets"] == [str(mixed.resolve()), str(rollouts.resolve())]
    assert prov["dataset"] == str(Path(dataset).resolve()) and prov["reward_discount"] == 0.9
    with pytest.raises(ConfigError, match="discount"):
        distill_ractd(str(model_dir), str(dataset), str(tmp_path / "x"), RACTDConfig(), settings(1),
                      reward_datasets=str(mixed), reward_discount=1.0)
    # a reward dataset without rewards, or with other observations, fails before any training
    for bad, match in ((make_dataset(tmp_path / "no_reward", rewards=False), "reward"),
                       (make_dataset(tmp_path / "lowdim", images=False), "img_front")):
        with pytest.raises(DatasetError, match=match):
            distill_ractd(str(model_dir), str(dataset), str(tmp_path / "x"), RACTDConfig(), settings(1),
                          reward_datasets=str(bad))
    # rewards recorded with and without the simulation's step cost do not mix
    costly = make_dataset(tmp_path / "costly", attrs={"step_cost": 1.0})
    with pytest.raises(DatasetError, match="step costs"):
        distill_ractd(str(model_dir), str(dataset), str(tmp_path / "x"), RACTDConfig(), settings(1),
                      reward_datasets=[str(mixed), str(costly)])
    assert not (tmp_path / "x").exists()


def test_bad_input_fails_before_training(edm_teacher, tmp_path):
    model_dir, dataset = edm_teacher
    ddpm_dir, _ = train_tiny(tmp_path / "ddpm", steps=2)
    with pytest.raises(ConfigError, match="needs a edm teacher"):
        distill_consistency(str(ddpm_dir), str(dataset), str(tmp_path / "a"), ConsistencyConfig(), settings(1))
    lowdim = make_dataset(tmp_path / "lowdim", images=False)
    with pytest.raises(DatasetError, match="img_front"):
        distill_consistency(str(model_dir), str(lowdim), str(tmp_path / "b"), ConsistencyConfig(), settings(1))
    no_reward = make_dataset(tmp_path / "no_reward", rewards=False)
    with pytest.raises(DatasetError, match="reward"):
        distill_ractd(str(model_dir), str(no_reward), str(tmp_path / "c"), RACTDConfig(), settings(1))
    assert not any((tmp_path / d).exists() for d in "abc")


def test_ragdp_on_a_consistency_student(edm_teacher, tmp_path):
    """RAGDP's VE variant stacked on the student: 1/20 is one jump from the retrieved chunk;
    leap ratio 1 is the student's own chain."""
    pytest.importorskip("faiss")
    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.policies.ragdp import STUDENT_CHAIN_LEVELS, RAGDPConfig, RAGDPPolicy, build_ragdp

    model_dir, dataset = edm_teacher
    student = tmp_path / "cp"
    distill_consistency(str(model_dir), str(dataset), str(student), ConsistencyConfig(), settings(3))
    build_ragdp(student, dataset, tmp_path / "rag", RAGDPConfig(leap_ratio=1 / 20), show_progress=False)
    rag = load_policy(tmp_path / "rag")
    assert rag.base.noise_family == "ve" and rag.nfe == 1
    buf = ReplayBuffer.open(dataset)
    episode = buf.get_episode(0, ["img_front", "joint_pos", "gripper", "action"])
    obs = {k: episode[k][4:6] for k in ("img_front", "joint_pos", "gripper")}
    chunk = rag.act(obs)
    assert rag.last_retrieval["score"] < 1e-6
    # the last of the chain's 20 levels is sigma = 0.006 (normalized units): the retrieved chunk
    # comes back nearly untouched (the other episodes' chunks are >= 0.2 away)
    np.testing.assert_allclose(chunk, episode["action"][4:12], atol=0.05)

    full = RAGDPPolicy.from_model_dir(tmp_path / "rag", leap_ratio=1.0)
    plain = load_policy(student, steps=STUDENT_CHAIN_LEVELS)
    assert full.nfe == plain.nfe == STUDENT_CHAIN_LEVELS
    tensors = {k: torch.from_numpy(v)[None] for k, v in obs.items()}
    noise = torch.randn(1, 8, 8)
    step_noise = torch.randn(STUDENT_CHAIN_LEVELS - 1, 1, 8, 8)
    with torch.no_grad():
        expected = plain.graph(tensors, noise, step_noise)
        model = full.model
        got = full.refiner(model.encode(tensors), torch.zeros(1, 8, 8), noise, step_noise,
                           model.action_reference(tensors))
    torch.testing.assert_close(got, expected)
