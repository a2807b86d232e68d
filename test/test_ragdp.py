"""RAGDP: retrieval + partial denoising with the teacher; leap ratio, NFE, variants, bad input."""

import logging
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("faiss")

from fastdp_ros.cli.main import main  # noqa: E402
from fastdp_ros.data import ReplayBuffer  # noqa: E402
from fastdp_ros.errors import DatasetError, ModelFileError  # noqa: E402
from fastdp_ros.policies import load_policy  # noqa: E402
from fastdp_ros.policies.dp import DiffusionPolicyConfig, train_diffusion_policy  # noqa: E402
from fastdp_ros.policies.ragdp import (  # noqa: E402
    RAGDPConfig,
    RAGDPPolicy,
    build_ragdp,
    leap_start_index,
    parse_leap_ratio,
)
from fastdp_ros.policies.training import TrainSettings  # noqa: E402

H = 16  # image side
T = 12  # frames per episode


def make_dataset(path, n_episodes=4, size=H):
    """Episodes whose frames differ (joints move with time, the sign alternates by episode)."""
    rng = np.random.default_rng(0)
    buf = ReplayBuffer.create(path, attrs={"task": "push", "dt": 0.1, "robot": "panda"})
    for e in range(n_episodes):
        sign = 1.0 if e % 2 == 0 else -1.0
        t = np.linspace(0, 1, T, dtype=np.float32) * (1 + 0.1 * e)
        joint = np.stack([sign * t] * 7, axis=1).astype(np.float32)
        img = np.zeros((T, size, size, 3), np.uint8)
        img[..., 0] = 255 if sign > 0 else 0
        buf.add_episode({
            "img_front": img + rng.integers(0, 5, img.shape, dtype=np.uint8),
            "joint_pos": joint, "gripper": np.full((T, 1), 0.04, np.float32),
            "action": np.concatenate([joint + 0.1 * sign, np.full((T, 1), 0.04, np.float32)], 1),
        }, episode_seed=e, episode_success=True)
    return path


def make_teacher(path, dataset, **cfg):
    base = dict(feature_dim=8, num_keypoints=4, down_dims=(16, 32), diffusion_step_embed_dim=8, n_groups=4,
                crop_ratio=1.0, sampler="ddim", num_inference_steps=10)
    base.update(cfg)
    settings = TrainSettings(steps=2, batch_size=8, lr=1e-3, warmup_steps=1, val_every=10**6, ckpt_every=10**6)
    train_diffusion_policy(str(dataset), str(path), DiffusionPolicyConfig(**base), settings,
                           image_keys=("img_front",), horizon=8, n_obs_steps=2, n_action_steps=4, val_ratio=0.0)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ragdp")
    ds = make_dataset(root / "ds")
    teacher = make_teacher(root / "dp", ds)
    # the command line path: `fastdp index`
    assert main(["index", "--policy", "ragdp", "--teacher", str(teacher), "--dataset", str(ds),
                 "--out", str(root / "rag"), "--leap", "1/10"]) == 0
    torch.set_num_threads(n)
    return {"root": root, "ds": ds, "teacher": teacher, "rag": root / "rag"}


def observation(buffer, episode, frame):
    """The policy observation of a dataset frame (its window, first frame repeated)."""
    data = buffer.get_episode(episode, ["img_front", "joint_pos", "gripper"])
    rows = np.clip(np.arange(frame - 1, frame + 1), 0, None)
    return {k: v[rows] for k, v in data.items()}


def expected_chunk(buffer, episode, frame, horizon=8):
    actions = buffer.get_episode(episode, ["action"])["action"]
    return actions[np.clip(np.arange(frame - 1, frame - 1 + horizon), 0, len(actions) - 1)]


class CountCalls:
    """Counts forward calls of a module (network evaluations)."""

    def __init__(self, module):
        self.n = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *args):
        self.n += 1


