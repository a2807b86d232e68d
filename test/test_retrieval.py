"""Retrieval layer: faiss index build/search/save/load, row tables, dataset checks, OOD helpers."""

import json

import numpy as np
import pytest

pytest.importorskip("faiss")

from fastdp_ros.data import ReplayBuffer  # noqa: E402
from fastdp_ros.errors import ConfigError, DatasetError, ModelFileError  # noqa: E402
from fastdp_ros.retrieval import (  # noqa: E402
    PERTURBATIONS,
    ActionChunks,
    EmbeddingIndex,
    IndexConfig,
    auroc,
    calibrate_threshold,
    check_dataset,
    embed_demonstrations,
    ood_evaluation,
    perturb_images,
)
from fastdp_ros.retrieval.index import INDEX_DIR, FAISS_FILE  # noqa: E402


def table_of(lengths, action_dim=2):
    """Row table of episodes with the given lengths; action = (episode, frame) for easy checks."""
    episode = np.concatenate([np.full(n, e, np.int32) for e, n in enumerate(lengths)])
    frame = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
    action = np.stack([episode, frame] + [frame] * (action_dim - 2), axis=1).astype(np.float32)
    return {"episode": episode, "frame": frame, "action": action}


def random_index(n=(40, 30, 50), dim=8, seed=0, **config):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sum(n), dim)).astype(np.float32)
    index = EmbeddingIndex.build(x, table_of(n), model_hash="abc", dataset_fingerprint="fp",
                                 config=IndexConfig(**config))
    return x, index


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_flat_index_returns_the_exact_row(metric):
    x, index = random_index(metric=metric)
    found = index.search(x, k=3)
    np.testing.assert_array_equal(found.ids[:, 0], np.arange(len(x)))
    # exact: the same neighbours as a brute-force search
    if metric == "l2":
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(found.ids, np.argsort(d, axis=1, kind="stable")[:, :3])
        np.testing.assert_allclose(found.scores, np.sort(d, axis=1)[:, :3], atol=1e-4)
    else:
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        np.testing.assert_allclose(found.scores[:, 0], 1.0, atol=1e-5)
        np.testing.assert_array_equal(found.ids, np.argsort(-(u @ u.T), axis=1, kind="stable")[:, :3])


def test_inner_product_matches_brute_force():
    x, index = random_index(metric="ip")
    q = np.random.default_rng(1).normal(size=(10, 8)).astype(np.float32)
    np.testing.assert_array_equal(index.search(q, 1).ids[:, 0], np.argmax(q @ x.T, axis=1))


def test_a_few_queries_search_on_one_thread_and_give_the_batch_answer():
    faiss = pytest.importorskip("faiss")
    x, index = random_index(metric="cosine")
    q = np.random.default_rng(2).normal(size=(20, 8)).astype(np.float32)
    batch = index.search(q, 3)  # more than FEW_QUERIES: faiss's own threading
    threads = faiss.omp_get_max_threads()
    for i in range(len(q)):
        one = index.search(q[i], 3)
        np.testing.assert_array_equal(one.ids[0], batch.ids[i])
        np.testing.assert_allclose(one.scores[0], batch.scores[i], atol=1e-6)
    assert faiss.omp_get_max_threads() == threads  # restored after every single-threaded search


@pytest.mark.parametrize("config", [dict(kind="ivf", nlist=4, nprobe=4), dict(kind="hnsw", ef_search=128),
                                    dict(encoding="float16"), dict(kind="ivf", nlist=3, nprobe=3, encoding="float16")])
def test_approximate_and_half_precision_kinds_find_the_training_row(config):
    x, index = random_index(**config)
    ids = index.search(x, 1).ids[:, 0]
    assert np.mean(ids == np.arange(len(x))) >= 0.98


def test_save_load_round_trip(tmp_path):
    x, index = random_index(kind="ivf", nlist=4, nprobe=2)
    index.save(tmp_path)
    loaded = EmbeddingIndex.load(tmp_path, expected_model_hash="abc", expected_dim=8)
    q = x[::7] + 0.01
    a, b = index.search(q, 4), loaded.search(q, 4)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    for key, value in index.table.items():
        np.testing.assert_array_equal(loaded.table[key], value)
    assert loaded.config == index.config and loaded.meta["dataset_fingerprint"] == "fp"
    # saving again replaces the folder whole
    index.save(tmp_path)
    assert sorted(p.name for p in (tmp_path / INDEX_DIR).iterdir()) == ["faiss.index", "index.json",
                                                                         "table.safetensors"]


