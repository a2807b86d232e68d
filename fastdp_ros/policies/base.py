"""The one interface every policy answers, and the registry of policies by name.

A policy loads from a model directory and offers:
  spec            -- PolicySpec (observation keys/shapes, action dim, dt, horizon, ...)
  encode(obs)     -- the embedding retrieval, ALT and the OOD monitor use
  act(obs)        -- an action chunk (horizon, action_dim) in robot units
  nfe             -- network evaluations per chunk (its cost)

and, where its method allows, `export_graph()`: the whole act() step as one deterministic
module with flat tensor inputs, which `fastdp_ros.engines` compiles (ONNX Runtime, TensorRT,
torch.compile). Policies never import the engines; the engines only call export_graph().
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fastdp_ros.errors import ConfigError
from fastdp_ros.policies.modeldir import read_config
from fastdp_ros.policies.spec import PolicySpec, check_observation

log = logging.getLogger(__name__)


def obs_batch(obs: dict[str, np.ndarray], device: torch.device | str) -> dict[str, torch.Tensor]:
    """One observation {key: (n_obs, ...)} as a batch of one {key: (1, n_obs, ...)} on `device`."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)).unsqueeze(0).to(device) for k, v in obs.items()}


class Policy(abc.ABC):
    """Base class: subclasses implement `_encode`, `_act`, `from_model_dir` and `nfe`."""

    #: registry name, set by @register_policy
    policy_type: str = ""
    #: act() calls so far (see `queries`)
    act_calls: int = 0

    def __init__(self, spec: PolicySpec):
        self.spec = spec

    @property
    @abc.abstractmethod
    def nfe(self) -> int:
        """Network evaluations per action chunk."""

    @classmethod
    @abc.abstractmethod
    def from_model_dir(cls, path: str | os.PathLike, **options) -> "Policy":
        """Load from a model directory; options are run-time choices (device, sampler, steps)."""

    @abc.abstractmethod
    def _encode(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Embedding of a validated observation."""

    @abc.abstractmethod
    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Action chunk (horizon, action_dim) for a validated observation."""

    def encode(self, obs: dict) -> np.ndarray:
        return self._encode(check_observation(self.spec, obs))

    def act(self, obs: dict) -> np.ndarray:
        self.act_calls += 1
        return self._act(check_observation(self.spec, obs))

    def reset(self) -> None:
        """A new episode starts: forget what act() keeps between calls (default: nothing)."""

    @property
    def queries(self) -> int:
        """Model queries (runs of the sampler) so far: one per act() unless the policy keeps
        acting between queries (LWD's generated policy); with `nfe`, the cost of an episode."""
        return self.act_calls

    def cost_report(self) -> dict:
        """What besides `nfe` describes the policy's cost (e.g. the size of the network that
        runs between queries); `fastdp eval` and `fastdp bench` report it."""
        return {}

    def act_through(self, obs: dict[str, np.ndarray], run_graph: Callable[[dict], np.ndarray]) -> np.ndarray:
        """act() with the export graph's computation done by `run_graph(obs)` (a compiled engine:
        the graph's output after its `finish`). A policy whose act() is more than one run of its
        graph (state kept between calls) overrides this; `obs` is already validated."""
        return run_graph(obs)

    def export_graph(self) -> "ExportGraph":
        """The act() step as one exportable module (see ExportGraph); optional.

        Policies whose act() is one fixed computation (encoder + fixed-step sampler, a one-step
        generator) override this; the default says the policy cannot be exported.
        """
        name = self.policy_type or type(self).__name__
        raise ConfigError(f"policy {name!r} cannot be exported (it provides no export graph); "
                          f"run it with backend 'torch'")


class FlatInputs(nn.Module):
    """Adapts an act module taking (obs dict, *noise) to flat positional tensor inputs.

    Exporters (ONNX, torch.export, CUDA graphs) want a flat list of named tensors; the policies'
    act modules take the observation as a dict. forward(*tensors): the first len(obs_keys) are
    the observation in obs_keys order, the rest are passed through (noise inputs).
    """

    def __init__(self, act_module: nn.Module, obs_keys: tuple[str, ...]):
        super().__init__()
        self.act_module = act_module
        self.obs_keys = tuple(obs_keys)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        n = len(self.obs_keys)
        return self.act_module(dict(zip(self.obs_keys, tensors[:n])), *tensors[n:])


@dataclass
class ExportGraph:
    """A policy's whole act() step as one deterministic module with flat tensor inputs.

    `module(*inputs)` -> (1, horizon, action_dim) actions in robot units. The inputs are, in
    order, the raw observation of every key in `obs_keys` with a batch dimension of 1
    ((1, n_obs, H, W, 3) uint8 images, (1, n_obs, D) float32 low-dim) followed by the noise
    inputs named in `noise_shapes`, which the caller fills with standard normal noise: every
    random draw is an input, so the graph itself is deterministic and engines can be checked
    against eager execution. `noise_shapes` lists the noise in the order the policy's own
    act() draws it, so the same generator gives the same actions.

    `example_inputs` are reproducible representative inputs (same values on every call) used
    for tracing and parity checks; `signature` records what besides the weights shapes the
    graph (sampler, steps, input shapes): it is part of an engine's cache key.

    `finish`, when set, completes act() outside the graph: it maps the graph's output for one
    observation (batch dimension removed; `output_name` says what it is) to the action chunk.
    A lookup policy uses it: the graph computes the embedding, `finish` searches the table.
    """

    module: nn.Module
    obs_keys: tuple[str, ...]
    noise_shapes: dict[str, tuple[int, ...]]
    example_inputs: tuple[torch.Tensor, ...]
    signature: dict = field(default_factory=dict)
    output_name: str = "action"
    finish: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*self.obs_keys, *self.noise_shapes)


