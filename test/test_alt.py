"""ALT: contrastive encoder, exact lookup of stored chunks, calibrated OOD flag, bad input."""

import json
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("faiss")

from fastdp_ros.cli.main import main  # noqa: E402
from fastdp_ros.data import ReplayBuffer  # noqa: E402
from fastdp_ros.errors import ConfigError, DatasetError, ModelFileError  # noqa: E402
from fastdp_ros.policies import load_policy  # noqa: E402
from fastdp_ros.policies.alt import (  # noqa: E402
    ALTConfig,
    ALTPolicy,
    action_positive_weights,
    colour_jitter,
    nt_xent,
    patch_mask,
    random_resized_crop,
    rotate_hue,
    shift_frames,
    soft_nt_xent,
    train_alt,
    translate,
)
from fastdp_ros.policies.training import TrainSettings  # noqa: E402
from fastdp_ros.retrieval.ood import perturb_images  # noqa: E402

H = 16  # image side
T = 12  # frames per episode


def script_module(name: str):
    """Import scripts/<name>.py (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_dataset(path, n_episodes=6):
    """A red square that slides across a grey table along one of three rows; episodes e and e + 3
    differ only in the square's shade, so a held-out episode has a near twin in the table."""
    rng = np.random.default_rng(0)
    buf = ReplayBuffer.create(path, attrs={"task": "push", "dt": 0.1, "robot": "panda"})
    for e in range(n_episodes):
        img = np.full((T, H, H, 3), (150, 130, 100), np.uint8)
        for f in range(T):
            y, x = 2 + 4 * (e % 3), f
            img[f, y:y + 4, x:x + 4] = (220 - 30 * (e // 3), 40, 30)  # twins: a slightly darker square
        img = img + rng.integers(0, 4, img.shape, dtype=np.uint8)
        joint = np.tile(np.linspace(0, 1, T, dtype=np.float32)[:, None], (1, 7)) + 0.05 * (e % 3)
        action = np.concatenate([joint + 0.1, np.full((T, 1), 0.04, np.float32)], 1) + 0.01 * np.arange(T)[:, None]
        buf.add_episode({"img_front": img, "joint_pos": joint.astype(np.float32),
                         "gripper": np.full((T, 1), 0.04, np.float32), "action": action.astype(np.float32)},
                        episode_seed=e, episode_success=True)
    return path


ARGS = ["--image-keys", "img_front", "--lowdim-keys", "joint_pos,gripper", "--horizon", "8", "--n-obs-steps", "2",
        "--n-action-steps", "4", "--holdout-ratio", "0.2", "--alt-image-size", "16", "--embed-dim", "16",
        "--index-encoding", "float32"]  # exact similarities: a training frame finds itself, not its twin


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("alt")
    ds = make_dataset(root / "ds")
    out = root / "alt"
    assert main(["train", "--policy", "alt", "--dataset", str(ds), "--out", str(out), "--steps", "150",
                 "--batch-size", "32", "--lr", "3e-3", "--warmup-steps", "10", *ARGS]) == 0
    torch.set_num_threads(n)
    return {"root": root, "ds": ds, "out": out}


def observation(buffer, episode, frame):
    data = buffer.get_episode(episode, ["img_front", "joint_pos", "gripper"])
    rows = np.clip(np.arange(frame - 1, frame + 1), 0, None)
    return {k: v[rows] for k, v in data.items()}


def test_nt_xent_prefers_matching_views():
    z = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    other = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    assert nt_xent(z, z, 0.1) < nt_xent(z, other, 0.1)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 9), seed=st.integers(0, 2 ** 16), temperature=st.floats(0.05, 1.0))