def test_index_from_other_weights_is_refused(tmp_path):
    _, index = random_index()
    index.save(tmp_path)
    with pytest.raises(ModelFileError, match="built from embedding model abc"):
        EmbeddingIndex.load(tmp_path, expected_model_hash="def")
    with pytest.raises(ModelFileError, match="dim 16"):
        EmbeddingIndex.load(tmp_path, expected_dim=16)


def test_missing_or_corrupted_index_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="no retrieval index"):
        EmbeddingIndex.load(tmp_path)
    _, index = random_index()
    index.save(tmp_path)
    (tmp_path / INDEX_DIR / FAISS_FILE).write_bytes(b"not a faiss index at all")
    with pytest.raises(ModelFileError, match="cannot be read as a faiss index"):
        EmbeddingIndex.load(tmp_path)
    index.save(tmp_path)
    meta = json.loads((tmp_path / INDEX_DIR / "index.json").read_text())
    meta["rows"] += 1
    (tmp_path / INDEX_DIR / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="disagree"):
        EmbeddingIndex.load(tmp_path)


def test_empty_and_single_episode_are_refused():
    with pytest.raises(DatasetError, match="nothing to index"):
        EmbeddingIndex.build(np.zeros((0, 4), np.float32), {"episode": np.zeros(0, np.int32),
                             "frame": np.zeros(0, np.int32)}, model_hash="a", dataset_fingerprint="b")
    with pytest.raises(DatasetError, match="1 demonstration episode"):
        EmbeddingIndex.build(np.ones((5, 4), np.float32), table_of([5]), model_hash="a", dataset_fingerprint="b")


def test_bad_queries_and_options():
    _, index = random_index()
    with pytest.raises(ConfigError, match="dim 8"):
        index.search(np.zeros((1, 3), np.float32))
    with pytest.raises(ConfigError, match="k must be"):
        index.search(np.zeros(8, np.float32), k=0)
    with pytest.raises(ConfigError, match="index kind"):
        IndexConfig(kind="tree")


def test_action_chunks_pad_with_the_episode_edges():
    table = table_of([3, 5])
    chunks = ActionChunks(table, n_obs_steps=2, horizon=4)
    # row 0 = episode 0 frame 0: frames -1..2 -> 0, 0, 1, 2
    np.testing.assert_array_equal(chunks([0])[0, :, 1], [0, 0, 1, 2])
    # row 2 = episode 0 frame 2 (its last): frames 1..4 -> 1, 2, 2, 2; never episode 1's rows
    np.testing.assert_array_equal(chunks([2])[0], [[0, 1], [0, 2], [0, 2], [0, 2]])
    # row 5 = episode 1 frame 2: frames 1..4
    np.testing.assert_array_equal(chunks([5])[0, :, 1], [1, 2, 3, 4])
    broken = dict(table, frame=np.roll(table["frame"], 1))
    with pytest.raises(ModelFileError):
        ActionChunks(broken, 2, 4)


def small_buffer(path, lengths=(6, 4), size=8):
    buf = ReplayBuffer.create(path, attrs={"dt": 0.1})
    for e, n in enumerate(lengths):
        buf.add_episode({"img": np.full((n, size, size, 3), e, np.uint8),
                         "pos": np.arange(n, dtype=np.float32)[:, None] + 10 * e,
                         "action": np.stack([np.full(n, e), np.arange(n)], 1).astype(np.float32)})
    return buf


def test_embed_demonstrations_makes_one_row_per_frame(tmp_path):
    buf = small_buffer(tmp_path / "ds")
    seen = []

    def embed(obs):
        assert obs["img"].shape[1:] == (2, 8, 8, 3) and obs["pos"].shape[1:] == (2, 1)
        seen.append(obs["pos"][:, :, 0].copy())
        return obs["pos"][:, -1, :]  # the current frame's position

    z, table = embed_demonstrations(buf, [0, 1], ["img", "pos"], "action", 2, embed, batch_size=4,
                                    show_progress=False)
    assert z.shape == (10, 1)
    np.testing.assert_array_equal(table["episode"], [0] * 6 + [1] * 4)
    np.testing.assert_array_equal(table["frame"], list(range(6)) + list(range(4)))
    np.testing.assert_array_equal(z[:, 0], table["action"][:, 1] + 10 * table["episode"])
    first = np.concatenate(seen)[0]
    np.testing.assert_array_equal(first, [0, 0])  # the first frame repeated before the episode's start