def flat_export_graph(
    act_module: nn.Module,
    spec: PolicySpec,
    noise_shapes: dict[str, tuple[int, ...]],
    signature: dict,
    device: torch.device | str = "cpu",
    lowdim_affine: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    seed: int = 0,
) -> ExportGraph:
    """ExportGraph of an act module forward(obs dict, *noise) with batch-1 example inputs.

    Example images are random uint8; example low-dim values are drawn uniformly inside the
    range the policy was trained on when `lowdim_affine` gives its normalization
    (x * scale + offset in [-1, 1]), else standard normal. A fixed seed makes them
    identical on every call; their digest joins the signature.
    """
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for key in spec.obs_keys:
        shape = (1, spec.n_obs_steps, *spec.obs_shape(key))
        if key in spec.image_keys:
            examples.append(torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8))
        elif lowdim_affine and key in lowdim_affine:
            scale, offset = (t.detach().cpu().float() for t in lowdim_affine[key])
            u = torch.rand(shape, generator=gen) * 2 - 1
            examples.append((u - offset) / scale)
        else:
            examples.append(torch.randn(shape, generator=gen))
    examples += [torch.randn(shape, generator=gen) for shape in noise_shapes.values()]
    digest = hashlib.sha256()
    for t in examples:
        digest.update(t.numpy().tobytes())
    examples = tuple(t.to(device) for t in examples)
    module = FlatInputs(act_module, spec.obs_keys).eval()
    signature = {
        **signature,
        "inputs": {name: [list(t.shape), str(t.dtype)] for name, t in zip((*spec.obs_keys, *noise_shapes), examples)},
        "example_digest": digest.hexdigest()[:16],
    }
    return ExportGraph(module, tuple(spec.obs_keys), dict(noise_shapes), examples, signature)


#: what `fastdp train | distill | index` can make a policy from (the registry's builder verbs)
VERBS = ("train", "distill", "index")
#: what a registered policy offers besides act(); derived from the class and the registration
CAPABILITIES = ("export_graph", "ood_score", "retrieval_base")


@dataclass
class BuildRequest:
    """What `fastdp train | distill | index` hands a policy's builder (see register_policy).

    config is the policy's PolicyConfig made from the command's flags; settings the
    TrainSettings of a training or distillation; the layout fields describe the observations
    and actions of a policy trained on a dataset."""

    verb: str
    config: object
    out: str
    dataset: str | None = None
    teacher: str | None = None
    settings: object = None
    image_keys: tuple[str, ...] = ()
    lowdim_keys: tuple[str, ...] = ()
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    max_episodes: int | None = None
    resume: bool = False
    half: bool = False
    device: str = "cpu"


