"""Franka Kitchen (gymnasium-robotics 1.4.2 ``FrankaKitchen-v1``) with the standard four subtasks.

Task ``kitchen/microwave-kettle-switch-slide``: open the microwave, move the kettle to the top burner, turn on the
light switch, open the slide cabinet (the D4RL "mixed/complete" goal set), in any order.

``info["subtasks_completed"]`` (int, 0..4) counts the subtasks gymnasium-robotics has marked complete this episode
(``len(episode_task_completions)``); ``info["completed_subtasks"]`` names them. ``info["success"]`` is True only
when all four are complete. The reward is the env's: the number of subtasks first completed at this step.
Completion is sticky (surprising but upstream's semantics): a subtask counts once its joints came within 0.3
(L2) of the goal at any step, even if the robot later undoes it.

``state`` float32 (59,) is the env's ``observation`` vector, in this fixed order::

    [0:9]    robot joint positions (7 arm joints, 2 finger joints)      \\ with gymnasium-robotics' default
    [9:18]   robot joint velocities                                      / observation noise (ratio 0.01)
    [18:39]  object joint positions (qpos[9:30]: burner knobs and burners, light switch, slide and hinge
             cabinets, microwave door, kettle free joint xyz + quat wxyz)
    [39:59]  object joint velocities (qvel[9:29])

The goal is fixed for this task, so it is not part of the state. Actions (9,) are joint velocity commands in
[-1, 1] (the env's own box). ``image.overview`` is rendered from gymnasium-robotics' default viewer camera.
"""

from __future__ import annotations

import os

# MuJoCo picks its GL backend at import time, so this must run before mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from typing import Any  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium_robotics.envs.franka_kitchen.franka_env import DEFAULT_CAMERA_CONFIG  # noqa: E402
from gymnasium_robotics.envs.franka_kitchen.kitchen_env import BONUS_THRESH, KitchenEnv as _GymKitchen  # noqa: E402

from genpolicy.envs.base import EnvSpec  # noqa: E402
from genpolicy.envs.mjrender import RendererCache  # noqa: E402
from genpolicy.errors import ConfigError  # noqa: E402

SUBTASKS = ("microwave", "kettle", "light switch", "slide cabinet")
TASKS = {"microwave-kettle-switch-slide": SUBTASKS}
STATE_DIM = 59
ACTION_DIM = 9
MAX_EPISODE_STEPS = 280  # FrankaKitchen-v1's registered TimeLimit
FPS = 12.5  # frame_skip 40 x timestep 2 ms = 80 ms per step (checked against the model in KitchenEnv)
CAMERA = "overview"
SUCCESS_DEFINITION = (
    "all 4 subtasks (microwave, kettle, light switch, slide cabinet) completed in the episode; each counts once "
    "its joints came within 0.3 (L2) of the goal at any step (gymnasium-robotics, sticky). "
    "info['subtasks_completed'] reports the 0-4 count separately"
)


def describe(task: str = "microwave-kettle-switch-slide", images: bool = False,
             max_episode_steps: int | None = None) -> EnvSpec:
    """The EnvSpec of ``KitchenEnv(task, images=images)``, without building the simulator."""
    if task not in TASKS:
        raise ConfigError(f"unknown kitchen task 'kitchen/{task}'; known: {', '.join('kitchen/' + t for t in TASKS)}")
    return EnvSpec(
        name=f"kitchen/{task}", state_dim=STATE_DIM, action_dim=ACTION_DIM,
        action_low=-np.ones(ACTION_DIM, np.float32), action_high=np.ones(ACTION_DIM, np.float32),
        max_episode_steps=int(max_episode_steps or MAX_EPISODE_STEPS), fps=FPS,
        success_definition=SUCCESS_DEFINITION, cameras=(CAMERA,) if images else ())


