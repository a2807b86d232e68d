"""Latent Weight Diffusion: trains through `fastdp train`, queries once per segment, exports, refuses bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdp_ros.cli.main import main
from fastdp_ros.errors import ConfigError
from fastdp_ros.nn.hypernet import functional_mlp, mlp_param_count
from fastdp_ros.policies import load_policy
from fastdp_ros.policies.lwd import LWDConfig, numpy_mlp
from test_dp import H, make_dataset, obs_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--segment-steps", "8", "--latent-dim", "4", "--policy-hidden", "16", "--hyper-hidden", "32",
        "--encoder-hidden", "32", "--denoiser-hidden", "32", "--denoiser-layers", "2", "--feature-dim", "8",
        "--num-keypoints", "4", "--crop-ratio", "1.0", "--latent-steps", "5", "--image-keys", "img_front",
        "--n-obs-steps", "2", "--batch-size", "16", "--lr", "1e-3", "--warmup-steps", "5",
        "--val-every", "1000000", "--ckpt-every", "1000000", "--threads", "1"]


def train_cli(dataset, out, steps, *extra):
    return main(["train", "--policy", "lwd", "--dataset", str(dataset), "--out", str(out), "--steps", str(steps),
                 *TINY, *extra])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lwd")
    ds = make_dataset(path / "ds")
    assert train_cli(ds, path / "model", 500) == 0
    torch.set_num_threads(threads)
    return path / "model", ds


def test_trained_policy_reads_the_observation_and_queries_once_per_segment(model):
    out, _ = model
    policy = load_policy(out, seed=0)
    assert policy.policy_type == "lwd" and policy.nfe == 5
    assert policy.spec.horizon == 3 and policy.spec.n_action_steps == 1
    assert policy.cost_report() == {"steps_per_query": 8, "generated_policy_parameters": mlp_param_count((9, 16, 8))}
    for sign in (1.0, -1.0):
        policy.reset()
        before = policy.queries
        chunk = None
        for _ in range(20):
            chunk = policy.act(obs_of(sign))
        assert policy.queries - before == 3  # steps 0, 8 and 16 query the latent diffusion
        assert chunk.shape == (3, 8) and np.all(chunk == chunk[-1])
        # the demonstrations' actions are the joints plus 0.1 * sign: the image says which sign
        offset = chunk[-1, :7] - obs_of(sign)["joint_pos"][-1]
        assert np.sign(offset.mean()) == sign, offset


def test_query_every_shortens_the_segment_and_is_checked(model):
    out, _ = model
    policy = load_policy(out, query_every=4)
    for _ in range(8):
        policy.act(obs_of(1.0))
    assert policy.queries == 2 and policy.cost_report()["steps_per_query"] == 4
    with pytest.raises(ConfigError, match="query_every"):
        load_policy(out, query_every=9)
    with pytest.raises(ConfigError, match="unknown LWD run-time options"):
        load_policy(out, sampler="ddim")


def test_noise_scale_zero_writes_one_policy_per_observation_in_eager_and_engine(model):
    pytest.importorskip("onnxruntime")
    from fastdp_ros.engines import load_engine_policy

    out, _ = model
    weights = [load_policy(out, seed=seed, noise_scale=0.0)._query(obs_of(1.0)) for seed in (0, 1)]
    np.testing.assert_array_equal(weights[0], weights[1])
    sampled = [load_policy(out, seed=seed)._query(obs_of(1.0)) for seed in (0, 1)]
    assert np.abs(sampled[0] - sampled[1]).max() > 1e-4  # the default still samples
    engines = [load_engine_policy(out, backend="onnxruntime", seed=seed, threads=1, noise_scale=0.0,
                                  cache_dir=out / "engines_t0") for seed in (0, 1)]
    eager = load_policy(out, seed=3, noise_scale=0.0).act(obs_of(1.0))
    for engine in engines:
        np.testing.assert_allclose(engine.act(obs_of(1.0)), eager, atol=1e-4)
    with pytest.raises(ConfigError, match="noise_scale"):
        load_policy(out, noise_scale=1.5)


def test_config_round_trips_and_the_build_option_is_not_stored(model):
    out, _ = model
    stored = json.loads((out / "config.json").read_text())["policy"]
    assert "init_encoder" not in stored
    assert LWDConfig.from_dict(stored).to_dict() == stored


def test_onnxruntime_engine_matches_eager_and_counts_queries(model):
    pytest.importorskip("onnxruntime")
    from fastdp_ros.engines import load_engine_policy

    out, _ = model
    eager = load_policy(out, seed=5)
    engine = load_engine_policy(out, backend="onnxruntime", seed=5, threads=1)
    for step in range(10):
        sign = 1.0 if step < 5 else -1.0
        np.testing.assert_allclose(engine.act(obs_of(sign)), eager.act(obs_of(sign)), atol=1e-4)
    assert engine.queries == eager.queries == 2
    engine.reset()
    engine.act(obs_of(1.0))
    assert engine.queries == 3


def test_generated_policy_exports_to_onnx(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out, _ = model
    policy = load_policy(out, seed=1)
    params = policy._query(obs_of(1.0))
    path = policy.export_generated_policy_onnx(tmp_path / "generated.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = np.random.default_rng(0).uniform(-1, 1, (5, policy.model.layer_sizes[0])).astype(np.float32)
    (onnx_out,) = session.run(None, {"state": state, "weights": params})
    expected = numpy_mlp(state, params, policy.model.layer_sizes, policy.config.policy_activation)
    np.testing.assert_allclose(onnx_out, expected, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4), activation=st.sampled_from(["mish", "relu", "tanh"]),
       seed=st.integers(0, 2**16))
def test_numpy_generated_policy_is_the_torch_one(sizes, activation, seed):
    rng = np.random.default_rng(seed)
    params = rng.normal(size=mlp_param_count(sizes)).astype(np.float32)
    x = rng.normal(size=(3, sizes[0])).astype(np.float32)
    expected = functional_mlp(torch.from_numpy(x), torch.from_numpy(params), sizes, activation).numpy()
    np.testing.assert_allclose(numpy_mlp(x, params, tuple(sizes), activation), expected, rtol=1e-4, atol=1e-5)


def test_bad_input_is_refused_before_training(tmp_path, caplog):
    ds = make_dataset(tmp_path / "ds", length=20)
    cases = [
        (["--lowdim-keys", ""], "reads low-dimensional observations"),
        (["--segment-steps", "21"], "longer than every episode"),
        (["--policy-hidden", "512,512"], "more than the bound"),
        (["--policy-keys", "object_state"], "not among --lowdim-keys"),
    ]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        caplog.clear()
        # a flag given again after TINY's overrides it
        assert main(["train", "--policy", "lwd", "--dataset", str(ds), "--out", str(out), "--steps", "5", *TINY,
                     *extra]) == 2
        assert message in caplog.text, (extra, caplog.text)
        assert not out.exists()


def test_image_encoder_starts_from_a_diffusion_policy(tmp_path, caplog):
    from test_dp import train_tiny

    teacher, _ = train_tiny(tmp_path, steps=2)
    ds = tmp_path / "ds"  # train_tiny's dataset
    out = tmp_path / "lwd"
    # the tiny teacher's encoder has 16 features and 8 keypoints (test_dp.tiny_config)
    assert main(["train", "--policy", "lwd", "--dataset", str(ds), "--out", str(out), "--steps", "2",
                 "--init-encoder", str(teacher), *TINY, "--feature-dim", "16", "--num-keypoints", "8"]) == 0
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["init_encoder"]["model"].endswith("model")
    # an encoder of another shape is refused before training
    bad = tmp_path / "bad"
    assert main(["train", "--policy", "lwd", "--dataset", str(ds), "--out", str(bad), "--steps", "2",
                 "--init-encoder", str(teacher), *TINY]) == 2
    assert "does not fit" in caplog.text and not (bad / "model.safetensors").exists()

    # --camera-inputs: the generated policy also reads the current frame's features, from the
    # teacher's encoder frozen; without an encoder to freeze it is refused before training
    assert main(["train", "--policy", "lwd", "--dataset", str(ds), "--out", str(tmp_path / "cam0"), "--steps", "2",
                 "--camera-inputs", *TINY]) == 2
    assert "--init-encoder" in caplog.text and not (tmp_path / "cam0").exists()
    cam = tmp_path / "cam"
    assert main(["train", "--policy", "lwd", "--dataset", str(ds), "--out", str(cam), "--steps", "20",
                 "--init-encoder", str(teacher), "--camera-inputs", *TINY, "--feature-dim", "16",
                 "--num-keypoints", "8"]) == 0
    policy = load_policy(cam)
    teacher_state = load_policy(teacher).model.obs_encoder.state_dict()
    for name, value in policy.model.obs_encoder.state_dict().items():
        torch.testing.assert_close(value.float(), teacher_state[name].float(), msg=name)  # frozen
    frame_dim = policy.model.frame_dim
    assert policy.model.layer_sizes[0] == 7 + 1 + frame_dim + 1  # joints, gripper, features, phase
    chunks = [policy.act(obs_of(1.0)) for _ in range(9)]
    assert policy.queries == 2 and np.all(np.isfinite(chunks))
    # the features the generated policy reads are the current frame's: another image, another action
    params = policy._params
    a = policy.generated_action(obs_of(1.0), params, 0, policy._frame_features(obs_of(1.0)))
    b = policy.generated_action(obs_of(1.0), params, 0, policy._frame_features(obs_of(-1.0)))
    assert not np.allclose(a, b)


def test_images_of_the_wrong_size_are_refused(model):
    out, _ = model
    policy = load_policy(out)
    obs = obs_of(1.0)
    obs["img_front"] = np.zeros((2, H + 1, H, 3), np.uint8)
    with pytest.raises(ValueError, match="img_front"):
        policy.act(obs)


def test_runs_closed_loop_in_the_simulation_through_the_runner(model, tmp_path):
    """`fastdp run` (the runner the ROS policy node shares): one query per segment, the generated
    policy on every step in between."""
    out, _ = model
    stats_path = tmp_path / "stats.json"
    assert main(["run", str(out), "--duration", "2", "--stats", str(stats_path), "--no-status", "--threads", "1",
                 "--camera-rate", "10"]) == 0
    stats = json.loads(stats_path.read_text())
    assert stats["policy_type"] == "lwd" and stats["ticks"] > 0
    assert stats["inference"]["completed"] > 0


def test_bench_times_the_calls_that_query_apart(model):
    from fastdp_ros.engines.bench import bench_one

    out, _ = model
    (row,) = bench_one(out, "torch", calls=40, warmup=0)
    assert row.error is None and row.costs["steps_per_query"] == 8
    assert row.costs["timed_queries"] == 5  # calls 0, 8, 16, 24, 32
    assert row.costs["query_p99_ms"] > 0


def test_latent_denoiser_can_predict_the_latent_and_old_models_keep_epsilon(model, tmp_path):
    out, ds = model
    torch.manual_seed(0)
    assert train_cli(ds, tmp_path / "x0", 500, "--latent-prediction", "sample") == 0
    policy = load_policy(tmp_path / "x0", seed=0)
    assert policy.model.make_sampler().prediction_type == "sample"
    for sign in (1.0, -1.0):  # the sampled latent still follows the image
        policy.reset()
        chunk = policy.act(obs_of(sign))
        assert np.sign((chunk[-1, :7] - obs_of(sign)["joint_pos"][-1]).mean()) == sign
    # a model written before the option existed has no such key: it loads as epsilon prediction
    old = tmp_path / "old"
    shutil.copytree(out, old)
    config = json.loads((old / "config.json").read_text())
    config["policy"].pop("latent_prediction")
    (old / "config.json").write_text(json.dumps(config))
    assert load_policy(old).model.train_sampler.prediction_type == "epsilon"