def test_soft_nt_xent_with_identity_weights_is_nt_xent(n, seed, temperature):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.nn.functional.normalize(torch.randn(n, 5, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(n, 5, generator=g), dim=1)
    torch.testing.assert_close(soft_nt_xent(z1, z2, torch.eye(n), temperature), nt_xent(z1, z2, temperature))


def test_action_weights_pull_frames_with_like_chunks_together():
    chunks = torch.tensor([[0.0, 0.0], [0.0, 0.1], [1.0, 1.0]])
    w = action_positive_weights(chunks, 0.01, n_shifted=2)
    assert w.shape == (5, 5)
    torch.testing.assert_close(torch.diagonal(w), torch.ones(5))
    assert w[0, 1] > 0.5 and w[0, 2] < 1e-6  # like chunks: a positive; unlike: none
    torch.testing.assert_close(w[3:, :], torch.cat([torch.zeros(2, 3), torch.eye(2)], 1))  # shifted copies
    torch.testing.assert_close(w[:3, 3:], torch.zeros(3, 2))
    # frames 0 and 1 call for like chunks: the loss is lower when they embed together than apart
    e = torch.eye(3)
    together = torch.nn.functional.normalize(torch.stack([e[0], e[0] + 0.05 * e[1], e[2]]), dim=1)
    apart = e
    weights = action_positive_weights(chunks, 0.01)
    assert soft_nt_xent(together, together, weights, 0.1) < soft_nt_xent(apart, apart, weights, 0.1)


def test_augmentations_keep_shape_and_range():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 16, 16)
    crop = random_resized_crop(x, (0.5, 1.0), (0.8, 1.25))
    jitter = colour_jitter(x, 0.3, 0.3, 0.3, 0.1)
    assert crop.shape == x.shape and jitter.shape == x.shape
    assert 0.0 <= float(jitter.min()) and float(jitter.max()) <= 1.0
    # the identity crop returns the image
    torch.testing.assert_close(random_resized_crop(x, (1.0, 1.0), (1.0, 1.0)), x, atol=1e-5, rtol=0)


def test_shifted_negatives_turn_colours_and_move_the_camera():
    x = torch.zeros(1, 3, 16, 16)
    x[:, 0, 4:8, 4:8] = 1.0  # a red square
    moved = translate(x, torch.tensor([0.25]), torch.tensor([0.0]))
    torch.testing.assert_close(moved[:, :, 4:8, 8:12], x[:, :, 4:8, 4:8], atol=1e-5, rtol=0)  # 4 px right
    turned = rotate_hue(x, torch.tensor([1.0 / 3.0]))  # a third of a turn: red -> green
    torch.testing.assert_close(turned[:, 1], x[:, 0], atol=1e-5, rtol=0)
    torch.manual_seed(0)
    frames = {"img_front": torch.rand(6, 3, 16, 16), "img_wrist": torch.rand(6, 3, 16, 16)}
    shifted = shift_frames(frames, ALTConfig())
    for key, value in shifted.items():
        assert value.shape == frames[key].shape and 0.0 <= float(value.min()) and float(value.max()) <= 1.0
        assert torch.all((value - frames[key]).abs().flatten(1).amax(1) > 0.05)  # every copy really changed
    with pytest.raises(ConfigError, match="negative_hue"):
        ALTConfig(negative_hue=(0.2, 0.7))
    mask = patch_mask(50, 20, 20, (0.04, 0.04), "cpu")
    assert mask.shape == (50, 1, 20, 20)
    assert torch.all(mask.sum(dim=(1, 2, 3)) == 16)  # a 4 x 4 patch: 4% of 20 x 20


def test_model_directory_holds_table_threshold_and_report(model):
    cfg = json.loads((model["out"] / "config.json").read_text())
    assert cfg["policy_type"] == "alt"
    assert len(cfg["ood"]["calibration_episodes"]) == 1 and cfg["ood"]["quantile"] == 0.99
    assert sorted(cfg["table"]["episodes"] + cfg["ood"]["calibration_episodes"]) == list(range(6))
    assert cfg["table"]["frames"] == 5 * T
    report = json.loads((model["out"] / "ood_eval.json").read_text())
    assert set(report["perturbations"]) == {"cube_colour", "global_colour", "camera_shift", "noise", "unrelated"}
    assert all(0.0 <= v["auroc"] <= 1.0 for v in report["perturbations"].values())