def test_leap_arithmetic():
    assert parse_leap_ratio("1/10") == pytest.approx(0.1)
    assert parse_leap_ratio("5%") == pytest.approx(0.05)
    assert leap_start_index(100, 0.1) == 90
    assert leap_start_index(100, 1 / 20) == 95
    assert leap_start_index(100, 1.0) == 0
    assert leap_start_index(10, 0.01) == 9  # at least one step runs
    with pytest.raises(Exception, match="leap ratio"):
        parse_leap_ratio("0")


def test_model_dir_is_self_contained(models):
    import json

    cfg = json.loads((models["rag"] / "config.json").read_text())
    assert cfg["policy_type"] == "ragdp" and cfg["teacher"]["policy_type"] == "dp"
    assert cfg["teacher"]["path"] == str(models["teacher"].resolve()) and len(cfg["teacher"]["model_hash"]) == 16
    policy = load_policy(models["rag"])
    assert isinstance(policy, RAGDPPolicy)
    assert len(policy.index) == 4 * T  # one row per demonstration frame


@pytest.mark.parametrize("sampler, steps", [("ddim", 10), ("ddpm", None)])
def test_leap_ratio_one_is_the_plain_teacher(models, sampler, steps, one_torch_thread):
    buf = ReplayBuffer.open(models["ds"])
    teacher = load_policy(models["teacher"], sampler=sampler, steps=steps, seed=5)
    rag = RAGDPPolicy.from_model_dir(models["rag"], sampler=sampler, steps=steps, leap_ratio=1.0, seed=5)
    assert rag.nfe == teacher.nfe
    for frame in (0, 7):
        obs = observation(buf, 1, frame)
        np.testing.assert_array_equal(rag.act(obs), teacher.act(obs))


@pytest.mark.parametrize("leap, nfe", [(0.1, 10), (1 / 20, 5), (0.5, 50)])
def test_leap_ratio_sets_the_network_evaluations(models, leap, nfe, one_torch_thread):
    rag = RAGDPPolicy.from_model_dir(models["rag"], leap_ratio=leap)  # DDIM over all 100 training steps
    assert rag.nfe == nfe
    counter = CountCalls(rag.model.unet)
    rag.act(observation(ReplayBuffer.open(models["ds"]), 0, 3))
    assert counter.n == nfe


def test_retrieves_the_training_frame_and_keeps_it_when_little_noise_remains(models, one_torch_thread):
    buf = ReplayBuffer.open(models["ds"])
    rag = RAGDPPolicy.from_model_dir(models["rag"], leap_ratio=0.01)  # only the last step: t = 0
    assert rag.nfe == 1
    for episode, frame in ((0, 0), (2, 5), (3, T - 1)):
        chunk = rag.act(observation(buf, episode, frame))
        assert rag.last_retrieval["episode"] == episode and rag.last_retrieval["frame"] == frame
        assert rag.last_retrieval["score"] < 1e-6
        # sqrt(1 - abar_0) ~ 0.03 of noise, then one step whose (untrained) epsilon estimate
        # removes it only roughly: errors of a few hundredths in normalized units
        error = np.abs(chunk - expected_chunk(buf, episode, frame))
        assert error.mean() < 0.05 and error.max() < 0.2


def test_ve_variant_on_an_edm_teacher(models, one_torch_thread):
    root = models["root"]
    teacher = make_teacher(root / "dp_edm", models["ds"], noise_model="edm", sampler="edm", num_inference_steps=10)
    build_ragdp(teacher, models["ds"], root / "rag_edm", RAGDPConfig(leap_ratio=0.2), show_progress=False)
    rag = load_policy(root / "rag_edm")
    assert rag.base.noise_family == "ve"
    assert rag.nfe == 2 * 2 - 1  # Heun on the last 2 of 10 levels, Euler on the final one
    counter = CountCalls(rag.model.unet)
    buf = ReplayBuffer.open(models["ds"])
    rag.act(observation(buf, 1, 4))
    assert counter.n == rag.nfe
    # the last level is sigma_min = 0.002: the retrieved chunk comes back almost untouched
    last = RAGDPPolicy.from_model_dir(root / "rag_edm", leap_ratio=0.1)
    assert last.nfe == 1
    np.testing.assert_allclose(last.act(observation(buf, 2, 6)), expected_chunk(buf, 2, 6), atol=0.02)


