"""The policy registry: PolicyConfig's JSON round trip and checks, the flags generated from it,
the verbs' dispatch by name, capabilities, a policy added from another package (an entry point)
without editing the command line, and the stored configs of the shipped models."""

import json
import logging
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdp_ros.cli.main import build_parser, main
from fastdp_ros.cli.policy_options import config_from_args
from fastdp_ros.errors import ConfigError
from fastdp_ros.policies import base, load_policy
from fastdp_ros.policies.alt import ALTConfig
from fastdp_ros.policies.base import policies_with, policy_entry
from fastdp_ros.policies.config import PolicyConfig, option
from fastdp_ros.policies.consistency import ConsistencyConfig
from fastdp_ros.policies.dp import DiffusionPolicyConfig
from fastdp_ros.policies.onedp import OneDPConfig
from fastdp_ros.policies.ractd import RACTDConfig
from fastdp_ros.policies.ragdp import RAGDPConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ToyConfig(PolicyConfig):
    label: ClassVar[str] = "toy"

    width: int = option(8, help="a width")
    scale: float = option(0.5, help="a scale")
    name: str = option("a", help="a name")
    dims: tuple[int, ...] = option((4, 8), help="widths")
    pair: tuple[float, float] = option((0.1, 0.2), help="LO,HI")
    enabled: bool = option(False, help="a switch")
    note: str | None = option(None, help="optional text")
    report: str | None = option(None, stored=False, help="a build-time path")


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=200, deadline=None)
@given(width=st.integers(-10**9, 10**9), scale=finite, name=texts, dims=st.lists(st.integers(0, 4096), max_size=5),
       pair=st.tuples(finite, finite), enabled=st.booleans(), note=st.none() | texts, report=st.none() | texts)
def test_config_round_trips_through_json(width, scale, name, dims, pair, enabled, note, report):
    config = ToyConfig(width=width, scale=scale, name=name, dims=tuple(dims), pair=pair, enabled=enabled, note=note,
                       report=report)
    stored = json.loads(json.dumps(config.to_dict()))
    assert "report" not in stored  # a build-time option is not kept
    assert ToyConfig.from_dict(stored) == config.replace(report=None)


def test_unknown_keys_and_wrong_types_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"unknown Diffusion Policy options \['nope'\]"):
        DiffusionPolicyConfig.from_dict({"nope": 1})
    with pytest.raises(ConfigError, match="Diffusion Policy option 'feature_dim' must be an integer, got 'x'"):
        DiffusionPolicyConfig.from_dict({"feature_dim": "x"})
    with pytest.raises(ConfigError, match="'down_dims' must be a list of an integer"):
        DiffusionPolicyConfig.from_dict({"down_dims": ["a"]})
    with pytest.raises(ConfigError, match="'crop_scale' must be a list of 2 values"):
        ALTConfig.from_dict({"crop_scale": [0.5, 0.6, 0.7]})
    with pytest.raises(ConfigError, match="OneDP options must be a mapping"):
        OneDPConfig.from_dict([1, 2])
    with pytest.raises(ConfigError, match="'enabled' must be true or false"):
        ToyConfig.from_dict({"enabled": 3})


@pytest.mark.parametrize("model", ["push_dp", "push_onedp", "push_consistency", "push_alt", "push_alt_ood"])
def test_shipped_configs_read_back_as_stored(model):
    cfg = json.loads((ROOT / "models" / model / "config.json").read_text())
    stored = cfg["policy"]
    config = policy_entry(cfg["policy_type"]).config.from_dict(stored)
    again = config.to_dict()
    assert {k: again[k] for k in stored if k in again} == {k: v for k, v in stored.items() if k in again}
    if model == "push_consistency":  # written before RACTD had a config of its own
        assert stored["reward_weight"] == 0.0 and "reward_weight" not in again
    else:
        assert again.keys() >= stored.keys()


