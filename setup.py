"""fastdp_ros: an ament_python ROS 2 package that also installs with pip outside ROS.

`colcon build` installs launch/, config/ and models/ into share/fastdp_ros; `pip install -e .`
gives the `fastdp` command without ROS. torch is not in install_requires on purpose: on Linux,
PyPI's torch is the CUDA build (gigabytes of nvidia-* wheels), so a CPU machine would download
CUDA. Install the build you want first: the CPU one with `pip install -r requirements-torch-cpu.txt`
(what scripts/setup_env.sh does without an NVIDIA GPU), or your CUDA build; `fastdp` says so
when torch is missing.
"""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "fastdp_ros"
DATA_EXTRA = ["rosbags>=0.10", "h5py>=3.8", "pyarrow>=12", "av>=12"]


def share_files(folder):
    """(share/fastdp_ros/<dir>, [files]) entries for every file under `folder`, keeping the tree."""
    entries = {}
    for path in glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path):
            entries.setdefault(os.path.join("share", PACKAGE, os.path.dirname(path)), []).append(path)
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version="0.2.1",
    description="Fast diffusion policies for closed-loop control of a Franka arm (ROS 2 + MuJoCo)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share_files("launch"),
        *share_files("config"),
        *share_files("models"),
    ],
    install_requires=[
        "numpy>=1.24",
        "mujoco>=3.3.6",  # MjSpec.delete (3.3.4), no repeated-asset error on the Panda's meshes (3.3.6)
        "gymnasium-robotics>=1.2",  # only for its Franka Panda model files
        "zarr>=2.16",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "faiss-cpu>=1.7.4",  # retrieval (RAGDP, ALT) and the OOD monitor; GPU users may swap in faiss-gpu
        "matplotlib>=3.5",  # fastdp bench's plot
        "Pillow>=9",  # decodes sensor_msgs/CompressedImage (jpeg, png) in the nodes without OpenCV; .gif videos
        "PyYAML>=5.4",  # config/policies.yaml (policy names -> model directories)
    ],
    extras_require={
        # `fastdp import`: rosbag2 (rosbags, no ROS needed), robomimic (h5py), LeRobot (pyarrow, av)
        "data": DATA_EXTRA,
        "dev": ["pytest>=7", "hypothesis>=6", *DATA_EXTRA],
        # GPU: bring your own CUDA torch first; these add the GPU engines.
        "gpu": ["onnxruntime-gpu>=1.17", "tensorrt", "torch-tensorrt"],
        # ROS 2 Jazzy's rclpy and messages as PyPI wheels (Fast DDS): the node tests run on them.
        # With a sourced ROS 2 installation use its rclpy instead (scripts/test.sh picks).
        "ros": [f"ros-jazzy-{name}" for name in (
            "rclpy", "rmw-fastrtps-cpp", "sensor-msgs", "std-msgs", "std-srvs", "trajectory-msgs",
            "geometry-msgs", "diagnostic-msgs", "lifecycle-msgs", "rcl-interfaces")],
    },
    zip_safe=True,
    maintainer="fastdp_ros maintainers",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "fastdp = fastdp_ros.cli.main:main",
            # ROS 2 executables: `ros2 run fastdp_ros <name>` (setup.cfg installs them in lib/fastdp_ros)
            "policy_node = fastdp_ros.nodes.launcher:policy_node",
            "ood_monitor_node = fastdp_ros.nodes.launcher:ood_monitor_node",
            "sim_node = fastdp_ros.nodes.launcher:sim_node",
        ],
    },
)
