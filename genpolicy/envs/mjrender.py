"""Offscreen MuJoCo renderers, one per frame size, shared by the adapters that render with `mujoco.Renderer`."""

from __future__ import annotations

import atexit
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


class RendererCache:
    """`render(data, camera, size)` -> uint8 (size, size, 3). `fast` turns off shadows and reflections, which cost
    most of a software-GL (llvmpipe) frame and change little. Call `close()` when done; one still open at exit is
    closed by `close_all` (mujoco.Renderer.__del__ during teardown would raise EGL errors)."""

    def __init__(self, model: Any, fast: bool = True) -> None:
        self.model, self.fast = model, fast
        self._renderers: dict[int, mujoco.Renderer] = {}

    def render(self, data: Any, camera: Any, size: int) -> np.ndarray:
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = mujoco.Renderer(self.model, height=size, width=size)
            track(self)  # after the context exists, so close_all runs before mujoco's eglTerminate
            if self.fast:  # scene flags persist across update_scene calls, so once is enough
                renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
                renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            self._renderers[size] = renderer
        renderer.update_scene(data, camera=camera)
        return np.ascontiguousarray(renderer.render())

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
