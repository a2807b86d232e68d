"""`fastdp import rosbag2|lerobot|robomimic SOURCE --out D`: other recordings -> a zarr dataset
(layout: docs/dataset.md). The dataset appears at D only when the whole import succeeded."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _common(p) -> None:
    p.add_argument("--out", required=True, help="zarr dataset to write (a folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.add_argument("--task", default=None, help="task name stored with the dataset")
    p.add_argument("--robot", default=None, help="fr3 | panda (rosbag2: default from the joint names)")
    p.add_argument("--report", default=None, help="write the import report (JSON) here")


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="import rosbag2, LeRobot or robomimic demonstrations as a dataset",
                       description=__doc__)
    kinds = p.add_subparsers(dest="source_format", metavar="FORMAT", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    b = kinds.add_parser("rosbag2", help="rosbag2 recordings (sqlite3 or mcap; no ROS installation needed)",
                         formatter_class=fmt)
    b.add_argument("bags", nargs="+", metavar="BAG", help="bag folders (each one episode, or more with --split-*)")
    _common(b)
    b.add_argument("--dt", type=float, default=0.1, help="sampling period of the dataset (s)")
    b.add_argument("--image-size", default="96", help="camera images resized to N x N or HxW px")
    b.add_argument("--camera", action="append", default=None, metavar="TOPIC[=KEY]",
                   help="camera topic (Image or CompressedImage), repeatable; default: every image topic, "
                        "named img_<camera> after the topic")
    b.add_argument("--joint-states", default=None,
                   help="JointState topic (default: /franka/joint_states, else /joint_states)")
    b.add_argument("--joint-prefix", default=None, help="joint names are PREFIX_joint1..7 (default: the robot's)")
    b.add_argument("--gripper-topic", default=None,
                   help="JointState topic with the finger joints (default: any JointState topic carrying them)")
    b.add_argument("--action-topic", default=None,
                   help="command topic (JointTrajectory, Float64MultiArray or PoseStamped); default: the action "
                        "is the next sample's joint positions")
    b.add_argument("--split-topic", default=None, help="every message on this topic starts an episode")
    b.add_argument("--split-gap", type=float, default=None, help="a hole longer than this (s) ends an episode")
    b.add_argument("--ros-distro", default="humble",
                   help="message definitions for bags that do not store their own: humble | jazzy")
    b.set_defaults(run=run_rosbag2)

    lr = kinds.add_parser("lerobot", help="a LeRobot v3 dataset folder (meta/, data/*.parquet, videos/*.mp4)",
                          formatter_class=fmt)
    lr.add_argument("source", metavar="DIR")
    _common(lr)
    lr.add_argument("--map", action="append", default=None, metavar="FEATURE=KEY",
                    help="feature name -> dataset key, repeatable (default: observation.images.X -> img_X, "
                         "observation.state -> state, action -> action, other observation.X -> X)")
    lr.add_argument("--image-size", default=None, help="resize images to N x N or HxW px (default: as recorded)")
    lr.set_defaults(run=run_lerobot)

    rm = kinds.add_parser("robomimic", help="a robomimic HDF5 file (data/demo_*/obs/*, actions, rewards, dones)",
                          formatter_class=fmt)
    rm.add_argument("source", metavar="FILE")
    _common(rm)
    rm.add_argument("--map", action="append", default=None, metavar="OBS=KEY",
                    help="obs name -> dataset key, repeatable (default: X_image -> img_X, others unchanged)")
    rm.add_argument("--dt", type=float, default=None,
                    help="sampling period (s); default: 1 / the control_freq the file's env_args record")
    rm.add_argument("--image-size", default=None, help="resize images to N x N or HxW px (default: as recorded)")
    rm.set_defaults(run=run_robomimic)


def _finish(report: dict, args) -> int:
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=2))
    log.info("imported %d episodes into %s; check it with `fastdp dataset check %s`", len(report["episodes"]),
             args.out, args.out)
    return 0


def run_rosbag2(args) -> int:
    from fastdp_ros.data.importers import parse_image_size, parse_mapping
    from fastdp_ros.data.importers.rosbag2 import Rosbag2Options, camera_key, import_rosbag2

    cameras = None
    if args.camera:
        cameras = {}
        for item in args.camera:
            topic, _, key = item.partition("=")
            cameras[topic] = key or camera_key(topic)
        parse_mapping([f"{t}={k}" for t, k in cameras.items()], "--camera")
    options = Rosbag2Options(dt=args.dt, image_size=parse_image_size(args.image_size), cameras=cameras,
                             joint_states=args.joint_states, gripper_topic=args.gripper_topic,
                             action_topic=args.action_topic, robot=args.robot, joint_prefix=args.joint_prefix,
                             split_topic=args.split_topic, split_gap=args.split_gap, ros_distro=args.ros_distro,
                             task=args.task)
    return _finish(import_rosbag2(args.bags, args.out, options, overwrite=args.overwrite), args)


def run_lerobot(args) -> int:
    from fastdp_ros.data.importers import parse_image_size, parse_mapping
    from fastdp_ros.data.importers.lerobot import import_lerobot

    size = parse_image_size(args.image_size) if args.image_size else None
    report = import_lerobot(args.source, args.out, mapping=parse_mapping(args.map), image_size=size,
                            robot=args.robot, task=args.task, overwrite=args.overwrite)
    return _finish(report, args)


def run_robomimic(args) -> int:
    from fastdp_ros.data.importers import parse_image_size, parse_mapping
    from fastdp_ros.data.importers.robomimic import import_robomimic

    size = parse_image_size(args.image_size) if args.image_size else None
    report = import_robomimic(args.source, args.out, mapping=parse_mapping(args.map), dt=args.dt, image_size=size,
                              robot=args.robot, task=args.task, overwrite=args.overwrite)
    return _finish(report, args)