@dataclass(frozen=True)
class PolicyEntry:
    """One registered policy: its class, configuration dataclass, builders and capabilities.

    A builder is `fn(request: BuildRequest) -> dict` (a summary the command logs);
    retrieval_base is `fn(files: ModelFiles) -> ragdp.RetrievalBase` for models RAGDP can
    accelerate."""

    name: str
    cls: type
    config: type | None = None
    builders: dict = field(default_factory=dict)
    retrieval_base: Callable | None = None
    capabilities: frozenset = frozenset()
    summary: str = ""

    def builder(self, verb: str) -> Callable | None:
        return self.builders.get(verb)

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


_REGISTRY: dict[str, PolicyEntry] = {}


def register_policy(name: str, *, config: type | None = None, train: Callable | None = None,
                    distill: Callable | None = None, index: Callable | None = None,
                    retrieval_base: Callable | None = None, summary: str = ""):
    """Class decorator: register a Policy under `name` (its config.json `policy_type`).

    config: its PolicyConfig dataclass (the flags of its builders); train / distill / index:
    how `fastdp <verb> --policy name` makes one (trained on a dataset, distilled from a
    teacher, indexed from a teacher); retrieval_base: how RAGDP loads one as the model it
    accelerates; summary: one line for `--help`. The capabilities are derived: export_graph
    when the class overrides it, ood_score when it scores observations, retrieval_base."""

    def wrap(cls: type[Policy]) -> type[Policy]:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"policy type {name!r} registered twice")
        caps = set()
        if getattr(cls, "export_graph", None) is not getattr(Policy, "export_graph"):
            caps.add("export_graph")
        if callable(getattr(cls, "ood_score", None)):
            caps.add("ood_score")
        if retrieval_base is not None:
            caps.add("retrieval_base")
        builders = {verb: fn for verb, fn in (("train", train), ("distill", distill), ("index", index)) if fn}
        cls.policy_type = name
        _REGISTRY[name] = PolicyEntry(name, cls, config, builders, retrieval_base, frozenset(caps),
                                      summary or (cls.__doc__ or "").strip().split("\n")[0])
        return cls

    return wrap


def policy_entry(name: str) -> PolicyEntry:
    """The registration of policy type `name`, or a ConfigError listing the known ones."""
    discover_policies()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise ConfigError(f"unknown policy type {name!r}; known policy types: {known}") from None


def policy_class(name: str) -> type[Policy]:
    """The Policy class registered under `name`, or a ConfigError listing the known ones."""
    return policy_entry(name).cls


def registered_policies() -> list[str]:
    discover_policies()
    return sorted(_REGISTRY)


def policies_with(verb: str | None = None, capability: str | None = None) -> list[PolicyEntry]:
    """Registered policies a verb can build and/or that offer a capability, by name."""
    discover_policies()
    return [e for _, e in sorted(_REGISTRY.items())
            if (verb is None or e.builder(verb)) and (capability is None or e.can(capability))]


def load_policy(path: str | os.PathLike, **options) -> Policy:
    """Load any model directory by the policy_type in its config.json."""
    config = read_config(path)
    return policy_class(config["policy_type"]).from_model_dir(path, **options)


#: entry-point group of policies from other packages (`[project.entry-points."fastdp_ros.policies"]`
#: name = "package.module": importing the module registers its policy)
ENTRY_POINT_GROUP = "fastdp_ros.policies"
_discovered = False


def discover_policies() -> None:
    """Import every module of this package (one per policy; importing one registers it) and the
    modules other packages declare under the entry-point group, once. Imported lazily so
    `fastdp_ros.policies.base` stays cheap and free of cycles."""
    global _discovered
    if _discovered:
        return
    import importlib
    import pkgutil
    from importlib.metadata import entry_points

    import fastdp_ros.policies as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not hide the built-in policies
            log.warning("policy plugin %s (%s) cannot be imported: %s: %s", ep.name, ep.value, type(e).__name__, e)
    _discovered = True
