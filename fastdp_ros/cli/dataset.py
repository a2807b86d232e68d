"""`fastdp dataset check D`: list a dataset's episodes, keys, shapes and metadata, and fail with
the reason when the pipeline cannot learn from it (docs/dataset.md); `fastdp dataset rename D
OLD=NEW` and `fastdp dataset set D NAME=VALUE` fix names and attributes in place."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fastdp_ros.errors import DatasetError

log = logging.getLogger(__name__)


def _keys(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_parser(sub) -> None:
    p = sub.add_parser("dataset", help="check a dataset (`fastdp dataset check D`), rename its keys, set attributes",
                       description=__doc__)
    verbs = p.add_subparsers(dest="dataset_verb", metavar="VERB", required=True)
    c = verbs.add_parser("check", help="episodes, keys, shapes, dt, robot, missing metadata, non-finite values",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("dataset", help="zarr dataset folder")
    c.add_argument("--action-key", default="action", help="name of the action array")
    c.add_argument("--keys", type=_keys, default=(),
                   help="comma-separated observation keys a policy will read (each must be present)")
    c.add_argument("--json", default=None, help="write the report (JSON) here")
    c.set_defaults(run=run_check)
    r = verbs.add_parser("rename", help="rename data arrays in place (e.g. actions=action)")
    r.add_argument("dataset", help="zarr dataset folder")
    r.add_argument("renames", nargs="+", metavar="OLD=NEW")
    r.set_defaults(run=run_rename)
    s = verbs.add_parser("set", help="set dataset attributes (e.g. robot=fr3 dt=0.05 task=stack)")
    s.add_argument("dataset", help="zarr dataset folder")
    s.add_argument("attrs", nargs="+", metavar="NAME=VALUE", help="VALUE is JSON when it parses, else a string")
    s.set_defaults(run=run_set)


def run_rename(args) -> int:
    from fastdp_ros.data.check import rename_keys
    from fastdp_ros.data.importers import parse_mapping

    rename_keys(args.dataset, parse_mapping(args.renames, "rename"))
    log.info("renamed %s in %s", ", ".join(args.renames), args.dataset)
    return 0


def run_set(args) -> int:
    from fastdp_ros.data import ReplayBuffer
    from fastdp_ros.data.check import parse_attr_value
    from fastdp_ros.robots import get_robot

    attrs = {}
    for item in args.attrs:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise DatasetError(f"attributes are NAME=VALUE, got {item!r}")
        attrs[name.strip()] = parse_attr_value(value)
    if "robot" in attrs:
        attrs["robot"] = get_robot(str(attrs["robot"])).name
    ReplayBuffer.open(args.dataset, mode="r+").update_attrs(attrs)
    log.info("set %s on %s", ", ".join(sorted(attrs)), args.dataset)
    return 0


def run_check(args) -> int:
    from fastdp_ros.data.check import check_dataset

    report = check_dataset(args.dataset, action_key=args.action_key, keys=args.keys)
    print("\n".join(report.lines()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    if not report.ok:
        raise DatasetError(f"dataset {args.dataset} cannot be used: " + "; ".join(report.problems))
    return 0
