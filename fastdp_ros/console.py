"""What a user sees while a command runs: fastdp_ros's own progress at INFO, other libraries
only when something is wrong.

Left at INFO, the libraries underneath talk on a healthy run: faiss's loader logs its AVX2
probe with a traceback text, PyOpenGL its accelerate module. They are held at WARNING
(--verbose shows everything at DEBUG).
"""

from __future__ import annotations

import logging

#: the loggers of this package (the `fastdp` command's and the modules')
OWN_LOGGERS = ("fastdp", "fastdp_ros")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Log fastdp_ros at `level`, everything else at WARNING (or at `level` when that is DEBUG)."""
    root_level = level if level <= logging.DEBUG else logging.WARNING
    logging.basicConfig(level=root_level, format=FORMAT, datefmt="%H:%M:%S")
    logging.getLogger().setLevel(root_level)  # also where a handler was installed before
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)


def own_level() -> int:
    """The level fastdp_ros logs at (to hand to a child process)."""
    return logging.getLogger("fastdp_ros").getEffectiveLevel()
