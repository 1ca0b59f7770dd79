"""Meta-World v3 (metaworld==3.1.1) adapter and its shipped scripted experts.

Default goal sampling is "uniform": every episode draws a fresh object/goal layout from the task's own
distribution, so evaluation layouts are never the demonstration layouts (MT1's fixed pool of 50 would be).

Observation: ``{"state": float32 (39,)}`` -- Meta-World's full state (hand xyz, gripper opening, two object
pose slots, the previous frame's 18 values, and the goal xyz) -- plus ``"image.<cam>": uint8 (3, H, W)`` per
camera when ``images=True``.

Design notes (see REPORT.md for the measurements behind them):

* We build the raw task class from ``metaworld.env_dict.ALL_V3_ENVIRONMENTS`` and drive it with tasks from
  ``metaworld.MT1``. We do not use ``gymnasium.make("Meta-World/MT1")``: its ``RandomTaskSelectWrapper`` draws
  the task *before* ``reset(seed=...)`` reseeds anything, and ``SawyerXYZEnv.reset`` ignores ``seed``, so
  ``reset(seed=s)`` there does not give the same initial state for the same ``s``.
* MT1 tasks carry ``partially_observable=False``, so the goal xyz (``state[36:39]``) is visible. With the
  goal hidden (ML benchmarks / ``-goal-hidden`` classes) those three entries are zeros, behaviour cloning is
  ill-posed and the shipped scripted policies themselves fail on goal-conditioned tasks (they read obs[-3:]).
* Images are rendered with our own ``mujoco.Renderer`` so the observation size (84) and the viewer size (224)
  can differ and any camera can be used, independent of gymnasium's single-size ``MujocoRenderer``.
"""

from __future__ import annotations

import os

# MuJoCo picks its GL backend at import time, so this must run before mujoco/metaworld are imported.
os.environ.setdefault("MUJOCO_GL", "egl")

import functools  # noqa: E402
import warnings  # noqa: E402
from typing import Any, Literal  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.utils import seeding  # noqa: E402

import metaworld  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # noqa: E402
from metaworld.policies import ENV_POLICY_MAP  # noqa: E402

from genpolicy.envs.base import EnvSpec  # noqa: E402
from genpolicy.envs.mjrender import RendererCache  # noqa: E402
from genpolicy.errors import ConfigError  # noqa: E402

# The scripted policies' `move()` warns on almost every step that its gain saturates the [-1, 1] action
# range; that is expected (the env clips) and would flood logs, so silence exactly that message.
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)

GoalSampling = Literal["mt1", "uniform"]
RenderQuality = Literal["fast", "full"]

STATE_DIM = 39
ACTION_DIM = 4
DEFAULT_MAX_EPISODE_STEPS = 500  # Meta-World's own `max_path_length`; see REPORT.md for what experts need.
FPS = 80.0  # frame_skip 5 x timestep 2.5 ms = 12.5 ms per step
DEFAULT_CAMERA = "corner"  # close oblique view of the table; objects stay large even at 84x84 (see REPORT.md)
SUCCESS_DEFINITION = (
    "info['success'] == 1 at any step (Meta-World's own per-task success check, computed by "
    "evaluate_state); the episode terminates at the first such step"
)


def _normalise_task(task: str) -> str:
    """Accept "drawer-open-v3", "metaworld/drawer-open-v3" or "drawer-open" and return "drawer-open-v3"."""
    name = task.split("/", 1)[1] if task.startswith("metaworld/") else task
    if not name.endswith("-v3"):
        name = f"{name}-v3"
    if name not in ALL_V3_ENVIRONMENTS:
        known = ", ".join(sorted(ALL_V3_ENVIRONMENTS))
        raise ConfigError(f"unknown Meta-World v3 task {task!r}; known (metaworld/<name>): {known}")
    return name