class KitchenEnv:
    """FrankaKitchen-v1 with the four standard subtasks; success = all four, count in ``subtasks_completed``.

    Args:
        task: "microwave-kettle-switch-slide".
        seed: seeds the stream of episode seeds used by ``reset()`` without a seed (observation noise).
        images: add ``image.overview`` (uint8 (3, H, W)).
        image_size / render_size: square sizes of image observations and ``render()`` frames.
        max_episode_steps: truncation horizon (default 280, FrankaKitchen-v1's).
    """

    def __init__(self, task: str = "microwave-kettle-switch-slide", seed: int = 0, images: bool = False,
                 image_size: int = 84, render_size: int = 256, max_episode_steps: int | None = None) -> None:
        self.spec = describe(task, images, max_episode_steps)
        if BONUS_THRESH != 0.3:
            raise ConfigError(f"gymnasium-robotics kitchen threshold is {BONUS_THRESH}, "
                              "our success_definition says 0.3")
        self.subtasks = TASKS[task]
        self.images = images
        self.skip_images = False  # set by the chunk runner for steps whose frames no window can contain
        self.image_size, self.render_size = int(image_size), int(render_size)
        self._env = _GymKitchen(tasks_to_complete=list(self.subtasks))
        model = self._env.model
        need = max(self.image_size, self.render_size)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, need)
        model.vis.global_.offheight = max(model.vis.global_.offheight, need)
        # No 4x MSAA: read when a Renderer is created; on software GL it triples the frame rate (12 -> 39 fps at 84 px).
        model.vis.quality.offsamples = 0
        self._renderers = RendererCache(self._env.model)
        self._camera = mujoco.MjvCamera()
        self._camera.distance = DEFAULT_CAMERA_CONFIG["distance"]
        self._camera.azimuth = DEFAULT_CAMERA_CONFIG["azimuth"]
        self._camera.elevation = DEFAULT_CAMERA_CONFIG["elevation"]
        self._camera.lookat[:] = DEFAULT_CAMERA_CONFIG["lookat"]
        self._rng = np.random.default_rng(seed)
        self._t = 0
        self._done = True
        if abs(self._env.robot_env.dt * FPS - 1.0) > 1e-9:
            raise ConfigError(f"gymnasium-robotics kitchen steps every {self._env.robot_env.dt} s; "
                              f"genpolicy assumes {FPS} Hz")

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode; the same ``seed`` gives the same (noisy) first observation."""
        if seed is None:
            seed = int(self._rng.integers(2**31 - 1))
        raw, _ = self._env.reset(seed=seed)
        self._t, self._done = 0, False
        return self._obs(raw)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply joint velocity commands in [-1, 1]; terminates when all four subtasks are complete."""
        if self._done:
            raise RuntimeError("call reset() before step() (episode ended or never started)")
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM), -1.0, 1.0)
        raw, reward, terminated, _, info = self._env.step(a)
        self._t += 1
        done_tasks = tuple(info["episode_task_completions"])
        success = all(t in done_tasks for t in self.subtasks)
        truncated = (not terminated) and self._t >= self.spec.max_episode_steps
        self._done = bool(terminated) or truncated
        return self._obs(raw), float(reward), bool(terminated), truncated, {
            "success": success, "subtasks_completed": len(done_tasks), "completed_subtasks": done_tasks,
            "step": self._t}

    def render(self) -> np.ndarray:
        """uint8 (render_size, render_size, 3) frame from the overview camera."""
        return self._render(self.render_size)

    def close(self) -> None:
        self._renderers.close()
        self._env.close()

    @property
    def unwrapped(self) -> Any:
        """The gymnasium-robotics KitchenEnv (tests and debugging)."""
        return self._env

    def _obs(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        obs = {"state": np.asarray(raw["observation"], dtype=np.float32)}
        if not self.skip_images:
            obs.update(self.image_obs())
        return obs

    def image_obs(self) -> dict[str, np.ndarray]:
        """The current state's camera observation (rendered now; empty without images): envs.base.LazyImages."""
        if not self.images:
            return {}
        return {f"image.{CAMERA}": np.ascontiguousarray(self._render(self.image_size).transpose(2, 0, 1))}

    def _render(self, size: int) -> np.ndarray:
        return self._renderers.render(self._env.data, self._camera, size)
