"""`fastdp dataset check D`: list a dataset's episodes, keys, shapes and metadata, and fail with
the reason when the pipeline cannot learn from it (docs/dataset.md)."""

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
    p = sub.add_parser("dataset", help="inspect a dataset: `fastdp dataset check D`", description=__doc__)
    verbs = p.add_subparsers(dest="dataset_verb", metavar="VERB", required=True)
    c = verbs.add_parser("check", help="episodes, keys, shapes, dt, robot, missing metadata, non-finite values",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("dataset", help="zarr dataset folder")
    c.add_argument("--action-key", default="action", help="name of the action array")
    c.add_argument("--keys", type=_keys, default=(),
                   help="comma-separated observation keys a policy will read (each must be present)")
    c.add_argument("--json", default=None, help="write the report (JSON) here")
    c.set_defaults(run=run_check)


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
