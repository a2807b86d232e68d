"""Policy names -> model directories (config/policies.yaml).

    models_root: ../models          # relative to this file
    policies:
      onedp: push_onedp             # a directory, relative to models_root ...
      dp:                           # ... or a directory with run-time options for the loader
        model: push_dp
        options: {sampler: ddim, steps: 10}

`resolve(value)` accepts a policy name or a model directory path and checks that the
directory holds a fastdp model (its config.json parses), so a hot swap to a name that is
unknown, or to a model that was never built, is refused at once with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fastdp_ros.errors import ConfigError, FastDPError

POLICIES_FILE = "policies.yaml"


@dataclass(frozen=True)
class ModelEntry:
    """A resolved policy: its name (or the path it was given as), directory, loader options,
    and the model's config.json."""

    name: str
    path: Path
    options: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def policy_type(self) -> str:
        return str(self.config.get("policy_type", ""))

    def spec(self):
        from fastdp_ros.policies.spec import PolicySpec

        try:
            return PolicySpec.from_dict(self.config["spec"])
        except KeyError:
            raise ConfigError(f"{self.path}/config.json has no policy spec") from None


def looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith((".", "~")) or (os.altsep is not None and os.altsep in value)


class PolicyCatalog:
    """The policies YAML, loaded once. `source` names the file in error messages."""

    def __init__(self, policies: dict[str, tuple[Path, dict]], source: str = "(no policies file)"):
        self.policies = dict(policies)
        self.source = source

    @classmethod
    def from_file(cls, path) -> "PolicyCatalog":
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"policies file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"policies file {path} is not valid YAML: {e}") from None
        return cls.from_dict(data or {}, base=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, base: Path, source: str = "(inline)") -> "PolicyCatalog":
        if not isinstance(data, dict) or not isinstance(data.get("policies", {}), dict):
            raise ConfigError(f"{source}: expected a mapping with a 'policies' mapping of name -> model directory")
        root = Path(base) / str(data.get("models_root", "."))
        policies = {}
        for name, entry in (data.get("policies") or {}).items():
            if isinstance(entry, str):
                model, options = entry, {}
            elif isinstance(entry, dict) and isinstance(entry.get("model"), str):
                model, options = entry["model"], dict(entry.get("options") or {})
            else:
                raise ConfigError(f"{source}: policy {name!r} must map to a directory or to "
                                  f"{{model: <dir>, options: {{...}}}}, got {entry!r}")
            policies[str(name)] = ((root / Path(model).expanduser()).resolve(), options)
        return cls(policies, source)

    def names(self) -> list[str]:
        return sorted(self.policies)

    def resolve(self, value: str) -> ModelEntry:
        """The model a policy name (or a model directory path) stands for, checked to exist.
        Raises ConfigError / ModelFileError (FastDPError) saying why it cannot be used."""
        from fastdp_ros.policies.modeldir import read_config

        value = str(value).strip()
        if not value:
            raise ConfigError("no policy given: set `policy` to one of "
                              f"{', '.join(self.names()) or '(none listed)'} or to a model directory")
        if value in self.policies:
            path, options = self.policies[value]
            where = f"policy {value!r} maps to {path} (in {self.source}), but"
        elif looks_like_path(value):
            path, options = Path(value).expanduser().resolve(), {}
            where = f"model directory {path}:"
        else:
            raise ConfigError(f"unknown policy {value!r}; {self.source} lists: {', '.join(self.names()) or '(none)'} "
                              f"(or give a model directory path)")
        if not path.is_dir():
            raise ConfigError(f"{where} that directory does not exist; build the model (see models/README.md) "
                              f"or point the name to another directory")
        try:
            config = read_config(path)
        except FastDPError as e:
            raise ConfigError(f"{where} {e}") from None
        return ModelEntry(value, path, dict(options), config)
