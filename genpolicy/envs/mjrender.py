"""Offscreen MuJoCo renderers, one per frame size, shared by the adapters that render with `mujoco.Renderer`."""

from __future__ import annotations

import atexit
import hashlib
import weakref
from typing import Any

import mujoco
import numpy as np

# Everything that holds a GL context and has not been closed yet. mujoco.egl registers `eglTerminate` with atexit
# when it makes its first context; a context still alive after that is freed by __del__ during interpreter teardown
# and prints an EGLError traceback. `close_all` closes them first (atexit runs the newest registration first, so
# `track` re-registers it after every new context), and the CLI calls it before it returns.
_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()


def track(owner: Any) -> None:
    """Close `owner` (anything with close() that owns a GL context) before the GL display is terminated."""
    _LIVE.add(owner)
    atexit.unregister(close_all)
    atexit.register(close_all)


def close_all() -> None:
    """Close every tracked GL owner that is still alive (idempotent)."""
    for owner in list(_LIVE):
        try:
            owner.close()
        except Exception:  # at exit a half-torn-down owner must not stop the others from closing
            pass
    _LIVE.clear()


def _signature(model: Any, fast: bool) -> tuple:
    """What a GL context depends on: the model's rendering assets (textures, meshes, materials, sizes) and the quality
    settings read at context creation. Envs of one task share it, so they can share one renderer."""
    h = hashlib.sha1()
    for name in ("tex_data", "mesh_vert", "mesh_face", "mat_rgba", "geom_size", "geom_type", "geom_dataid"):
        arr = getattr(model, name, None)
        if arr is not None:
            h.update(np.ascontiguousarray(arr).tobytes())
    g = model.vis.global_
    return (model.ngeom, model.nmesh, model.ntex, model.nmat, model.nskin, getattr(model, "nflex", 0),
            g.offwidth, g.offheight, model.vis.quality.offsamples, fast, h.hexdigest())


class _Shared:
    """A mujoco.Renderer used by every RendererCache whose model has its signature; closed with its last user."""

    def __init__(self, renderer: mujoco.Renderer) -> None:
        self.renderer, self.users, self.closed = renderer, 0, False

    def close(self) -> None:
        self.renderer.close()
        self.closed = True


# (signature, size) -> renderer: one GL context per frame size and model layout in the process, however many envs
_SHARED: dict[tuple, _Shared] = {}


class RendererCache:
    """`render(data, camera, size)` -> uint8 (size, size, 3). `fast` turns off shadows and reflections, which cost
    most of a software-GL (llvmpipe) frame and change little. Renderers are shared by every cache in the process whose
    model has the same rendering assets (the N envs of one task in a fine-tuning or evaluation process use one GL
    context per frame size, not N): the scene is built from each caller's own model and data, only the context (its
    uploaded textures and meshes) and the frame buffer are shared. Call `close()` when done; the shared renderer closes
    with its last user, and one still open at exit is closed by `close_all` (mujoco.Renderer.__del__ during teardown
    would raise EGL errors)."""

    def __init__(self, model: Any, fast: bool = True) -> None:
        self.model, self.fast = model, fast
        self._sig: tuple | None = None  # computed on first render: adapters set offscreen sizes after building us
        self._renderers: dict[int, _Shared] = {}

    def render(self, data: Any, camera: Any, size: int) -> np.ndarray:
        shared = self._renderers.get(size)
        if shared is None or shared.closed:
            if self._sig is None:
                self._sig = _signature(self.model, self.fast)
            shared = _SHARED.get((self._sig, size))
            if shared is None or shared.closed:  # closed by close_all (the CLI's end) while this cache lived on
                renderer = mujoco.Renderer(self.model, height=size, width=size)
                if self.fast:  # scene flags persist across updates, so once is enough
                    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
                    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
                shared = _SHARED[(self._sig, size)] = _Shared(renderer)
                track(shared)  # after the context exists, so close_all runs before mujoco's eglTerminate
            shared.users += 1
            self._renderers[size] = shared
        renderer = shared.renderer
        if isinstance(camera, mujoco.MjvCamera):
            cam = camera
        else:
            cam_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) if isinstance(camera, str) \
                else int(camera)
            if cam_id < -1 or cam_id >= self.model.ncam:
                raise ValueError(f"camera {camera!r} does not exist")
            cam = mujoco.MjvCamera()
            cam.fixedcamid = cam_id
            cam.type = mujoco.mjtCamera.mjCAMERA_FIXED if cam_id >= 0 else mujoco.mjtCamera.mjCAMERA_FREE
            if cam_id == -1:
                mujoco.mjv_defaultFreeCamera(self.model, cam)
        # the scene from this env's own model and data (models of one signature differ only in what data reflects)
        mujoco.mjv_updateScene(self.model, data, _OPTION, None, cam, mujoco.mjtCatBit.mjCAT_ALL.value, renderer.scene)
        return np.ascontiguousarray(renderer.render())

    def close(self) -> None:
        for key, shared in list(self._renderers.items()):
            shared.users -= 1
            if shared.users <= 0:
                shared.close()
                _SHARED.pop((self._sig, key), None)
        self._renderers.clear()


_OPTION = mujoco.MjvOption()  # mujoco.Renderer's default scene option
