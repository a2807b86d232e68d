"""Fast offscreen rendering of MuJoCo cameras.

``MUJOCO_GL`` picks MuJoCo's OpenGL backend when ``mujoco`` is first imported; the sim
package sets it to ``egl`` unless the user chose another (``osmesa``, ``glfw``...), and if
mujoco was imported before that, the renderer switches to the requested headless backend.
With Mesa's software EGL on a 2-core CPU, a 96x96 frame costs 4-10 ms with the arm's detailed
meshes and about 0.5-1 ms with its coarse ones (``SceneConfig.mesh_detail``), once shadows,
reflections and multisampling are off, which :class:`OffscreenRenderer` does.
"""

from __future__ import annotations

import logging
import os
import threading

import mujoco
import numpy as np

from fastdp_ros.errors import RendererError

log = logging.getLogger(__name__)

_INSTALL_HINT = (
    "Install the OpenGL libraries for EGL: apt-get install libegl1 libgl1 libegl-mesa0 "
    "libgl1-mesa-dri (software rendering works without a GPU); or install libosmesa6 and set "
    "MUJOCO_GL=osmesa before starting Python."
)


def gl_backend() -> str:
    """The OpenGL backend MuJoCo selected at import (its reading of ``MUJOCO_GL``)."""
    try:
        from mujoco.rendering.classic import gl_context

        return str(getattr(gl_context, "_MUJOCO_GL", os.environ.get("MUJOCO_GL", "")))
    except Exception:  # noqa: BLE001 - only used in messages
        return os.environ.get("MUJOCO_GL", "")


def _align_backend() -> None:
    """Honour ``MUJOCO_GL=egl|osmesa`` even when mujoco was imported before it was set.

    MuJoCo picks its OpenGL backend once, when it is first imported; if that happened before
    this package set ``MUJOCO_GL`` (or the variable changed since), switch MuJoCo's offscreen
    context class to the requested headless backend. On failure nothing changes, and starting
    the renderer reports the problem.
    """
    wanted = os.environ.get("MUJOCO_GL", "").lower().strip()
    if wanted not in ("egl", "osmesa") or gl_backend() == wanted:
        return
    try:
        from mujoco.rendering.classic import gl_context

        if wanted == "egl":
            from mujoco.egl import GLContext
        else:
            from mujoco.osmesa import GLContext
        gl_context.GLContext = GLContext
        gl_context._MUJOCO_GL = wanted
        log.info("mujoco was imported before MUJOCO_GL=%s was set; switched its offscreen "
                 "backend to %s", wanted, wanted)
    except Exception as err:  # noqa: BLE001 - leave MuJoCo's choice; Renderer reports it
        log.warning("could not switch MuJoCo's OpenGL backend to %s: %s", wanted, err)


def _renderer_error(what: str, err: BaseException, hint: str = _INSTALL_HINT) -> RendererError:
    env = os.environ.get("MUJOCO_GL")
    backend = gl_backend()
    msg = (
        f"the MuJoCo offscreen renderer could not {what} "
        f"(MUJOCO_GL={env!r}, backend in use {backend!r}): {type(err).__name__}: {err}. "
        f"{hint}"
    )
    if env is not None and backend != env.lower().strip():
        msg += (
            " Note: mujoco was imported before MUJOCO_GL had this value; set MUJOCO_GL in the "
            "environment before Python starts."
        )
    return RendererError(msg)


class OffscreenRenderer:
    """Renders the named cameras of one model at one image size.

    Shadows, reflections, the skybox and multisampling are off; sites and collision geoms are
    hidden. One OpenGL context per instance; reuse it for every frame of that size. The context
    is current on the thread that created the renderer, and only that thread may render (EGL
    refuses to make it current on a second one).
    """

    def __init__(self, model: mujoco.MjModel, height: int, width: int):
        self.height, self.width = int(height), int(width)
        self._model = model
        # The offscreen framebuffer must hold the image.
        if model.vis.global_.offwidth < self.width:
            model.vis.global_.offwidth = self.width
        if model.vis.global_.offheight < self.height:
            model.vis.global_.offheight = self.height
        model.vis.quality.offsamples = 0
        _align_backend()
        self._thread = threading.current_thread()
        try:
            self._renderer = mujoco.Renderer(model, self.height, self.width)
        except Exception as err:  # noqa: BLE001 - any backend failure is a renderer failure
            raise _renderer_error("start", err) from err
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        flags[mujoco.mjtRndFlag.mjRND_FOG] = 0
        flags[mujoco.mjtRndFlag.mjRND_HAZE] = 0
        self._option = mujoco.MjvOption()
        self._option.sitegroup[:] = 0
        self._option.geomgroup[:] = 0
        self._option.geomgroup[0] = 1  # visual geoms only
        self._cameras: dict[str, mujoco.MjvCamera] = {}
        log.debug("offscreen renderer %dx%d started (MUJOCO_GL=%s)", self.width, self.height,
                  os.environ.get("MUJOCO_GL"))

    def _camera(self, name: str) -> mujoco.MjvCamera:
        cam = self._cameras.get(name)
        if cam is None:
            cid = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if cid < 0:
                raise RendererError(f"the model has no camera named {name!r}")
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            cam.fixedcamid = cid
            self._cameras[name] = cam
        return cam

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """An RGB frame (height x width x 3, uint8) of ``camera`` in the state ``data``."""
        if self._renderer is None:
            raise RendererError("render() called after close()")
        if threading.current_thread() is not self._thread:
            raise RendererError(
                f"the MuJoCo offscreen renderer was asked to render from thread "
                f"{threading.current_thread().name!r}, but its OpenGL context belongs to thread "
                f"{self._thread.name!r}, which created it: render on that thread")
        try:
            self._renderer.update_scene(data, camera=self._camera(camera),
                                        scene_option=self._option)
            return self._renderer.render()
        except RendererError:
            raise
        except Exception as err:  # noqa: BLE001
            # it started, so the libraries are there: no installation hint
            raise _renderer_error("render a frame", err, hint="") from err

    def close(self) -> None:
        r, self._renderer = getattr(self, "_renderer", None), None
        if r is not None:
            r.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass
