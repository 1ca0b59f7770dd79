"""Offscreen MuJoCo renderers, one per frame size, shared by the adapters that render with `mujoco.Renderer`."""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np


class RendererCache:
    """`render(data, camera, size)` -> uint8 (size, size, 3). `fast` turns off shadows and reflections, which cost
    most of a software-GL (llvmpipe) frame and change little. Call `close()`: mujoco.Renderer.__del__ at interpreter
    exit raises EGL errors."""

    def __init__(self, model: Any, fast: bool = True) -> None:
        self.model, self.fast = model, fast
        self._renderers: dict[int, mujoco.Renderer] = {}

    def render(self, data: Any, camera: Any, size: int) -> np.ndarray:
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = mujoco.Renderer(self.model, height=size, width=size)
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