def test_training_frame_returns_its_stored_chunk(model, one_torch_thread):
    buf = ReplayBuffer.open(model["ds"])
    policy = load_policy(model["out"])
    assert isinstance(policy, ALTPolicy) and policy.nfe == 1
    table_episodes = json.loads((model["out"] / "config.json").read_text())["table"]["episodes"]
    actions = {e: buf.get_episode(e, ["action"])["action"] for e in table_episodes}
    for episode, frame in ((table_episodes[0], 0), (table_episodes[1], 5), (table_episodes[-1], T - 1)):
        chunk = policy.act(observation(buf, episode, frame))
        want = actions[episode][np.clip(np.arange(frame - 1, frame + 7), 0, T - 1)]  # last action repeated
        np.testing.assert_array_equal(chunk, want)
        assert (policy.last_ood.episode, policy.last_ood.frame) == (episode, frame)
        assert policy.last_ood.score < 1e-2 and not policy.last_ood.flag


def test_k_nearest_lookup_blends_chunks_by_similarity(model, one_torch_thread):
    buf = ReplayBuffer.open(model["ds"])
    policy = load_policy(model["out"])
    obs = observation(buf, 4, 6)
    single = policy.act(obs)
    z = policy.encode(obs)
    found = policy.index.search(z, 3)
    policy.config.lookup_k = 3
    blended = policy.act(obs)
    w = np.exp((found.scores[0] - found.scores[0, 0]) / policy.config.lookup_temperature)
    want = np.tensordot(w / w.sum(), policy.chunks(found.ids[0]), axes=1)
    np.testing.assert_allclose(blended, want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(single, policy.chunks(found.ids[0, :1])[0])
    assert policy.last_ood.frame == int(policy.index.table["frame"][found.ids[0, 0]])  # OOD: the nearest frame
    chunks = policy.chunks(found.ids[0])
    assert np.all(blended >= chunks.min(0) - 1e-6) and np.all(blended <= chunks.max(0) + 1e-6)  # a convex blend


def test_alt_probe_measures_the_retrieved_chunks(model, tmp_path, one_torch_thread):
    probe = script_module("alt_probe")
    out = tmp_path / "probe.json"
    assert probe.main(["--dataset", str(model["ds"]), "--models", str(model["out"]), "--k", "1", "3",
                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    entry = report["models"][str(model["out"])]
    assert entry["holdout_frames"] == T and set(entry["by_k"]) == {"k=1", "k=3,t=0.01", "k=3,t=0.05"}
    assert entry["by_k"]["k=1"] == entry["retrieved"]  # the model's own lookup is k = 1
    for errors in (entry["retrieved"], *report["baselines"].values()):
        assert errors["error_rest"] is None  # episodes of 12 frames: all within the first 16
        assert all(np.isfinite(v) and v >= 0 for k, v in errors.items() if k not in ("keys", "error_rest"))
    # no cube state in this dataset: the baselines by joints only, and the floor of any table chunk
    assert set(report["baselines"]) == {"proprio", "proprio_relative", "best_chunk_in_table"}
    assert report["baselines"]["best_chunk_in_table"]["error"] <= entry["retrieved"]["error"] + 1e-6


def test_ood_flag_fires_on_an_unrelated_image(model, one_torch_thread):
    buf = ReplayBuffer.open(model["ds"])
    policy = load_policy(model["out"])
    holdout = json.loads((model["out"] / "config.json").read_text())["ood"]["calibration_episodes"][0]
    obs = observation(buf, holdout, 6)
    assert not policy.ood(obs).flag  # an unseen episode of the same task
    board = perturb_images(obs["img_front"], "unrelated", np.random.default_rng(0))
    verdict = policy.ood({**obs, "img_front": board})
    assert verdict.flag and verdict.score > policy.threshold
    assert policy.ood_score({**obs, "img_front": board}) == pytest.approx(verdict.score)
    emb = policy.encode(obs)
    assert emb.shape == (16,) and np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)


def test_onnxruntime_engine_embeds_in_the_graph_and_looks_up_outside(model, tmp_path, one_torch_thread):
    pytest.importorskip("onnxruntime")
    from fastdp_ros.engines import load_engine_policy

    buf = ReplayBuffer.open(model["ds"])
    eager = load_policy(model["out"])
    engine = load_engine_policy(model["out"], "onnxruntime", cache_dir=tmp_path / "engines", threads=1)
    assert engine.info.built and engine.info.parity_max_abs_diff < 1e-4
    table_episodes = json.loads((model["out"] / "config.json").read_text())["table"]["episodes"]
    for episode, frame in ((table_episodes[0], 0), (table_episodes[-1], 7)):
        obs = observation(buf, episode, frame)
        np.testing.assert_array_equal(engine.act(obs), eager.act(obs))
        assert engine.base.last_ood.frame == eager.last_ood.frame == frame
        assert engine.base.last_ood.score == pytest.approx(eager.last_ood.score, abs=1e-4)


def test_reloaded_model_acts_identically_and_foreign_weights_are_refused(model, tmp_path):
    import shutil

    buf = ReplayBuffer.open(model["ds"])
    obs = observation(buf, 2, 3)
    np.testing.assert_array_equal(load_policy(model["out"]).act(obs), load_policy(model["out"]).act(obs))
    copy = tmp_path / "copy"
    shutil.copytree(model["out"], copy)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(copy / "model.safetensors"))
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, str(copy / "model.safetensors"))
    with pytest.raises(ModelFileError, match="built from embedding model"):
        load_policy(copy)


