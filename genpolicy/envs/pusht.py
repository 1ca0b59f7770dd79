"""PushT (gym-pusht 0.1.8) behind the genpolicy Env protocol, laid out like the LeRobot PushT dataset.

Observations depend on the mode, because the two ways PushT is learned see different things:

* state mode (``images=False``): ``state`` float32 (5,) = gym-pusht's ``obs_type="state"`` vector
  ``[agent_x, agent_y, block_x, block_y, block_angle]`` (pixels, angle in [0, 2*pi)). The block pose is needed
  because nothing else shows it.
* images mode (``images=True``): ``state`` float32 (2,) = ``[agent_x, agent_y]`` and ``image.image`` uint8
  (3, 96, 96) = gym-pusht's ``obs_type="pixels_agent_pos"``. This is exactly the LeRobot PushT layout
  (``observation.state`` (2,) agent position, ``observation.image`` 96x96), which ``datasets/lerobot.py`` imports
  as ``state`` and ``image.image``; the block is seen only through the pixels.

Actions are the agent's target position in **pixel coordinates** (2,), clipped to the box [0, 512]^2 that
``spec.action_low/high`` reports. PushT is the one suite whose adapter box is not [-1, 1]: its demonstrations
(LeRobot ``pusht``, Diffusion Policy's zarr) store pixel targets, the policy's normaliser maps them to [-1, 1]
internally, so a policy trained on such a dataset drives this env without any conversion.

Success is gym-pusht's own: the T block's overlap with the goal T, ``coverage`` = intersection area / goal area,
must exceed ``success_threshold`` = 0.95; the env terminates there. ``info`` carries ``coverage`` and ``success``.
"""

from __future__ import annotations

import os

# pygame prints a banner on import; keep logs clean.
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from gym_pusht.envs.pusht import PushTEnv as _GymPushT  # noqa: E402

from genpolicy.envs.base import EnvSpec  # noqa: E402
from genpolicy.errors import ConfigError  # noqa: E402

TASKS = ("pusht",)
CAMERA = "image"  # LeRobot's single-camera key `observation.image` imports as `image.image`
STATE_DIM = {False: 5, True: 2}  # by images mode
ACTION_DIM = 2
ACTION_LOW, ACTION_HIGH = 0.0, 512.0  # pixel coordinates (gym-pusht's action_space)
MAX_EPISODE_STEPS = 300  # gym-pusht's registered TimeLimit
FPS = 10.0  # gym-pusht control_hz (10 physics substeps of 0.01 s per step)
SUCCESS_THRESHOLD = 0.95  # gym-pusht PushTEnv.success_threshold
SUCCESS_DEFINITION = (
    f"coverage > {SUCCESS_THRESHOLD} at any step, coverage = area(block T & goal T) / area(goal T) "
    "(gym-pusht's is_success, success_threshold=0.95); the episode terminates there"
)


def describe(task: str = "pusht", images: bool = False, max_episode_steps: int | None = None) -> EnvSpec:
    """The EnvSpec of ``PushTEnv(task, images=images)``, without building the simulator."""
    if task not in TASKS:
        raise ConfigError(f"unknown PushT task 'pusht/{task}'; known: {', '.join('pusht/' + t for t in TASKS)}")
    return EnvSpec(
        name=f"pusht/{task}", state_dim=STATE_DIM[images], action_dim=ACTION_DIM,
        action_low=np.full(ACTION_DIM, ACTION_LOW, np.float32),
        action_high=np.full(ACTION_DIM, ACTION_HIGH, np.float32),
        max_episode_steps=int(max_episode_steps or MAX_EPISODE_STEPS), fps=FPS,
        success_definition=SUCCESS_DEFINITION, cameras=(CAMERA,) if images else ())


class PushTEnv:
    """One PushT env; ``images`` chooses the LeRobot pixels layout (see the module docstring).

    Args:
        task: "pusht" (the only task).
        seed: seeds the stream of episode seeds used by ``reset()`` without a seed.
        images: pixels + agent position (LeRobot layout) instead of the 5-d state.
        image_size: square size of ``image.image`` (LeRobot PushT uses 96).
        render_size: square size of ``render()`` frames (with gym-pusht's red cross at the last action).
        max_episode_steps: truncation horizon (default 300, gym-pusht's).
    """

    def __init__(self, task: str = "pusht", seed: int = 0, images: bool = False, image_size: int = 96,
                 render_size: int = 384, max_episode_steps: int | None = None) -> None:
        self.spec = describe(task, images, max_episode_steps)
        self.images = images
        self._env = _GymPushT(obs_type="pixels_agent_pos" if images else "state", render_mode="rgb_array",
                              observation_width=image_size, observation_height=image_size,
                              visualization_width=render_size, visualization_height=render_size)
        if self._env.success_threshold != SUCCESS_THRESHOLD:
            # Our success_definition quotes the threshold; refuse to report a number under a wrong definition.
            raise ConfigError(f"gym-pusht success_threshold is {self._env.success_threshold}, genpolicy's "
                              f"PushT success_definition says {SUCCESS_THRESHOLD}")
        self._rng = np.random.default_rng(seed)
        self._t = 0
        self._done = True

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode; the same ``seed`` gives the same agent and block start."""
        if seed is None:
            seed = int(self._rng.integers(2**31 - 1))
        raw, _ = self._env.reset(seed=seed)
        self._t, self._done = 0, False
        return self._obs(raw)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Move the agent towards a pixel target; reward is gym-pusht's clip(coverage / 0.95, 0, 1)."""
        if self._done:
            raise RuntimeError("call reset() before step() (episode ended or never started)")
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM), ACTION_LOW, ACTION_HIGH)
        raw, reward, terminated, _, info = self._env.step(a)
        self._t += 1
        success = bool(info["is_success"])
        truncated = (not terminated) and self._t >= self.spec.max_episode_steps
        self._done = bool(terminated) or truncated
        return self._obs(raw), float(reward), bool(terminated), truncated, {
            "success": success, "coverage": float(info["coverage"]), "step": self._t}

    def render(self) -> np.ndarray:
        """uint8 (render_size, render_size, 3) top-down frame."""
        return np.ascontiguousarray(self._env.render())

    def close(self) -> None:
        self._env.close()

    @property
    def unwrapped(self) -> Any:
        """The gym-pusht PushTEnv (debugging only)."""
        return self._env

    def _obs(self, raw: Any) -> dict[str, np.ndarray]:
        if not self.images:
            return {"state": np.asarray(raw, dtype=np.float32)}
        return {"state": np.asarray(raw["agent_pos"], dtype=np.float32),
                f"image.{CAMERA}": np.ascontiguousarray(np.asarray(raw["pixels"], dtype=np.uint8).transpose(2, 0, 1))}
