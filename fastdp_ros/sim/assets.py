"""Locate the Franka Panda model files shipped with gymnasium-robotics.

The arm and hand come from the installed ``gymnasium_robotics`` package
(``envs/assets/kitchen_franka/franka_assets``). They are read in place, by path, and handed to
MuJoCo as in-memory include files and assets; nothing is copied into this repository.
The package is located without importing it (importing it prints a deprecation notice and
pulls in gymnasium's environment registry, neither of which the simulation needs).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from fastdp_ros.errors import ConfigError

_PACKAGE = "gymnasium_robotics"
_RELATIVE = Path("envs") / "assets" / "kitchen_franka" / "franka_assets"
INCLUDE_FILES = ("assets.xml", "chain.xml", "actuator.xml")
# The include files set meshdir="franka_assets/meshes"; mesh assets are keyed accordingly.
MESH_PREFIX = "franka_assets/meshes"


def franka_assets_dir() -> Path:
    """The ``franka_assets`` folder inside the installed gymnasium-robotics package."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the MuJoCo Franka model comes from the 'gymnasium-robotics' package, which is "
            "not installed; install it with: pip install gymnasium-robotics"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _RELATIVE
        if all((candidate / name).is_file() for name in INCLUDE_FILES):
            return candidate
    raise ConfigError(
        f"gymnasium-robotics is installed but has no Franka model at <package>/{_RELATIVE} "
        f"(looked in {list(spec.submodule_search_locations)}); reinstall it with: "
        "pip install --force-reinstall gymnasium-robotics"
    )


@functools.lru_cache(maxsize=1)
def franka_files() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``(includes, assets)``: the XML include files and the mesh files, as bytes.

    Cached: the meshes are read from disk once per process. Callers must not mutate the dicts.
    """
    root = franka_assets_dir()
    includes = {name: (root / name).read_bytes() for name in INCLUDE_FILES}
    mesh_root = root / "meshes"
    assets = {
        f"{MESH_PREFIX}/{path.relative_to(mesh_root).as_posix()}": path.read_bytes()
        for path in sorted(mesh_root.rglob("*.stl"))
    }
    if not assets:
        raise ConfigError(f"no mesh files (*.stl) found under {mesh_root}")
    return includes, assets
