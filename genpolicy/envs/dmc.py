"""DeepMind Control Suite (dm-control 1.0.28) behind the genpolicy Env protocol.

Task names are ``dmc/<domain>-<task>``, e.g. ``dmc/cheetah-run``, ``dmc/ball_in_cup-catch``.

``state`` float32 is the task's observation OrderedDict flattened in the order of ``observation_spec()`` (the
order the task itself defines, e.g. walker: orientations, height, velocity); ``obs_layout`` lists
(key, start, stop) per block, and a step whose keys differ from that order raises instead of silently shifting.
Actions in [-1, 1] are scaled to the action spec's [minimum, maximum] (all [-1, 1] in the standard suite).
``image.<camera>`` uses the camera DrQ/DMC-benchmarks use (id 0, quadruped id 2). The default
``render_quality="full"`` renders with ``physics.render``, exactly as those benchmarks do (~50 fps at 84 px on
software GL); "fast" turns off shadows, reflections and MSAA (~125-250 fps, slightly different pictures). Keep it
fixed between data collection and evaluation.

DMC has no success notion: ``success`` is always False and the episode return is the metric (as for gym
locomotion). Episodes end by time limit (1000 steps), which is a truncation, never a termination.
"""

from __future__ import annotations

import os

# MuJoCo picks its GL backend at import time, so this must run before mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from typing import Any, Literal  # noqa: E402

import numpy as np  # noqa: E402
from dm_control import suite  # noqa: E402

from genpolicy.envs.base import EnvSpec  # noqa: E402
from genpolicy.envs.mjrender import RendererCache  # noqa: E402
from genpolicy.errors import ConfigError  # noqa: E402

# The tasks `genpolicy envs list` shows (the usual DMC benchmark set); any (domain, task) in suite.ALL_TASKS works.
TASKS = (
    "cheetah-run", "walker-walk", "walker-run", "walker-stand", "cartpole-swingup", "cartpole-balance",
    "reacher-easy", "reacher-hard", "finger-spin", "finger-turn_easy", "ball_in_cup-catch", "hopper-hop",
    "hopper-stand", "quadruped-walk", "quadruped-run", "pendulum-swingup", "acrobot-swingup", "humanoid-walk",
)
CAMERA_ID = {"quadruped": 2}  # default 0
SUCCESS_DEFINITION = "none (return-based suite): success is always False; compare episode returns"


def parse_task(task: str) -> tuple[str, str]:
    """Split "cheetah-run" into ("cheetah", "run"); a ConfigError names the valid tasks otherwise."""
    domain, _, name = task.partition("-")
    if (domain, name) not in suite.ALL_TASKS:
        known = ", ".join(f"dmc/{d}-{t}" for d, t in suite.ALL_TASKS)
        raise ConfigError(f"unknown dm_control task 'dmc/{task}'; known: {known}")
    return domain, name


class DMCEnv:
    """One dm_control task; state = flattened observations in a fixed key order, success always False.

    Args:
        task: "<domain>-<task>", e.g. "cheetah-run".
        seed: seeds the task's RandomState stream used by ``reset()`` without a seed.
        images: add ``image.<camera>`` (uint8 (3, H, W)).
        image_size / render_size: square sizes of image observations and ``render()`` frames.
        max_episode_steps: truncation horizon (default: the task's own limit, 1000 steps).
        render_quality: "full" (``physics.render``, as DMC benchmarks) or "fast" (no shadows, reflections or MSAA).
    """

    def __init__(self, task: str, seed: int = 0, images: bool = False, image_size: int = 84,
                 render_size: int = 256, max_episode_steps: int | None = None,
                 render_quality: Literal["fast", "full"] = "full") -> None:
        if render_quality not in ("fast", "full"):
            raise ConfigError(f"dmc render_quality must be 'fast' or 'full', got {render_quality!r}")
        domain, name = parse_task(task)
        self.render_quality = render_quality
        self.task = task
        self.images = images
        self.skip_images = False  # set by the chunk runner for steps whose frames no window can contain
        self.image_size, self.render_size = int(image_size), int(render_size)
        self._env = suite.load(domain, name, task_kwargs={"random": seed})
        model = self._env.physics.model
        need = max(self.image_size, self.render_size)  # offscreen buffers must hold the largest frame
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, need)
        model.vis.global_.offheight = max(model.vis.global_.offheight, need)
        if render_quality == "fast":
            model.vis.quality.offsamples = 0  # read when a Renderer is created, so set it first
        self._renderers = RendererCache(model.ptr)  # "fast" frames only; "full" uses physics.render
        self.camera_id = CAMERA_ID.get(domain, 0)
        self.camera = model.id2name(self.camera_id, "camera") or f"cam{self.camera_id}"
        layout, start = [], 0
        for key, arr_spec in self._env.observation_spec().items():
            size = int(np.prod(arr_spec.shape))
            layout.append((key, start, start + size))
            start += size
        self.obs_layout: tuple[tuple[str, int, int], ...] = tuple(layout)
        act = self._env.action_spec()
        self._low, self._high = act.minimum.astype(np.float64), act.maximum.astype(np.float64)
        da = int(act.shape[0])
        self._seed_rng = np.random.default_rng(seed)
        self._t = 0
        self._done = True
        self.spec = EnvSpec(
            name=f"dmc/{task}", state_dim=start, action_dim=da,
            action_low=-np.ones(da, np.float32), action_high=np.ones(da, np.float32),
            max_episode_steps=int(max_episode_steps or round(self._env._step_limit)),
            fps=float(1.0 / self._env.control_timestep()), success_definition=SUCCESS_DEFINITION,
            cameras=(self.camera,) if images else ())

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode; the same ``seed`` gives the same initial state."""
        if seed is None:
            seed = int(self._seed_rng.integers(2**31 - 1))
        # Task.initialize_episode draws from task.random; replacing it reseeds the episode start.
        self._env.task._random = np.random.RandomState(seed)
        ts = self._env.reset()
        self._t, self._done = 0, False
        return self._obs(ts.observation)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Scale a [-1, 1] action to the action spec and advance one control step."""
        if self._done:
            raise RuntimeError("call reset() before step() (episode ended or never started)")
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(self.spec.action_dim), -1.0, 1.0)
        ts = self._env.step(self._low + (a + 1.0) * 0.5 * (self._high - self._low))
        self._t += 1
        # dm_control marks a real termination with discount 0; the time limit ends with discount 1.
        terminated = bool(ts.last() and ts.discount == 0.0)
        truncated = (not terminated) and (ts.last() or self._t >= self.spec.max_episode_steps)
        self._done = terminated or truncated
        return self._obs(ts.observation), float(ts.reward or 0.0), terminated, truncated, {
            "success": False, "step": self._t}

    def render(self) -> np.ndarray:
        """uint8 (render_size, render_size, 3) frame from the task camera."""
        return self._render(self.render_size)

    def close(self) -> None:
        self._renderers.close()
        self._env.close()

    def _obs(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        keys = tuple(observation)
        if keys != tuple(k for k, _, _ in self.obs_layout):
            raise RuntimeError(f"dmc/{self.task}: observation keys {keys} differ from the layout {self.obs_layout}")
        state = np.concatenate([np.asarray(observation[k], dtype=np.float32).reshape(-1) for k in keys])
        obs = {"state": state}
        if not self.skip_images:
            obs.update(self.image_obs())
        return obs

    def image_obs(self) -> dict[str, np.ndarray]:
        """The current state's camera observation (rendered now; empty without images): envs.base.LazyImages."""
        if not self.images:
            return {}
        return {f"image.{self.camera}": np.ascontiguousarray(self._render(self.image_size).transpose(2, 0, 1))}

    def _render(self, size: int) -> np.ndarray:
        physics = self._env.physics
        if self.render_quality == "full":
            return np.ascontiguousarray(physics.render(height=size, width=size, camera_id=self.camera_id))
        return self._renderers.render(physics.data.ptr, self.camera_id, size)