def describe(task: str, images: bool = False, max_episode_steps: int | None = None) -> EnvSpec:
    """The EnvSpec of ``MetaWorldEnv(task, images=images)`` without building it (MT1 layouts take ~1 s)."""
    return EnvSpec(name=f"metaworld/{_normalise_task(task)}", state_dim=STATE_DIM, action_dim=ACTION_DIM,
                   action_low=-np.ones(ACTION_DIM, np.float32), action_high=np.ones(ACTION_DIM, np.float32),
                   max_episode_steps=int(max_episode_steps or DEFAULT_MAX_EPISODE_STEPS), fps=FPS,
                   success_definition=SUCCESS_DEFINITION, cameras=(DEFAULT_CAMERA,) if images else ())


@functools.lru_cache(maxsize=64)
def _mt1_tasks(task: str, seed: int) -> tuple:
    """MT1's 50 layouts for (task, seed); cached because building them costs ~1 s and every env needs them."""
    return tuple(metaworld.MT1(task, seed=seed).train_tasks)


def list_tasks() -> list[str]:
    """All Meta-World v3 task names that also ship a scripted expert (currently all 50)."""
    return sorted(name for name in ALL_V3_ENVIRONMENTS if name in ENV_POLICY_MAP)


class MetaWorldEnv:
    """One Meta-World v3 task with per-episode randomised object/goal positions, reproducible from seeds.

    Args:
        task: e.g. "drawer-open-v3".
        seed: seeds the MT1 goal pool (``metaworld.MT1(task, seed=seed)``) and the episode-seed stream used
            by ``reset()`` without a seed.
        images: add ``image.<cam>`` observations for every camera in ``cameras``.
        image_size: square size of image observations.
        render_size: square size of ``render()`` frames.
        max_episode_steps: truncation horizon (default 500, Meta-World's).
        cameras: cameras for image observations.
        render_camera: camera used by ``render()``.
        render_quality: "fast" turns off shadows (three 4096^2 shadow maps), reflections and 4x MSAA. On a
            CPU-only machine EGL runs on Mesa llvmpipe, where "full" renders ~4-6 fps at any size vs ~40-50
            fps at 224 px for "fast"; the images look nearly the same. Keep it fixed between data collection
            and evaluation.
        goal_sampling: "mt1" picks one of MT1's 50 pre-sampled goals per episode (the official benchmark
            protocol; the pool depends on ``seed``). "uniform" samples a fresh configuration per episode from
            the same per-task distribution (Meta-World's own rejection sampler), so train and eval seeds never
            share a configuration.
    """

    def __init__(
        self,
        task: str,
        seed: int = 0,
        images: bool = False,
        image_size: int = 84,
        render_size: int = 224,
        max_episode_steps: int | None = None,
        cameras: tuple[str, ...] = (DEFAULT_CAMERA,),
        render_camera: str = DEFAULT_CAMERA,
        goal_sampling: GoalSampling = "uniform",
        render_quality: RenderQuality = "fast",
    ) -> None:
        self.task = _normalise_task(task)
        self.images = images
        self.image_size = int(image_size)
        self.render_size = int(render_size)
        self.cameras = tuple(cameras)
        self.render_camera = render_camera
        self.goal_sampling: GoalSampling = goal_sampling
        self.render_quality: RenderQuality = render_quality
        self.max_episode_steps = int(max_episode_steps or DEFAULT_MAX_EPISODE_STEPS)

        # MT1 builds its 50 tasks under np.random.seed(seed) and restores the global state afterwards.
        self._tasks = _mt1_tasks(self.task, seed)
        self._env = ALL_V3_ENVIRONMENTS[self.task]()
        # set_task also switches the env to goal-observable (MT tasks carry partially_observable=False).
        self._env.set_task(self._tasks[0])
        if goal_sampling == "uniform":
            # Let reset_model draw (with rejection of invalid layouts) from env.np_random, which we reseed
            # per episode; the unseeded alternative uses the global np.random.
            self._env._freeze_rand_vec = False
            self._env.seeded_rand_vec = True
        elif goal_sampling != "mt1":
            raise ConfigError(f"goal_sampling must be 'mt1' or 'uniform', got {goal_sampling!r}")
        # SawyerXYZEnv.step raises once curr_path_length reaches max_path_length, so it must be >= ours.
        self._env.max_path_length = self.max_episode_steps

        model = self._env.model
        for cam in (*self.cameras, self.render_camera):
            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                raise ConfigError(f"unknown camera {cam!r}")
        # Offscreen buffers must be at least as large as the largest frame we request.
        need = max(self.image_size, self.render_size)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, need)
        model.vis.global_.offheight = max(model.vis.global_.offheight, need)
        if render_quality == "fast":
            model.vis.quality.offsamples = 0  # read when a Renderer is created, so set it first
        elif render_quality != "full":
            raise ConfigError(f"render_quality must be 'fast' or 'full', got {render_quality!r}")
        self._renderers = RendererCache(model, fast=render_quality == "fast")

        self._rng = np.random.default_rng(seed)
        self._raw_obs: np.ndarray = np.zeros(STATE_DIM)
        self._t = 0
        self._done = True
        self.skip_images = False  # envs.base.LazyImages: the chunk runner skips frames no window can contain
        self.spec = EnvSpec(
            name=f"metaworld/{self.task}",
            state_dim=STATE_DIM,
            action_dim=ACTION_DIM,
            action_low=self._env.action_space.low.astype(np.float32),
            action_high=self._env.action_space.high.astype(np.float32),
            max_episode_steps=self.max_episode_steps,
            fps=float(1.0 / self._env.dt),  # frame_skip 5 x timestep 2.5 ms = 12.5 ms per step -> 80 Hz
            success_definition=SUCCESS_DEFINITION,
            cameras=self.cameras if images else (),
        )

    # ------------------------------------------------------------------ core API

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode. The same ``seed`` (with the same constructor seed) gives the same initial state."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        if self.goal_sampling == "mt1":
            self._env.set_task(self._tasks[int(self._rng.integers(len(self._tasks)))])
        else:
            self._env.np_random, _ = seeding.np_random(int(self._rng.integers(2**31 - 1)))
        # MujocoEnv.reset calls mj_resetData first, so the initial state does not depend on history.
        raw, _ = self._env.reset()
        self._raw_obs = np.asarray(raw, dtype=np.float64)
        self._t = 0
        self._done = False
        return self._obs()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply one 4-d action (dxyz, gripper) in [-1, 1]; terminate on success, truncate at the horizon."""
        if self._done:
            raise RuntimeError("call reset() before step() (episode ended or never started)")
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(ACTION_DIM), -1.0, 1.0)
        # Meta-World clips only the xyz part; the gripper command goes to the actuators unclipped, hence ours.
        raw, reward, _, _, mw_info = self._env.step(a)
        self._raw_obs = np.asarray(raw, dtype=np.float64)
        self._t += 1
        success = bool(mw_info.get("success", 0.0) >= 1.0)
        terminated = success
        truncated = (not terminated) and self._t >= self.max_episode_steps
        self._done = terminated or truncated
        info = {k: float(v) for k, v in mw_info.items() if k != "success"}
        info["success"] = success
        info["step"] = self._t
        return self._obs(), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """Offscreen RGB frame (render_size x render_size x 3, uint8) from ``render_camera``, upright."""
        return self._render_camera(self.render_camera, self.render_size)

    def close(self) -> None:
        # Free GL contexts explicitly: letting mujoco.Renderer.__del__ run at interpreter exit raises EGL errors.
        self._renderers.close()
        self._env.close()

    # ------------------------------------------------------------------ extras

    @property
    def raw_state(self) -> np.ndarray:
        """Latest float64 observation exactly as Meta-World returned it (what the scripted experts expect)."""
        return self._raw_obs

    @property
    def unwrapped(self) -> Any:
        """The underlying SawyerXYZEnv (for debugging; not part of the stable interface)."""
        return self._env

    # ------------------------------------------------------------------ internals

    def image_obs(self) -> dict[str, np.ndarray]:
        """The current state's ``image.<cam>`` observations (rendered now; empty without images)."""
        if not self.images:
            return {}
        return {f"image.{cam}": np.ascontiguousarray(self._render_camera(cam, self.image_size).transpose(2, 0, 1))
                for cam in self.cameras}

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"state": self._raw_obs.astype(np.float32)}
        if not self.skip_images:
            obs.update(self.image_obs())
        return obs

    def _render_camera(self, camera: str, size: int) -> np.ndarray:
        img = self._renderers.render(self._env.data, camera, size)
        if self._is_upside_down(camera):
            # Rotate by 180 degrees (not a vertical flip, which would mirror the scene): equivalent to
            # rolling the camera so that its image "up" points to world +z.
            img = img[::-1, ::-1]
        return np.ascontiguousarray(img)

    def _is_upside_down(self, camera: str) -> bool:
        """True if the camera's image-up axis points below the horizon (Meta-World's corner/corner2..4 do)."""
        cam_id = mujoco.mj_name2id(self._env.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        # cam_xmat columns are the camera frame axes in world coordinates; column 1 is image-up.
        up_world_z = self._env.data.cam_xmat[cam_id].reshape(3, 3)[2, 1]
        return bool(up_world_z < 0.0)


class MetaWorldExpert:
    """Meta-World's shipped scripted policy for a task, with optional Gaussian noise and a random detour.

    Args:
        task: e.g. "drawer-open-v3".
        noise: std of Gaussian noise added to every action dimension, then clipped to [-1, 1].
        detour_prob: per-episode probability of a detour: starting at a random step, for a random number of
            steps the xyz command is replaced by a fixed random unit direction at full speed (gripper command
            stays the expert's, so a held object is not dropped on purpose); afterwards the expert resumes
            from wherever the hand ended up.
        seed: seeds noise and detours. ``reset(seed)`` reseeds for per-episode reproducibility.
        detour_start: half-open range [lo, hi) of the detour's first step.
        detour_len: half-open range [lo, hi) of the detour length in steps (1 cm per step at full speed).
    """

    def __init__(
        self,
        task: str,
        noise: float = 0.0,
        detour_prob: float = 0.0,
        seed: int = 0,
        detour_start: tuple[int, int] = (0, 60),
        detour_len: tuple[int, int] = (5, 25),
    ) -> None:
        self.task = _normalise_task(task)
        self.noise = float(noise)
        self.detour_prob = float(detour_prob)
        self.detour_start = detour_start
        self.detour_len = detour_len
        self._policy = ENV_POLICY_MAP[self.task]()
        self._rng = np.random.default_rng(seed)
        self._t = 0
        self._detour: tuple[int, int, np.ndarray] | None = None
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Call at the start of every episode; draws whether/when/where this episode detours."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._t = 0
        self._detour = None
        # Always consume the same number of draws so the noise stream does not depend on detour_prob.
        u = self._rng.random()
        start = int(self._rng.integers(*self.detour_start))
        length = int(self._rng.integers(*self.detour_len))
        direction = self._rng.normal(size=3)
        direction /= np.linalg.norm(direction) + 1e-12
        if u < self.detour_prob:
            self._detour = (start, start + length, direction)

    @property
    def detouring(self) -> bool:
        """Whether the action returned by the last ``act`` call was part of a detour."""
        d = self._detour
        return d is not None and d[0] <= self._t - 1 < d[1]

    def act(self, env: MetaWorldEnv | None, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Expert action (float32, shape (4,)) for the current observation."""
        # Prefer the env's float64 state: the scripted policies use hard distance thresholds.
        state = env.raw_state if isinstance(env, MetaWorldEnv) else np.asarray(obs["state"], dtype=np.float64)
        action = np.asarray(self._policy.get_action(state), dtype=np.float64)
        d = self._detour
        if d is not None and d[0] <= self._t < d[1]:
            action[:3] = d[2]
        if self.noise > 0.0:
            action = action + self._rng.normal(0.0, self.noise, size=action.shape)
        self._t += 1
        return np.clip(action, -1.0, 1.0).astype(np.float32)
