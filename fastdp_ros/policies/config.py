"""`PolicyConfig`: the base of every policy's configuration dataclass.

A policy's configuration is one dataclass. Its fields are what config.json stores (generic
`to_dict` / `from_dict`, with unknown-key and type checks), and they are the flags of the
`fastdp` verb that makes the policy (`fastdp_ros.cli.policy_options` generates them, with the
field's default and its `option(help=...)`). Fields declared with `option(stored=False)` are
build-time choices (a report path, a reward dataset) that become flags but are not saved.

    @dataclass
    class MyConfig(PolicyConfig):
        latent_dim: int = option(16, help="size of the latent")
        widths: tuple[int, ...] = option((64, 64), help="hidden layer widths")
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Callable

from fastdp_ros.errors import ConfigError

__all__ = ["PolicyConfig", "option", "config_fields"]


def option(default: Any = MISSING, *, help: str = "", flag: str | None = None, const: Any = MISSING,
           choices: tuple | None = None, parse: Callable[[str], Any] | None = None, stored: bool = True,
           nargs: str | None = None, default_factory: Callable[[], Any] | None = None) -> Any:
    """A PolicyConfig field with its command-line description.

    help: the flag's help text; flag: its name when not --field-name; const: the flag takes no
    value and sets this one (e.g. --relative-actions sets relative_to="joint_pos");
    choices: the allowed values; parse: text -> value when the type's parser does not fit;
    stored: False for a build-time option that config.json does not keep; nargs: "+" or "*" for
    a list field given as separate words (--reward-dataset D1 D2), each parsed as one element.
    """
    metadata = {"help": help, "flag": flag, "const": const, "choices": choices, "parse": parse, "stored": stored,
                "nargs": nargs}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if isinstance(default, (list, dict, set)):
        frozen = type(default)(default)
        return dataclasses.field(default_factory=lambda: type(frozen)(frozen), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def config_fields(cls) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type annotation) of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _optional(tp) -> tuple[Any, bool]:
    """(inner type, True) for `X | None` / Optional[X]; (tp, False) otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` (from JSON or a flag) as type `tp`; a ConfigError names `where` when it does not fit."""
    inner, optional = _optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{where} must not be empty (null)")
    tp = inner
    origin = typing.get_origin(tp)
    try:
        if tp is Any:
            return value
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise TypeError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if origin is tuple:
            args = typing.get_args(tp)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(v, args[0], where) for v in value)
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, where) for v, a in zip(value, args))
        if tp is dict or origin is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
        if tp is list or origin is list:
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return list(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}") from None
    return value


def _type_name(tp) -> str:
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


@dataclass
class PolicyConfig:
    """Base of the policies' configuration dataclasses (generic JSON round trip and checks).

    `label` names the policy in error messages (set by subclasses, e.g. "LWD")."""

    label: typing.ClassVar[str] = "policy"

    def to_dict(self) -> dict:
        """The stored fields as JSON values (tuples become lists)."""
        out = {}
        for f, _ in config_fields(type(self)):
            if not f.metadata.get("stored", True):
                continue
            out[f.name] = _jsonable(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, d: dict):
        """Build from config.json values: unknown keys and values of the wrong type are ConfigErrors."""
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.label} options must be a mapping, got {type(d).__name__}")
        fields = dict((f.name, (f, tp)) for f, tp in config_fields(cls))
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ConfigError(f"unknown {cls.label} options {unknown}; known: {sorted(fields)}")
        values = {k: coerce(v, fields[k][1], f"{cls.label} option {k!r}") for k, v in d.items()}
        return cls(**values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