def test_sampling_among_k_neighbours(models, one_torch_thread):
    buf = ReplayBuffer.open(models["ds"])
    rag = RAGDPPolicy.from_model_dir(models["rag"], k=3, choice="sample", seed=0)
    obs = observation(buf, 0, 6)
    found = rag.index.search(rag.encode(obs), 3)
    nearest = {(int(rag.index.table["episode"][i]), int(rag.index.table["frame"][i])) for i in found.ids[0]}
    picked = set()
    for _ in range(12):
        rag.act(obs)
        picked.add((rag.last_retrieval["episode"], rag.last_retrieval["frame"]))
    assert picked <= nearest and len(picked) > 1


def test_index_of_another_teacher_is_refused(models, one_torch_thread):
    root = models["root"]
    other = make_teacher(root / "dp_other", models["ds"], feature_dim=8, num_keypoints=4)
    build_ragdp(other, models["ds"], root / "rag_other", RAGDPConfig(), show_progress=False)
    mixed = root / "rag_mixed"
    shutil.copytree(models["rag"], mixed)
    shutil.rmtree(mixed / "index")
    shutil.copytree(root / "rag_other" / "index", mixed / "index")
    with pytest.raises(ModelFileError, match="built from embedding model"):
        load_policy(mixed)


def test_bad_datasets_are_clear_errors(models, tmp_path, caplog):
    with pytest.raises(DatasetError, match="does not match the model"):
        build_ragdp(models["teacher"], make_dataset(tmp_path / "big", size=32), tmp_path / "a", RAGDPConfig())
    with pytest.raises(DatasetError, match="1 demonstration episode"):
        build_ragdp(models["teacher"], make_dataset(tmp_path / "one", n_episodes=1), tmp_path / "b", RAGDPConfig())
    ReplayBuffer.create(tmp_path / "empty", attrs={"dt": 0.1})
    with pytest.raises(DatasetError, match="no episodes"):
        build_ragdp(models["teacher"], tmp_path / "empty", tmp_path / "c", RAGDPConfig())
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(["index", "--policy", "alt", "--teacher", str(models["teacher"]),
                     "--out", str(tmp_path / "d")]) == 2
        assert main(["index", "--policy", "ragdp", "--teacher", str(models["teacher"]),
                     "--out", str(models["teacher"])]) == 2
    assert "(alt is made by `fastdp train`)" in caplog.text and "teacher's own directory" in caplog.text


@pytest.mark.parametrize("case", ["ddim", "ddpm", "relative"])
def test_onnx_engine_runs_the_refining_loop_and_matches_eager_act(models, case, one_torch_thread):
    # the encoder and faiss run before the engine (act_through); the sampler loop is the graph
    pytest.importorskip("onnxruntime")
    from fastdp_ros.engines.policy import load_engine_policy

    root, options = models["root"], {}
    model = models["rag"]
    if case == "ddpm":  # stochastic: per-step noise is a graph input drawn in act()'s order
        options = {"sampler": "ddpm", "steps": 100, "leap_ratio": 0.05}
    elif case == "relative":  # actions relative to the joints: their current value is an input too
        teacher = make_teacher(root / "dp_rel", models["ds"], relative_to="joint_pos")
        model = build_ragdp(teacher, models["ds"], root / "rag_rel", RAGDPConfig(leap_ratio=0.5),
                            show_progress=False)
    eager = load_policy(model, seed=5, **options)
    engine = load_engine_policy(model, backend="onnxruntime", seed=5, threads=1, **options)
    assert engine.info.parity_max_abs_diff <= engine.info.parity_tolerance
    assert engine.nfe == eager.nfe > 0
    buf = ReplayBuffer.open(models["ds"])
    for episode, frame in [(0, 3), (1, 7), (2, 5)]:
        obs = observation(buf, episode, frame)
        np.testing.assert_allclose(engine.act(obs), eager.act(obs), atol=1e-4)
    assert engine.base.last_retrieval["episode"] == 2  # the retrieval ran in the engine's act() too