def test_too_few_episodes_and_bad_options(tmp_path, caplog):
    ds = make_dataset(tmp_path / "one", n_episodes=1)
    settings = TrainSettings(steps=1, batch_size=4)
    with pytest.raises(DatasetError, match="ALT needs at least 2"):
        train_alt(str(ds), str(tmp_path / "m"), ALTConfig(), settings, image_keys=("img_front",))
    with pytest.raises(Exception, match="holdout_ratio"):
        ALTConfig(holdout_ratio=0.0)
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(["eval", str(tmp_path / "missing")]) == 2


def test_action_aware_training_and_relative_lookup(tmp_path, one_torch_thread):
    """--action-temperature trains on the chunks; --relative-lookup moves the retrieved chunk's
    joint targets to start from the current joints, eagerly and through ONNX Runtime alike."""
    ds = make_dataset(tmp_path / "ds")
    out = tmp_path / "alt"
    assert main(["train", "--policy", "alt", "--dataset", str(ds), "--out", str(out), "--steps", "20",
                 "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "2", "--action-temperature", "0.01",
                 "--lookup-k", "4", "--lookup-temperature", "0.05", "--relative-lookup", *ARGS]) == 0
    cfg = json.loads((out / "config.json").read_text())["policy"]
    assert (cfg["action_temperature"], cfg["lookup_k"], cfg["lookup_temperature"], cfg["relative_to"]) == (
        0.01, 4, 0.05, "joint_pos")
    buf = ReplayBuffer.open(ds)
    policy = load_policy(out)
    obs = observation(buf, 1, 4)
    chunk = policy.act(obs)
    assert chunk.shape == (8, 8) and np.all(np.isfinite(chunk))
    z = policy.encode(obs)
    delta = np.linspace(-0.05, 0.05, 7, dtype=np.float32)
    moved = policy.chunk_for(z, obs["joint_pos"][-1] + delta)
    np.testing.assert_allclose(moved[:, :7], chunk[:, :7] + delta, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(moved[:, 7], chunk[:, 7])  # the gripper stays absolute
    # one nearest frame: a training frame gets its own chunk back (its joints are its base)
    policy.config.lookup_k = 1
    table_episode = json.loads((out / "config.json").read_text())["table"]["episodes"][0]
    want = buf.get_episode(table_episode, ["action"])["action"][np.clip(np.arange(4, 12), 0, T - 1)]
    np.testing.assert_allclose(policy.act(observation(buf, table_episode, 5)), want, rtol=0, atol=1e-6)
    pytest.importorskip("onnxruntime")
    from fastdp_ros.engines import load_engine_policy

    engine = load_engine_policy(out, "onnxruntime", cache_dir=tmp_path / "engines", threads=1)
    np.testing.assert_allclose(engine.act(obs), load_policy(out).act(obs), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="lookup_k"):
        ALTConfig(lookup_k=0)
    with pytest.raises(ConfigError, match="relative lookup"):
        train_alt(str(ds), str(tmp_path / "m"), ALTConfig(relative_to="joint_pos"), TrainSettings(steps=1),
                  image_keys=("img_front",), lowdim_keys=("gripper",))


def test_alt_trains_and_acts_without_cameras(tmp_path, one_torch_thread):
    """A dataset without cameras (e.g. an imported robomimic state dataset): no shifted image
    negatives, and an OOD evaluation with low-dimensional perturbations."""
    ds = make_dataset(tmp_path / "ds")
    out = tmp_path / "alt"
    args = [a if a != "img_front" else "" for a in ARGS]
    assert main(["train", "--policy", "alt", "--dataset", str(ds), "--out", str(out), "--steps", "20",
                 "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "2", *args]) == 0
    report = json.loads((out / "ood_eval.json").read_text())
    assert set(report["perturbations"]) == {"state_offset", "state_noise"}
    assert "no cameras" in report["perturbation_notes"]
    # the offset moves states beside the demonstrations': the nearest-neighbour score sees it
    assert report["perturbations"]["state_offset"]["auroc"] > 0.5
    buf = ReplayBuffer.open(ds)
    policy = load_policy(out)
    assert policy.spec.image_keys == ()
    obs = {k: np.stack([buf.get_episode(0, [k])[k][3]] * 2) for k in ("joint_pos", "gripper")}
    chunk = policy.act(obs)
    assert chunk.shape == (8, 8) and np.all(np.isfinite(chunk))


def test_camera_feature_monitor_is_built_and_calibrated_by_the_script(model, tmp_path, one_torch_thread):
    """scripts/calibrate_ood.py --camera-table: the demonstrations' per-camera features beside the
    monitor model, the threshold calibrated for that score, and the monitor the nodes build."""
    import shutil

    from fastdp_ros.runtime.ood import (CALIBRATION_FILE, CAMERA_TABLE_FILE, CameraFeatureMonitor, ModelScoreMonitor,
                                        model_monitor)

    monitor_dir = tmp_path / "monitor"
    shutil.copytree(model["out"], monitor_dir)
    rollouts = make_dataset(tmp_path / "rollouts", n_episodes=10)  # stands in for closed-loop rollouts
    script = script_module("calibrate_ood")
    assert script.main(["--monitor", str(monitor_dir), "--rollouts", str(rollouts), "--camera-table", str(model["ds"]),
                        "--camera-frames", "40"]) == 0
    report = json.loads((monitor_dir / CALIBRATION_FILE).read_text())
    assert report["score"] == "camera features" and report["camera_table"]["frames"] == {"img_front": 40}
    assert report["calibration"]["stops_at_threshold"] == 0

    monitor = model_monitor(load_policy(monitor_dir), monitor_dir, debounce=2)
    assert isinstance(monitor, CameraFeatureMonitor) and monitor.threshold == pytest.approx(report["threshold"])
    holdout = json.loads((model["out"] / "config.json").read_text())["ood"]["calibration_episodes"][0]
    obs = observation(ReplayBuffer.open(model["ds"]), holdout, 6)
    board = perturb_images(obs["img_front"], "unrelated", np.random.default_rng(0))
    assert monitor.score({**obs, "img_front": board}) > monitor.threshold >= monitor.score(obs)

    # a calibration of the other score is refused, both ways
    (monitor_dir / CALIBRATION_FILE).write_text(json.dumps({**report, "score": "model"}))
    with pytest.raises(ConfigError, match="calibrates the 'model' score.*--camera-table"):
        model_monitor(load_policy(monitor_dir), monitor_dir)
    (monitor_dir / CALIBRATION_FILE).write_text(json.dumps(report))
    table = (monitor_dir / CAMERA_TABLE_FILE).read_bytes()
    (monitor_dir / CAMERA_TABLE_FILE).unlink()
    with pytest.raises(ConfigError, match="calibrates the 'camera features' score"):
        model_monitor(load_policy(monitor_dir), monitor_dir)
    (monitor_dir / CALIBRATION_FILE).unlink()
    assert isinstance(model_monitor(load_policy(monitor_dir), monitor_dir), ModelScoreMonitor)
    (monitor_dir / CAMERA_TABLE_FILE).write_bytes(table[:100])
    with pytest.raises(ConfigError, match="is not a camera feature table"):
        model_monitor(load_policy(monitor_dir), monitor_dir)


def test_a_knn_monitor_is_calibrated_per_hour_by_the_script_and_checked_against_its_embeddings(
        model, tmp_path, one_torch_thread):
    """scripts/calibrate_ood.py --ood-dataset: any model's encoder + kNN to a dataset's training
    embeddings (the monitor node's ood_dataset), calibrated as the model scores are; a monitor
    over other embeddings refuses the calibration, and another score's calibration is left alone."""
    import shutil

    from fastdp_ros.runtime.ood import CALIBRATION_FILE, monitor_from_dataset

    monitor_dir = tmp_path / "monitor"
    shutil.copytree(model["out"], monitor_dir)
    rollouts = make_dataset(tmp_path / "rollouts", n_episodes=10)
    script = script_module("calibrate_ood")
    assert script.main(["--monitor", str(monitor_dir), "--rollouts", str(rollouts), "--ood-dataset", str(model["ds"]),
                        "--ood-samples", "30"]) == 0
    report = json.loads((monitor_dir / CALIBRATION_FILE).read_text())
    assert report["score"] == "knn" and report["embedded"]["samples"] == 30
    assert report["calibration"]["stops_at_threshold"] == 0

    monitor = monitor_from_dataset(load_policy(monitor_dir), model["ds"], samples=30, model_dir=monitor_dir)
    assert monitor.threshold == pytest.approx(report["threshold"]) and CALIBRATION_FILE in monitor.threshold_source
    with pytest.raises(ConfigError, match="other training embeddings"):
        monitor_from_dataset(load_policy(monitor_dir), model["ds"], samples=20, model_dir=monitor_dir)
    (monitor_dir / CALIBRATION_FILE).write_text(json.dumps({**report, "score": "model"}))
    kept = monitor_from_dataset(load_policy(monitor_dir), model["ds"], samples=30, model_dir=monitor_dir)
    assert kept.threshold_source.startswith("quantile")
    with pytest.raises(ConfigError, match="give one"):
        script.main(["--monitor", str(monitor_dir), "--rollouts", str(rollouts), "--ood-dataset", str(model["ds"]),
                     "--camera-table", str(model["ds"])])


def test_ood_feature_probe_reports_every_score(model, tmp_path, one_torch_thread):
    probe = script_module("ood_feature_probe")
    out = tmp_path / "probe.json"
    assert probe.main(["--monitor", str(model["out"]), "--dataset", str(model["ds"]), "--rollouts", str(model["ds"]),
                       "--train-frames", "40", "--nominal-frames", "30", "--ood-frames", "4", "--out", str(out)]) == 0
    scores = json.loads(out.read_text())["scores"]
    assert set(scores) == {"fused, img_front replaced", "camera_cos, img_front", "camera_l2z, img_front"}
    for row in scores.values():
        assert row["nominal_max"] >= row["nominal_p99"] >= 0
        for kind in ("noise", "solid", "unrelated"):
            assert row[kind]["separates"] == (row[kind]["min"] > row["nominal_max"])