def test_dataset_that_does_not_match_the_model(tmp_path):
    buf = small_buffer(tmp_path / "ds")
    check_dataset(buf, {"img": (8, 8, 3), "pos": (1,)}, ["img"], "action", 2)
    with pytest.raises(DatasetError, match="'img' has frames of shape"):
        check_dataset(buf, {"img": (16, 16, 3), "pos": (1,)}, ["img"], "action", 2)
    with pytest.raises(DatasetError, match="lacks"):
        check_dataset(buf, {"img": (8, 8, 3), "joint_pos": (7,)}, ["img"], "action", 2)
    with pytest.raises(DatasetError, match="acts in 7"):
        check_dataset(buf, {"img": (8, 8, 3)}, ["img"], "action", 7)
    empty = ReplayBuffer.create(tmp_path / "empty", attrs={"dt": 0.1})
    with pytest.raises(DatasetError, match="no episodes"):
        check_dataset(empty, {"img": (8, 8, 3)}, ["img"], "action", 2)


def test_auroc_on_toy_cases():
    assert auroc([0.1, 0.2, 0.3], [0.4, 0.5]) == 1.0
    assert auroc([0.4, 0.5], [0.1, 0.2, 0.3]) == 0.0
    assert auroc([1, 1, 1], [1, 1]) == 0.5
    # pairs (in, out): (.2, .5) (.2, .9) (.5, .9) ordered, (.5, .5) tied: (3 + 0.5) / 4
    assert auroc([0.2, 0.5], [0.5, 0.9]) == pytest.approx(0.875)
    # (.3, .2) reversed, (.3, .6) ordered: 1 / 2
    assert auroc([0.3], [0.2, 0.6]) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 30), rng.integers(2, 7, 20)  # many ties
    brute = np.mean([(y > x) + 0.5 * (y == x) for x in a for y in b])
    assert auroc(a, b) == pytest.approx(brute)
    with pytest.raises(ConfigError):
        auroc([], [1.0])


def test_calibrated_threshold_is_a_quantile():
    scores = np.arange(100, dtype=float)
    assert calibrate_threshold(scores, 0.99) == 99.0
    assert calibrate_threshold(scores, 0.5) == 50.0
    assert np.mean(scores > calibrate_threshold(scores, 0.9)) <= 0.1


def test_perturbations_keep_shape_and_change_the_image():
    rng = np.random.default_rng(0)
    img = rng.integers(60, 120, (2, 3, 32, 32, 3), dtype=np.uint8)
    img[..., 10:14, 10:14, :] = (220, 40, 30)  # a red cube
    for kind in PERTURBATIONS:
        out = perturb_images(img, kind, rng)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.any(out != img), kind
    cube = perturb_images(img, "cube_colour", rng)
    assert np.all(cube[..., 10:14, 10:14, :] == np.array([30, 40, 220], np.uint8))  # turned blue
    outside = np.ones(img.shape[:-1], bool)
    outside[..., 10:14, 10:14] = False
    np.testing.assert_array_equal(cube[outside], img[outside])


def test_ood_evaluation_separates_a_score_that_sees_the_change():
    rng = np.random.default_rng(0)
    obs = {"cam": rng.integers(100, 140, (40, 1, 16, 16, 3), dtype=np.uint8), "pos": np.zeros((40, 1, 2))}

    def score(batch):  # distance of the mean colour from the in-distribution mean grey
        return np.abs(batch["cam"].reshape(len(batch["cam"]), -1, 3).mean(1) - 120).sum(1)

    report = ood_evaluation(score, obs, ["cam"], threshold=5.0, kinds=["noise", "unrelated"])
    assert report["frames"] == 40 and report["in_distribution"]["flag_rate"] == 0.0
    assert report["perturbations"]["unrelated"]["auroc"] > 0.9
    assert 0.0 <= report["auroc_all"] <= 1.0
