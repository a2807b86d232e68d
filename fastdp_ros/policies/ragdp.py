"""RAGDP (arXiv 2507.21452): retrieval-augmented sampling of a pre-trained diffusion policy.

No training. `fastdp index` embeds every demonstration frame with the base model's own
observation encoder (its conditioning vector) into a faiss index. At run time act():

  1. embeds the observation with the same encoder,
  2. retrieves the nearest demonstration frame (or samples one of the k nearest, which keeps
     the demonstrations' multimodality) and reads its action chunk,
  3. noises that chunk to an intermediate step of the base sampler and runs only the
     remaining steps:
        VP (DDPM/DDIM teacher):  x_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps
        VE (EDM teacher, or a consistency / RACTD student):  x_sigma = a + sigma eps
     (the sampler's `noise_to_index` / `sample_from`).

The leap ratio is the fraction of the sampler's steps that is run: 1/10 of a 100-step DDIM
schedule runs its last 10 steps (NFE 10); leap ratio 1 is the plain base sampler from noise.
A student's sampler is its chain of jumps over STUDENT_CHAIN_LEVELS Karras levels: 1/20 is
one jump, from the retrieved chunk noised to the last level.

What is accelerated is a "retrieval base": something with an observation encoder, action
normalization, a denoising network and samplers offering noise_to_index/sample_from. Each
policy that can be one registers its loader (`register_policy(..., retrieval_base=fn)`: dp,
consistency, ractd); the retrieval, the index and the policy are the same for all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fastdp_ros.diffusion import FixedStepSampler
from fastdp_ros.errors import ConfigError, DatasetError, ModelFileError
from fastdp_ros.policies.base import BuildRequest, ExportGraph, FlatInputs, Policy, obs_batch, policies_with, policy_entry, register_policy
from fastdp_ros.policies.config import PolicyConfig, option
from fastdp_ros.policies.modeldir import WEIGHTS_FILE, ModelFiles, load_model_dir, model_hash, save_model_dir
from fastdp_ros.policies.spec import PolicySpec
from fastdp_ros.retrieval import (
    ActionChunks,
    EmbeddingIndex,
    IndexConfig,
    check_dataset,
    embed_demonstrations,
    file_hash,
)
from fastdp_ros.retrieval.index import ENCODINGS, GPU_MODES, INDEX_KINDS, METRICS

log = logging.getLogger(__name__)

CHOICES = ("nearest", "sample")


def parse_leap_ratio(text: str) -> float:
    """'1/10', '0.1' or '10%' -> 0.1."""
    text = str(text).strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"leap ratio {text!r} is not a number or fraction like 1/10") from None
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"leap ratio must be in (0, 1], got {text}")
    return value


#: RAGDPConfig's faiss index fields -> their IndexConfig names (config.json nests them as "index")
INDEX_FIELDS = {"index_kind": "kind", "metric": "metric", "encoding": "encoding", "nlist": "nlist",
                "nprobe": "nprobe", "hnsw_m": "hnsw_m", "ef_construction": "ef_construction",
                "ef_search": "ef_search", "index_gpu": "gpu"}


@dataclass
class RAGDPConfig(PolicyConfig):
    """RAGDP's options: saved into config.json (the index's under "index"), the flags of
    `fastdp index --policy ragdp`. The leap ratio, sampler and k are stored defaults; `fastdp eval`
    and the policy loader may override them."""

    label: ClassVar[str] = "RAGDP"

    leap_ratio: float = option(0.1, flag="--leap", parse=parse_leap_ratio,
                               help="fraction of the sampler's steps run after noising the retrieved chunk "
                                    "(1/10, 0.05, 5%)")
    sampler: str | None = option(None, help="ddim | ddpm | edm (None: DDIM over every training step for a DDPM "
                                            "teacher, the teacher's EDM schedule for an EDM one)")
    steps: int | None = option(None, help="length of the sampler's full schedule (before the leap)")
    k: int = option(1, help="neighbours retrieved")
    choice: str = option("nearest", choices=CHOICES, help="nearest | sample (uniformly among the k nearest)")
    # the faiss index (retrieval.IndexConfig)
    index_kind: str = option("flat", flag="--index", choices=INDEX_KINDS, help="faiss index kind")
    metric: str = option("l2", choices=METRICS, help="distance of the embeddings")
    encoding: str = option("float32", choices=ENCODINGS, help="stored vectors")
    nlist: int | None = option(None, help="IVF cells (None: about 4 sqrt(N))")
    nprobe: int = option(16, help="IVF cells searched per query")
    hnsw_m: int = option(32, help="HNSW neighbours per node")
    ef_construction: int = option(80, help="HNSW search width while building")
    ef_search: int = option(64, help="HNSW search width per query")
    index_gpu: str = option("auto", choices=GPU_MODES, help="auto: GPU faiss when available | off")

    def __post_init__(self):
        self.leap_ratio = float(self.leap_ratio)
        if not 0.0 < self.leap_ratio <= 1.0:
            raise ConfigError(f"leap ratio must be in (0, 1] (the fraction of steps run), got {self.leap_ratio}")
        if int(self.k) != self.k or self.k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {self.k}")
        self.k = int(self.k)
        if self.choice not in CHOICES:
            raise ConfigError(f"choice must be one of {CHOICES}, got {self.choice!r}")
        if self.choice == "nearest" and self.k > 1:
            log.debug("choice 'nearest' uses only the first of k=%d neighbours", self.k)
        self.index_config()  # validates

    def index_config(self) -> IndexConfig:
        return IndexConfig(**{name: getattr(self, field) for field, name in INDEX_FIELDS.items()})

    def to_dict(self) -> dict:
        d = {k: v for k, v in super().to_dict().items() if k not in INDEX_FIELDS}
        return {**d, "index": self.index_config().to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "RAGDPConfig":
        """config.json's form: the index options nested under "index" (IndexConfig's names)."""
        if not isinstance(d, dict) or not isinstance(d.get("index", {}), dict):
            raise ConfigError(f"RAGDP options and their 'index' must be mappings, got {d!r}")
        index = d.get("index", {})
        flat, unknown = sorted(set(d) & set(INDEX_FIELDS)), sorted(set(index) - set(INDEX_FIELDS.values()))
        if flat or unknown:
            raise ConfigError(f"unknown RAGDP options {flat + unknown}; the index options "
                              f"{sorted(INDEX_FIELDS.values())} go under 'index'")
        fields = {name: field for field, name in INDEX_FIELDS.items()}
        rest = {k: v for k, v in d.items() if k != "index"}
        return super().from_dict({**rest, **{fields[k]: v for k, v in index.items()}})


def leap_start_index(num_steps: int, leap_ratio: float) -> int:
    """First step run: the last max(1, round(leap_ratio * num_steps)) steps are kept."""
    keep = min(num_steps, max(1, int(math.floor(leap_ratio * num_steps + 0.5))))
    return num_steps - keep


# --- the model RAGDP accelerates ---------------------------------------------------------------


@dataclass
class RetrievalBase:
    """What RAGDP needs from the model it accelerates.

    model: an nn.Module with encode(obs) -> (B, D) conditioning (the retrieval embedding too),
        normalize_action / unnormalize_action, and make_sampler(name, steps) returning a
        sampler with noise_to_index, sample_from, nfe, num_steps and stochastic;
    denoise_net: the network the sampler drives (the denoise_fn convention);
    noise_family: "vp" or "ve" (which forward process noise_to_index applies);
    default_sampler: (name, steps) used when the RAGDP config names none;
    embed_dim: size of encode()'s output.
    """

    spec: PolicySpec
    model: nn.Module
    denoise_net: nn.Module
    noise_family: str
    default_sampler: tuple[str, int]
    embed_dim: int
    #: the base's own config.json entries RAGDP keeps so its model dir rebuilds the base
    config_entries: dict


#: levels of a consistency student's chain the leap ratio counts in: 1/20 runs one jump
STUDENT_CHAIN_LEVELS = 20


def load_base(files: ModelFiles, base_type: str) -> RetrievalBase:
    """The model of policy type `base_type` in `files`, by the retrieval_base its registration gives."""
    entry = policy_entry(base_type)
    if entry.retrieval_base is None:
        known = ", ".join(e.name for e in policies_with(capability="retrieval_base"))
        raise ConfigError(f"RAGDP accelerates {known} models, not {base_type!r} ({files.path})")
    return entry.retrieval_base(files)


def resolve_sampler(config: RAGDPConfig, base: RetrievalBase) -> tuple[str, int | None]:
    """(sampler name, schedule length): the configured ones, else the base's default. A named
    sampler without steps gets the default's length when it is the default's kind (so
    sampler=ddim alone means DDIM over all training steps), else the model's own default."""
    default_name, default_steps = base.default_sampler
    name = config.sampler or default_name
    if config.steps is not None:
        return name, int(config.steps)
    return name, default_steps if name == default_name else None


