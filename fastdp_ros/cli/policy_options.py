"""Flags generated from a policy's PolicyConfig, and the verbs' dispatch through the registry.

`fastdp train | distill | index --policy NAME` look NAME up in the policy registry
(`fastdp_ros.policies.base.register_policy`): the verb's common flags are its own, the
policy's flags are the fields of its configuration dataclass (`--field-name`, default and
help from `option()`), so adding a policy adds its flags without editing the command.
The parser is built for the policy named on the command line (`--policy NAME --help`
shows its flags); without one, `--help` lists the policies the verb can make.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import typing

from fastdp_ros.errors import ConfigError

log = logging.getLogger(__name__)


def requested_policy(argv: list[str] | None) -> str | None:
    """The value of --policy on a command line (`--policy x` or `--policy=x`), if any."""
    argv = list(argv or [])
    for i, arg in enumerate(argv):
        if arg == "--policy" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--policy="):
            return arg.split("=", 1)[1]
    return None


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _parser_for(tp):
    """A text -> value parser for an annotation (the flag's `type=`)."""
    from fastdp_ros.policies.config import _optional, coerce

    inner, _ = _optional(tp)

    def parse(text: str):
        if text.lower() in ("none", "null") and inner is not str:
            return None
        if typing.get_origin(inner) is tuple and text.strip() == "":
            return ()
        return coerce(text, tp, "value")

    parse.__name__ = getattr(inner, "__name__", "value")
    return parse


def _element_type(tp):
    """The element type of a list field (`tuple[str, ...] | None` -> str) for an nargs flag."""
    from fastdp_ros.policies.config import _optional

    args = typing.get_args(_optional(tp)[0])
    return args[0] if args else str


def _reporting(parse):
    """`parse` whose ConfigError argparse prints as it is (not as 'invalid value')."""
    from fastdp_ros.errors import ConfigError

    def wrapped(text: str):
        try:
            return parse(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    wrapped.__name__ = getattr(parse, "__name__", "value")
    return wrapped


def add_config_flags(parser: argparse.ArgumentParser, config_cls, title: str, skip: set[str] = frozenset()):
    """One flag per field of `config_cls` (a PolicyConfig dataclass), in an argument group.

    Fields named in `skip` (the verb's own flags, e.g. --lr of the training settings) are left
    out; their values come from the verb's flag of the same name. Each flag's dest is
    `cfg_<field>` so it never collides with the verb's own options."""
    from fastdp_ros.policies.config import config_fields

    group = parser.add_argument_group(title)
    for field, tp in config_fields(config_cls):
        if field.name in skip:
            continue
        meta = field.metadata
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        help_text = (meta.get("help") or "").replace("%", "%%")
        is_const = meta.get("const", dataclasses.MISSING) is not dataclasses.MISSING
        if is_const:  # a switch: its stored default means "off"
            help_text += "%(default).0s"
        elif isinstance(default, tuple) or default == "":
            # shown as typed on the command line ("64,64", ''), not as Python's repr; the empty
            # "%(default).0s" tells ArgumentDefaultsHelpFormatter the default is already there
            shown = ",".join(str(v) for v in default) if default else "''"
            help_text = f"{help_text} (default: {shown})%(default).0s".lstrip()
        dest = f"cfg_{field.name}"
        if is_const:
            group.add_argument(_flag(field), dest=dest, action="store_const", const=meta["const"], default=default,
                               help=help_text or None)
        elif tp is bool:
            group.add_argument(_flag(field), dest=dest, action=argparse.BooleanOptionalAction, default=default,
                               help=help_text or None)
        elif meta.get("nargs"):
            group.add_argument(_flag(field), dest=dest, nargs=meta["nargs"], default=default,
                               type=_reporting(meta.get("parse") or _parser_for(_element_type(tp))),
                               choices=meta.get("choices"), metavar=field.name.upper(), help=help_text or None)
        else:
            group.add_argument(_flag(field), dest=dest, type=_reporting(meta.get("parse") or _parser_for(tp)),
                               default=default, choices=meta.get("choices"), metavar=field.name.upper(),
                               help=help_text or None)
    return group


class _ForeignOption(argparse.Action):
    """A flag of another policy of the same verb: named as such instead of 'unrecognized'."""

    def __call__(self, parser, namespace, values, option_string=None):
        policy = getattr(namespace, "policy", None) or "NAME"
        parser.error(f"{option_string} is an option of --policy {' | '.join(self.owners)}, not of --policy {policy} "
                     f"(`--policy {policy} --help` lists its options)")


def add_foreign_flags(parser: argparse.ArgumentParser, verb: str, skip: set[str] = frozenset()) -> None:
    """Hidden flags for the options of the verb's other policies (call after the verb's own flags):
    `fastdp train --policy alt --init-from M` says --init-from is dp's, not 'unrecognized'."""
    from fastdp_ros.policies.base import policies_with
    from fastdp_ros.policies.config import config_fields

    owners: dict[str, list[str]] = {}
    for entry in policies_with(verb):
        for field, _ in config_fields(entry.config) if entry.config is not None else ():
            if field.name not in skip:
                owners.setdefault(_flag(field), []).append(entry.name)
    for flag, names in owners.items():
        if flag not in parser._option_string_actions:
            action = parser.add_argument(flag, nargs="*", action=_ForeignOption, help=argparse.SUPPRESS,
                                         dest=argparse.SUPPRESS, default=argparse.SUPPRESS)
            action.owners = names


def config_from_args(config_cls, args: argparse.Namespace, shared: dict | None = None):
    """The config dataclass from the generated flags (and `shared`: values of skipped fields)."""
    from fastdp_ros.policies.config import config_fields

    values = {}
    for field, _ in config_fields(config_cls):
        dest = f"cfg_{field.name}"
        if hasattr(args, dest):
            values[field.name] = getattr(args, dest)
            if field.metadata.get("nargs") and isinstance(values[field.name], list):
                values[field.name] = tuple(values[field.name])
        elif shared and field.name in shared:
            values[field.name] = shared[field.name]
    try:
        return config_cls(**values)
    except TypeError as e:
        raise ConfigError(f"invalid {getattr(config_cls, 'label', 'policy')} options: {e}") from None


def add_policy_argument(parser: argparse.ArgumentParser, verb: str, argv: list[str] | None,
                        skip: set[str] = frozenset()) -> None:
    """`--policy` (the policies `verb` can make) and, when argv names one, its config flags."""
    from fastdp_ros.policies.base import policies_with

    entries = policies_with(verb)
    lines = "; ".join(f"{e.name}: {e.summary}" for e in entries)
    # no argparse choices: an unknown name or one another verb makes is builder_for's one-line error
    parser.add_argument("--policy", required=True, metavar="NAME",
                        help=f"one of: {lines}. `--policy NAME --help` lists that policy's options")
    name = requested_policy(argv)
    chosen = next((e for e in entries if e.name == name), None)
    if chosen is not None and chosen.config is not None:
        add_config_flags(parser, chosen.config, f"{chosen.name} options ({chosen.config.__name__})", skip=skip)


def builder_for(verb: str, name: str):
    """(entry, builder) of policy `name` for `verb`, or a ConfigError naming the ones it can make."""
    from fastdp_ros.policies.base import policies_with, policy_entry

    can = ", ".join(e.name for e in policies_with(verb))
    try:
        entry = policy_entry(name)
    except ConfigError:
        raise ConfigError(f"`fastdp {verb}` makes {can}; got --policy {name!r}, an unknown policy type") from None
    fn = entry.builder(verb)
    if fn is None:
        other = [v for v in ("train", "distill", "index") if entry.builder(v)]
        hint = f" ({name} is made by `fastdp {other[0]}`)" if other else ""
        raise ConfigError(f"`fastdp {verb}` makes {can}; got --policy {name!r}{hint}")
    return entry, fn


def log_summary(verb: str, name: str, out: str, summary: dict | None) -> None:
    parts = []
    for k, v in (summary or {}).items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        elif isinstance(v, (int, str)):
            parts.append(f"{k} {v}")
    log.info("%s %s: %s; model in %s", verb, name, ", ".join(parts) or "done", out)