def test_format_differences_are_migrations_not_breaks():
    # DP's sampler and steps follow the noise model unless given, and are stored resolved
    assert (DiffusionPolicyConfig().sampler, DiffusionPolicyConfig().num_inference_steps) == ("ddpm", 100)
    edm = DiffusionPolicyConfig(noise_model="edm")
    assert (edm.sampler, edm.num_inference_steps) == ("edm", 18) and edm.to_dict()["sampler"] == "edm"
    assert "init_from" not in edm.to_dict()
    # a RACTD student's config keeps its reward weight; a consistency config refuses one
    ractd = RACTDConfig(reward_weight=0.5, reward_steps=3, reward_dataset=("a",)).to_dict()
    assert ractd["reward_weight"] == 0.5 and not {"reward_steps", "reward_dataset", "reward_discount"} & set(ractd)
    with pytest.raises(ConfigError, match="unknown consistency options"):
        ConsistencyConfig.from_dict(ractd)
    assert RACTDConfig.from_dict(ractd).reward_weight == 0.5
    # RAGDP keeps its index options under "index", as before
    rag = RAGDPConfig(index_kind="ivf", nlist=8, k=3, choice="sample")
    stored = rag.to_dict()
    assert stored["index"]["kind"] == "ivf" and stored["index"]["nlist"] == 8 and "index_kind" not in stored
    assert RAGDPConfig.from_dict(json.loads(json.dumps(stored))) == rag
    with pytest.raises(ConfigError, match="unknown RAGDP options"):
        RAGDPConfig.from_dict({**stored, "index": {**stored["index"], "depth": 3}})


def test_train_help_shows_the_policys_flags_and_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--policy", "dp", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("dp options (DiffusionPolicyConfig)", "--noise-model NOISE_MODEL ddpm (VP, epsilon) | edm",
                 "(default: ddpm)", "--relative-actions", "--init-from INIT_FROM", "(default: spatial_softmax)",
                 "--down-dims DOWN_DIMS"):
        assert text in out, text
    # --lr, --batch-size and --warmup-steps are the training run's own flags, not the config's twice
    assert out.count("--lr LR") == 2  # usage line and option list


def test_flags_fill_the_config(tmp_path):
    argv = ["distill", "--policy", "ractd", "--teacher", "t", "--dataset", "d", "--out", "o", "--reward-dataset",
            "a", "b", "--reward-weight", "0.3", "--bins", "20"]
    args = build_parser(argv).parse_args(argv)
    config = config_from_args(RACTDConfig, args)
    assert (config.reward_dataset, config.reward_weight, config.bins, config.lr) == (("a", "b"), 0.3, 20, 1e-4)
    argv = ["index", "--policy", "ragdp", "--teacher", "t", "--out", "o", "--leap", "5%", "--index", "hnsw"]
    config = config_from_args(RAGDPConfig, build_parser(argv).parse_args(argv))
    assert (config.leap_ratio, config.index_config().kind) == (0.05, "hnsw")
    argv = ["train", "--policy", "dp", "--dataset", "d", "--out", "o", "--noise-model", "edm", "--relative-actions"]
    config = config_from_args(DiffusionPolicyConfig, build_parser(argv).parse_args(argv), {"lr": 3e-4})
    assert (config.sampler, config.num_inference_steps, config.relative_to, config.lr) == ("edm", 18, "joint_pos",
                                                                                            3e-4)


@pytest.mark.parametrize("argv, message", [
    (["distill", "--policy", "nope", "--teacher", "t", "--dataset", "d", "--out", "o"],
     "`fastdp distill` makes consistency, onedp, ractd; got --policy 'nope'"),
    (["index", "--policy", "alt", "--teacher", "t", "--out", "o"], "(alt is made by `fastdp train`)"),
    (["train", "--policy", "onedp", "--dataset", "d", "--out", "o"], "(onedp is made by `fastdp distill`)"),
])
def test_a_verb_refuses_a_policy_it_does_not_make(argv, message, caplog):
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0], errors