class RetrievalRefiner(nn.Module):
    """forward(cond, retrieved, noise[, step_noise]) -> refined chunk, all in robot units.

    Normalizes the retrieved chunk, noises it to step `start_index` of `sampler` and runs the
    remaining steps (start_index 0: plain sampling from `noise`, the retrieved chunk unused).
    Its loop has a fixed number of steps and no data-dependent branches, like the teacher's
    ActGraph (retrieval itself, a faiss search, stays outside it).
    """

    def __init__(self, base: RetrievalBase, sampler: nn.Module, start_index: int):
        super().__init__()
        self.model = base.model
        self.loop = FixedStepSampler(base.denoise_net, sampler, start_index)
        self.nfe = self.loop.nfe

    def forward(self, cond: torch.Tensor, retrieved: torch.Tensor, noise: torch.Tensor,
                step_noise: torch.Tensor | None = None, reference: torch.Tensor | None = None) -> torch.Tensor:
        """reference: the base model's action_reference(obs) (None for absolute actions)."""
        x0 = self.model.normalize_action(retrieved, reference)
        x0 = x0 if self.loop.start_index > 0 else None
        return self.model.unnormalize_action(self.loop(cond, noise, x0, step_noise), reference)


class _RefineModule(nn.Module):
    """RetrievalRefiner with its inputs as a dict (FlatInputs's convention)."""

    def __init__(self, refiner: RetrievalRefiner):
        super().__init__()
        self.refiner = refiner

    def forward(self, inputs: dict[str, torch.Tensor], noise: torch.Tensor,
                step_noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.refiner(inputs["cond"], inputs["retrieved"], noise, step_noise, inputs.get("reference"))


def index_from_request(request: BuildRequest) -> dict:
    """`fastdp index --policy ragdp`: build the model directory, then load it (proves it loads)."""
    out = build_ragdp(request.teacher, request.dataset, request.out, request.config,
                      max_episodes=request.max_episodes, batch_size=request.settings.batch_size,
                      device=request.device)
    policy = RAGDPPolicy.from_model_dir(out, device=request.device)
    return {"indexed_frames": len(policy.index), "nfe": policy.nfe}


@register_policy("ragdp", config=RAGDPConfig, index=index_from_request,
                 summary="RAGDP: retrieval-augmented sampling of a dp / consistency / ractd model, training-free")
class RAGDPPolicy(Policy):
    """Retrieve the nearest demonstration chunk, noise it part-way, finish with the base model."""

    def __init__(self, base: RetrievalBase, index: EmbeddingIndex, config: RAGDPConfig, seed: int = 0,
                 device: str = "cpu"):
        super().__init__(base.spec)
        self.config = config
        self.device = torch.device(device)
        self.base = base
        self.model = base.model.to(self.device).eval()
        name, steps = resolve_sampler(config, base)
        sampler = self.model.make_sampler(name, steps)
        self.start_index = leap_start_index(sampler.num_steps, config.leap_ratio)
        self.refiner = RetrievalRefiner(base, sampler, self.start_index).to(self.device).eval()
        self.index = index
        self.chunks = ActionChunks(index.table, base.spec.n_obs_steps, base.spec.horizon)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        #: the demonstration frame the last act() started from: episode, frame, score
        self.last_retrieval: dict | None = None
        log.info("RAGDP: %s sampler with %d steps, runs the last %d (NFE %d), %s variant, %d indexed frames",
                 name, sampler.num_steps, sampler.num_steps - self.start_index, self.nfe, base.noise_family,
                 len(index))

    @property
    def nfe(self) -> int:
        return self.refiner.nfe

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike, sampler: str | None = None, steps: int | None = None,
                       leap_ratio: float | None = None, k: int | None = None, choice: str | None = None,
                       seed: int = 0, device: str = "cpu") -> "RAGDPPolicy":
        """Load; sampler/steps/leap_ratio/k/choice override the stored RAGDP options."""
        files = load_model_dir(path)
        try:
            config = RAGDPConfig.from_dict(files.config["ragdp"])
            base_type = files.config["teacher"]["policy_type"]
        except (KeyError, TypeError) as e:
            raise ModelFileError(f"{files.path / 'config.json'} lacks {e}: not a RAGDP model") from None
        except ConfigError as e:
            raise ModelFileError(f"{files.path / 'config.json'}: {e}") from None
        overrides = {k: v for k, v in dict(sampler=sampler, steps=steps, leap_ratio=leap_ratio, k=k,
                                           choice=choice).items() if v is not None}
        config = dataclasses.replace(config, **overrides)
        base = load_base(files, base_type)
        index = EmbeddingIndex.load(path, expected_model_hash=file_hash(Path(path) / WEIGHTS_FILE),
                                    expected_dim=base.embed_dim)
        _check_index_layout(index, base.spec, path)
        if config.k > len(index):
            raise ConfigError(f"k={config.k} exceeds the {len(index)} indexed frames")
        return cls(base, index, config, seed=seed, device=device)

    @torch.inference_mode()
    def _encode(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.model.encode(obs_batch(obs, self.device))[0].cpu().numpy()

    def _choose(self, ids: np.ndarray) -> int:
        valid = ids[ids >= 0]
        if len(valid) == 0:
            raise ConfigError("the approximate index found no neighbour; raise nprobe / ef_search or use a flat index")
        if self.config.choice == "sample":
            return int(valid[self.rng.integers(len(valid))])
        return int(valid[0])

    @torch.inference_mode()
    def _retrieve(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The refiner's inputs besides noise: conditioning, retrieved chunk, action reference."""
        tensors = obs_batch(obs, self.device)
        cond = self.model.encode(tensors)
        found = self.index.search(cond.float().cpu().numpy(), self.config.k)
        row = self._choose(found.ids[0])
        position = int(np.flatnonzero(found.ids[0] == row)[0])
        self.last_retrieval = {"episode": int(self.index.table["episode"][row]),
                               "frame": int(self.index.table["frame"][row]),
                               "score": float(found.scores[0, position])}
        inputs = {"cond": cond, "retrieved": torch.from_numpy(self.chunks([row])).to(self.device)}
        reference = self.model.action_reference(tensors)
        if reference is not None:
            inputs["reference"] = reference
        return inputs

    def _noise_shapes(self) -> dict[str, tuple[int, ...]]:
        """The noise act() draws, in its order: the same draws as the teacher's act(), so leap
        ratio 1 reproduces it."""
        shape = (1, self.spec.horizon, self.spec.action_dim)
        shapes = {"noise": shape}
        sampler = self.refiner.loop.sampler
        if getattr(sampler, "stochastic", False):
            shapes["step_noise"] = (sampler.num_steps, *shape)
        return shapes

    @torch.inference_mode()
    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        inputs = self._retrieve(obs)
        noise = {name: torch.randn(shape, generator=self.generator, device=self.device)
                 for name, shape in self._noise_shapes().items()}
        return self.refiner(inputs["cond"], inputs["retrieved"], noise["noise"], noise.get("step_noise"),
                            inputs.get("reference"))[0].cpu().numpy()

    def act_through(self, obs: dict[str, np.ndarray], run_graph) -> np.ndarray:
        """Encoder and faiss search here, the refining sampler loop (the NFE) in the engine."""
        return run_graph({k: v[0].float().cpu().numpy() for k, v in self._retrieve(obs).items()})

    def export_graph(self) -> ExportGraph:
        """The refining sampler loop as the graph: (conditioning, retrieved chunk[, action
        reference], noise) -> chunk. The encoder and the search, which faiss does, run before it
        (act_through), as ALT's lookup runs after its encoder."""
        gen = torch.Generator().manual_seed(0)
        relative_dims = getattr(self.model, "relative_dims", 0)  # actions relative to an observed value
        keys = ("cond", "retrieved") + (("reference",) if relative_dims else ())
        examples = {"cond": torch.randn((1, self.base.embed_dim), generator=gen),
                    "retrieved": torch.from_numpy(self.chunks([0])).float()}
        if "reference" in keys:
            examples["reference"] = examples["retrieved"][:, 0, :relative_dims].clone()
        noise_shapes = self._noise_shapes()
        inputs = (*(examples[k] for k in keys), *(torch.randn(s, generator=gen) for s in noise_shapes.values()))
        inputs = tuple(t.to(self.device) for t in inputs)
        sampler = self.refiner.loop.sampler
        signature = {"policy": self.policy_type, "sampler": type(sampler).__name__, "steps": sampler.num_steps,
                     "start_index": self.start_index,
                     "inputs": {n: [list(t.shape), str(t.dtype)] for n, t in zip((*keys, *noise_shapes), inputs)}}
        module = FlatInputs(_RefineModule(self.refiner), keys).eval()
        return ExportGraph(module, keys, noise_shapes, inputs, signature)

    def memory_bytes(self) -> int:
        """Weights and buffers of the base model plus the index's vectors and row table."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        return int(sum(t.numel() * t.element_size() for t in tensors) + self.index.nbytes())


def _check_index_layout(index: EmbeddingIndex, spec: PolicySpec, path) -> None:
    want = {"n_obs_steps": spec.n_obs_steps, "horizon": spec.horizon, "action_dim": spec.action_dim}
    have = {k: index.meta.get(k) for k in want}
    if have != want:
        raise ModelFileError(f"the index in {path} was built for {have}, the policy has {want}; rebuild it")


# --- building a RAGDP model directory ------------------------------------------------------------


def build_ragdp(teacher: str | os.PathLike, dataset: str | os.PathLike | None, out: str | os.PathLike,
                config: RAGDPConfig, max_episodes: int | None = None, batch_size: int = 256,
                device: str = "cpu", show_progress: bool = True) -> Path:
    """Index `dataset`'s demonstrations with `teacher`'s encoder and write the RAGDP model `out`.

    `out` is self-contained: config.json (the teacher's spec, network and normalizer, the
    RAGDP options, the teacher's path and hash), a copy of the teacher's weights and index/.
    """
    from fastdp_ros.data import ReplayBuffer, dataset_fingerprint
    from fastdp_ros.policies.dp import demonstration_episodes

    teacher, out = Path(teacher), Path(out)
    files = load_model_dir(teacher)
    if out.resolve() == teacher.resolve():
        raise ConfigError(f"--out {out} is the teacher's own directory; choose another")
    if (out / "config.json").exists():
        from fastdp_ros.policies.modeldir import read_config

        existing = read_config(out)["policy_type"]
        if existing != RAGDPPolicy.policy_type:
            raise ConfigError(f"{out} holds a {existing!r} model; choose another --out")
    base = load_base(files, files.policy_type)
    spec = base.spec
    if dataset is None:
        dataset = files.config.get("provenance", {}).get("dataset")
        if not dataset:
            raise ConfigError(f"{teacher} does not record its dataset; pass --dataset")
    buffer = ReplayBuffer.open(dataset)
    check_dataset(buffer, {k: spec.obs_shape(k) for k in spec.obs_keys}, spec.image_keys, spec.action_key,
                  spec.action_dim)
    episodes = demonstration_episodes(buffer)
    if max_episodes is not None:
        episodes = episodes[:max_episodes]
    if len(episodes) == 0:
        raise DatasetError(f"dataset {dataset} has no usable (successful) episodes to index")

    model = base.model.to(device).eval()

    @torch.inference_mode()
    def embed_batch(obs: dict[str, np.ndarray]) -> np.ndarray:
        return model.encode({k: torch.from_numpy(v).to(device) for k, v in obs.items()}).float().cpu().numpy()

    half = any(t.dtype == torch.float16 for t in files.state_dict.values())
    fingerprint = dataset_fingerprint(buffer)
    cfg = {**base.config_entries, "ragdp": config.to_dict(),
           "teacher": {"policy_type": files.policy_type, "path": str(teacher.resolve()),
                       "model_hash": model_hash(teacher)},
           "provenance": {"dataset": str(Path(dataset).resolve()), "dataset_fingerprint": fingerprint,
                          "indexed_episodes": int(len(episodes)),
                          "teacher_provenance": files.config.get("provenance", {})}}
    embeddings, table = embed_demonstrations(buffer, episodes, spec.obs_keys, spec.action_key, spec.n_obs_steps,
                                             embed_batch, batch_size=batch_size, show_progress=show_progress)
    save_model_dir(out, RAGDPPolicy.policy_type, cfg, files.state_dict, half=half)
    index = EmbeddingIndex.build(
        embeddings, table, model_hash=file_hash(out / WEIGHTS_FILE), dataset_fingerprint=fingerprint,
        config=config.index_config(),
        extra_meta={"n_obs_steps": spec.n_obs_steps, "horizon": spec.horizon, "action_dim": spec.action_dim,
                    "dataset": str(Path(dataset).resolve())})
    index.save(out)
    return out