def test_another_policys_flag_is_named_as_such(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--policy", "alt", "--dataset", "d", "--out", "o", "--init-from", "m"])
    assert done.value.code == 2
    assert "--init-from is an option of --policy dp, not of --policy alt" in capsys.readouterr().err


def test_capabilities_come_from_the_registrations():
    assert {"export_graph", "retrieval_base"} <= policy_entry("dp").capabilities
    assert policy_entry("alt").can("ood_score") and not policy_entry("dp").can("ood_score")
    assert [e.name for e in policies_with(capability="retrieval_base")] == ["consistency", "dp", "ractd"]
    assert [e.name for e in policies_with(verb="index")] == ["ragdp"]
    assert {"dp", "alt"} <= {e.name for e in policies_with(verb="train")}
    assert {"onedp", "consistency", "ractd"} <= {e.name for e in policies_with(verb="distill")}
    for entry in policies_with():  # the built-in ones (other test modules register toys of their own)
        if entry.cls.__module__.startswith("fastdp_ros.policies."):
            assert entry.cls.policy_type == entry.name and entry.config is not None and entry.summary


PLUGIN = '''
"""A policy from another package: one module, a PolicyConfig, a Policy subclass, a registration."""
from dataclasses import dataclass

import numpy as np
import torch

from fastdp_ros.policies.base import Policy, register_policy
from fastdp_ros.policies.config import PolicyConfig, option
from fastdp_ros.policies.modeldir import load_model_dir, save_model_dir
from fastdp_ros.policies.spec import PolicySpec


@dataclass
class MeanConfig(PolicyConfig):
    label = "mean action"
    gain: float = option(1.0, help="factor on the dataset's mean action")


def train(request):
    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.policies.dp import make_spec_from_dataset

    buffer = ReplayBuffer.open(request.dataset)
    spec = make_spec_from_dataset(buffer, request.image_keys, request.lowdim_keys, request.horizon,
                                  request.n_obs_steps, request.n_action_steps)
    mean = torch.as_tensor(np.asarray(buffer["action"][:]).mean(0), dtype=torch.float32)
    save_model_dir(request.out, MeanPolicy.policy_type, {"spec": spec.to_dict(), "policy": request.config.to_dict()},
                   {"mean": mean})
    return {"steps": 0, "action_dim": spec.action_dim}


@register_policy("mean_action", config=MeanConfig, train=train, summary="the dataset's mean action")
class MeanPolicy(Policy):
    def __init__(self, spec, config, mean):
        super().__init__(spec)
        self.config, self.mean = config, mean

    @property
    def nfe(self):
        return 0

    @classmethod
    def from_model_dir(cls, path, **options):
        files = load_model_dir(path)
        return cls(PolicySpec.from_dict(files.config["spec"]), MeanConfig.from_dict(files.config["policy"]),
                   files.state_dict["mean"].numpy())

    def _encode(self, obs):
        return np.zeros(1, np.float32)

    def _act(self, obs):
        return np.tile(self.mean * self.config.gain, (self.spec.horizon, 1))
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A package declaring a policy under the entry-point group, on the path; the registry and the
    discovery are restored afterwards."""
    site = tmp_path / "site"
    (site / "mean_action_policy-0.1.dist-info").mkdir(parents=True)
    (site / "mean_action_policy.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "mean_action_policy-0.1.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mean-action-policy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{base.ENTRY_POINT_GROUP}]\nmean_action = mean_action_policy\n")
    base.discover_policies()
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_discovered", False)
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("mean_action_policy", None)


def test_a_plugin_policy_trains_through_fastdp_train(plugin, tmp_path, capsys):
    from test_dp import make_dataset

    dataset = make_dataset(tmp_path / "ds", n_episodes=2, length=6, images=False)
    with pytest.raises(SystemExit):
        main(["train", "--policy", "mean_action", "--help"])
    assert "--gain GAIN" in capsys.readouterr().out
    out = tmp_path / "m"
    assert main(["train", "--policy", "mean_action", "--dataset", str(dataset), "--out", str(out), "--image-keys", "",
                 "--lowdim-keys", "joint_pos", "--horizon", "4", "--n-action-steps", "2", "--gain", "2"]) == 0
    policy = load_policy(out)
    assert policy.policy_type == "mean_action" and policy.config.gain == 2.0
    chunk = policy.act({"joint_pos": np.zeros((2, 7), np.float32)})
    assert chunk.shape == (4, 8)
    assert policy_entry("mean_action").capabilities == frozenset()
    with pytest.raises(ConfigError, match="cannot be exported"):
        policy.export_graph()
