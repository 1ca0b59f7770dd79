"""robosuite 1.5.2 adapter (Lift, PickPlaceCan, NutAssemblySquare, TwoArmTransport); experts for Lift and Can.

Single-env, gymnasium-like, numpy-only interface on top of robosuite 1.5.2:

* Panda arm, default composite controller "BASIC" = OSC_POSE (delta actions in [-1, 1]^7:
  dx, dy, dz, dax, day, daz, gripper). Position deltas are scaled to 0.05 m/step, rotation
  deltas to 0.5 rad/step, both in the robot base frame (identical to the world frame here,
  the base is not rotated). Gripper: sign only, -1 opens, +1 closes.
* ``obs["state"]`` is a float32 vector of 19 entries, in this fixed order::

      [0:3]   eef_pos        robot0_eef_pos (grip site, world frame)
      [3:7]   eef_quat       robot0_eef_quat (xyzw; hand *body* quaternion, robomimic convention)
      [7:9]   gripper_qpos   robot0_gripper_qpos (two finger joints)
      [9:12]  obj_pos        cube_pos / Can_pos (world frame)
      [12:16] obj_quat       cube_quat / Can_quat (xyzw)
      [16:19] obj_to_eef     obj_pos - eef_pos (world frame)

* ``robosuite/square`` and ``robosuite/transport`` use robomimic's low-dim layout instead: ``state`` is the
  concatenation of ``ROBOMIMIC_STATE_KEYS[task]`` (``object`` = robosuite's ``object-state``, which is what
  robomimic stores under ``obs/object``)::

      square     robot0_eef_pos(3) robot0_eef_quat(4) robot0_gripper_qpos(2) object(14)              = 23
      transport  robot0_eef_pos robot0_eef_quat robot0_gripper_qpos robot1_eef_pos robot1_eef_quat
                 robot1_gripper_qpos object(41)                                                      = 59

  so ``import_robomimic(path, state_keys=list(ROBOMIMIC_STATE_KEYS[task]))`` (or ``genpolicy data convert
  ... state_keys=[...]``) yields exactly this ``state``. Lift's 19-d layout above is the same concatenation
  (robosuite 1.5.2's Lift ``object-state`` = cube_pos, cube_quat, cube_pos - eef_pos), so it has keys too; Can's
  is not (robomimic's Can ``object`` is 14-d, with the relative pose in the gripper frame), so it has none.
  The values are robosuite 1.5.2's; files recorded with another robosuite version were not checked here.
* Reward is sparse: 1.0 on a step where ``env._check_success()`` holds, else 0.0.
  ``terminated`` is True on success (configurable); ``truncated`` at ``max_episode_steps``.
* Resets are soft (``hard_reset=False``): ~5 ms instead of ~1-2 s for a full XML reload. The
  only model-level randomisation lost is Lift's cube size, which is then fixed per env instance.

Import this module before anything else imports mujoco, or set ``MUJOCO_GL=egl`` yourself.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # must happen before mujoco is imported

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import robosuite as suite
from robosuite.controllers import load_composite_controller_config
from robosuite.utils.binding_utils import MjRenderContextOffscreen
from robosuite.utils.control_utils import orientation_error

from genpolicy.envs.base import EnvSpec
from genpolicy.errors import ConfigError

__all__ = [
    "RobosuiteEnv",
    "LiftExpert",
    "PickPlaceCanExpert",
    "make_robosuite_expert",
    "ROBOMIMIC_STATE_KEYS",
    "STATE_LAYOUT",
    "TASKS",
]

# (name, start, stop) of each block of obs["state"].
STATE_LAYOUT: tuple[tuple[str, int, int], ...] = (
    ("eef_pos", 0, 3),
    ("eef_quat", 3, 7),
    ("gripper_qpos", 7, 9),
    ("obj_pos", 9, 12),
    ("obj_quat", 12, 16),
    ("obj_to_eef", 16, 19),
)
STATE_DIM = 19


CAMERAS: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")
CONTROL_FREQ = 20.0
_ROBOT0_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
_ROBOT1_KEYS = ("robot1_eef_pos", "robot1_eef_quat", "robot1_gripper_qpos")


@dataclass(frozen=True)
class _TaskConfig:
    env_name: str  # robosuite class name
    name: str  # genpolicy task name (robosuite/<name>)
    obj_key: str  # prefix of the object observables (f"{obj_key}_pos"); "" = state is the robomimic concatenation
    max_episode_steps: int
    success_definition: str
    state_dim: int
    robots: tuple[str, ...] = ("Panda",)
    cameras: tuple[str, ...] = CAMERAS
    robomimic_keys: tuple[str, ...] = ()  # robomimic obs keys whose concatenation is `state` (empty: none)


TASKS: dict[str, _TaskConfig] = {
    "lift": _TaskConfig(
        env_name="Lift",
        name="lift",
        obj_key="cube",
        max_episode_steps=150,
        success_definition="cube centre lifted above table height + 0.04 m (robosuite Lift._check_success).",
        state_dim=STATE_DIM,
        robomimic_keys=(*_ROBOT0_KEYS, "object"),
    ),
    "pickplacecan": _TaskConfig(
        env_name="PickPlaceCan",
        name="can",
        obj_key="Can",
        max_episode_steps=300,
        state_dim=STATE_DIM,
        success_definition=(
            "can centre inside the can quadrant of the target bin (x in [0.1, 0.295], y in [0.28, 0.525], "
            "z in (0.8, 0.9)) while the gripper is > ~0.042 m away from it, i.e. released "
            "(robosuite PickPlace._check_success)."
        ),
    ),
    "nutassemblysquare": _TaskConfig(
        env_name="NutAssemblySquare",
        name="square",
        obj_key="",
        max_episode_steps=400,  # robomimic's rollout horizon for square
        success_definition=(
            "square nut centre within 0.03 m (x and y) of the square peg and below table height + 0.05 m, "
            "with the grip site > ~0.042 m away from the nut, i.e. released (robosuite NutAssembly._check_success)."
        ),
        state_dim=23,
        robomimic_keys=(*_ROBOT0_KEYS, "object"),
    ),
    "twoarmtransport": _TaskConfig(
        env_name="TwoArmTransport",
        name="transport",
        obj_key="",
        max_episode_steps=700,  # robomimic's rollout horizon for transport
        success_definition=(
            "payload inside the target bin and trash inside the trash bin at the same step "
            "(robosuite TwoArmTransport._check_success)."
        ),
        state_dim=59,
        robots=("Panda", "Panda"),  # env_configuration "opposed", as in robomimic's transport data
        cameras=("shouldercamera0", "shouldercamera1", "robot0_eye_in_hand", "robot1_eye_in_hand"),
        robomimic_keys=(*_ROBOT0_KEYS, *_ROBOT1_KEYS, "object"),
    ),
}
_ALIASES = {"lift": "lift", "pickplacecan": "pickplacecan", "can": "pickplacecan", "pick_place_can": "pickplacecan",
            "square": "nutassemblysquare", "nutassemblysquare": "nutassemblysquare",
            "nut_assembly_square": "nutassemblysquare", "transport": "twoarmtransport",
            "twoarmtransport": "twoarmtransport", "two_arm_transport": "twoarmtransport"}
# robomimic obs keys per genpolicy task name whose concatenation (in this order) is our `state`.
ROBOMIMIC_STATE_KEYS: dict[str, tuple[str, ...]] = {
    c.name: c.robomimic_keys for c in TASKS.values() if c.robomimic_keys}


def _canonical_task(task: str) -> str:
    key = task.lower().split("/")[-1].replace("-", "_")
    if key not in _ALIASES:
        known = ", ".join(f"robosuite/{c.name}" for c in TASKS.values())
        raise ConfigError(f"unknown robosuite task {task!r}; known: {known}")
    return _ALIASES[key]


def describe(task: str, images: bool = False, max_episode_steps: int | None = None) -> EnvSpec:
    """The EnvSpec of ``RobosuiteEnv(task, images=images)`` without building the simulator (seconds per task)."""
    cfg = TASKS[_canonical_task(task)]
    da = 7 * len(cfg.robots)  # OSC_POSE (6) + gripper (1) per Panda arm
    return EnvSpec(name=f"robosuite/{cfg.name}", state_dim=cfg.state_dim, action_dim=da,
                   action_low=-np.ones(da, np.float32), action_high=np.ones(da, np.float32),
                   max_episode_steps=max_episode_steps or cfg.max_episode_steps, fps=CONTROL_FREQ,
                   success_definition=cfg.success_definition, cameras=cfg.cameras if images else ())


class RobosuiteEnv:
    """Gymnasium-like wrapper around a single robosuite env (Panda, OSC_POSE, low-dim + optional images)."""

    def __init__(
        self,
        task: str,
        seed: int = 0,
        images: bool = False,
        image_size: int = 84,
        render_size: int = 256,
        max_episode_steps: int | None = None,
        terminate_on_success: bool = True,
        render_camera: str = "agentview",
    ) -> None:
        self.task = _canonical_task(task)
        self._cfg = TASKS[self.task]
        self.images = images
        self.image_size = image_size
        self.render_size = render_size
        self.render_camera = render_camera
        self.terminate_on_success = terminate_on_success
        controller = load_composite_controller_config(controller="BASIC", robot="Panda")
        self.cameras = self._cfg.cameras
        self._env = suite.make(
            self._cfg.env_name,
            robots=list(self._cfg.robots) if len(self._cfg.robots) > 1 else self._cfg.robots[0],
            controller_configs=controller,
            use_object_obs=True,
            use_camera_obs=images,
            camera_names=list(self.cameras),
            camera_heights=image_size,
            camera_widths=image_size,
            # Offscreen context is created lazily in render() when images=False, so state-only
            # envs never touch EGL.
            has_offscreen_renderer=images,
            has_renderer=False,
            reward_shaping=False,
            control_freq=CONTROL_FREQ,
            # We own the horizon; robosuite's done flag would otherwise raise on extra steps.
            ignore_done=True,
            horizon=10**9,
            hard_reset=False,
            seed=seed,
        )
        if images:  # the offscreen EGL context exists now: close it before robosuite's atexit eglTerminate runs
            from genpolicy.envs.mjrender import track

            track(self)
        low, high = self._env.action_spec
        self.spec = EnvSpec(
            name=f"robosuite/{self._cfg.name}",
            state_dim=self._cfg.state_dim,
            action_dim=int(low.shape[0]),
            action_low=low.astype(np.float32),
            action_high=high.astype(np.float32),
            max_episode_steps=max_episode_steps or self._cfg.max_episode_steps,
            fps=float(self._env.control_freq),
            success_definition=self._cfg.success_definition,
            cameras=self.cameras if images else (),
        )
        self._robot = self._env.robots[0]
        self._eef_site_id = self._robot.eef_site_id["right"]
        self._t = 0
        self._last_obs: dict[str, np.ndarray] = {}
        self._last_raw: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ gym API
    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Reset the episode; with ``seed`` the initial state is a pure function of the seed."""
        if seed is not None:
            # All robosuite randomness (object placement, joint init noise) draws from env.rng, and the
            # placement samplers hold a reference to that same Generator, so reseed it in place.
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        raw = self._env.reset()
        if not self._cfg.obj_key:
            # In robosuite's reset observation the object->eef sensors find world_pose_in_gripper not yet cached
            # and return zeros (e.g. SquareNut_to_robot0_eef_pos); re-read once the cache is filled.
            raw = self._env._get_observations(force_update=True)
        self._last_raw = raw
        self._t = 0
        self._last_obs = self._convert_obs(raw)
        return self._last_obs

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        action = np.clip(np.asarray(action, dtype=np.float64), self.spec.action_low, self.spec.action_high)
        raw, _, _, _ = self._env.step(action)
        self._last_raw = raw
        self._t += 1
        success = bool(self._env._check_success())
        terminated = success and self.terminate_on_success
        truncated = (not terminated) and self._t >= self.spec.max_episode_steps
        self._last_obs = self._convert_obs(raw)
        return self._last_obs, float(success), terminated, truncated, {"success": success, "t": self._t}

    def render(self) -> np.ndarray:
        """uint8 (H, W, 3) frame from ``render_camera`` at ``render_size`` (offscreen EGL)."""
        sim = self._env.sim
        if sim._render_context_offscreen is None:
            MjRenderContextOffscreen(sim, device_id=-1)  # registers itself on sim
            from genpolicy.envs.mjrender import track

            track(self)  # robosuite's EGL context: close it before its atexit eglTerminate runs
        frame = sim.render(camera_name=self.render_camera, width=self.render_size, height=self.render_size)
        return np.ascontiguousarray(frame[::-1])  # MuJoCo renders bottom-up (OpenGL convention)

    def close(self) -> None:
        self._env.close()

    # ------------------------------------------------------------------ helpers for experts / debugging
    @property
    def elapsed_steps(self) -> int:
        return self._t

    @property
    def raw_obs(self) -> dict[str, np.ndarray]:
        """robosuite's observation dict behind the latest ``obs`` (what robomimic records per step)."""
        return self._last_raw

    @property
    def raw_env(self):
        """The underlying robosuite env (for experts and debugging only)."""
        return self._env

    def eef_pos(self) -> np.ndarray:
        return np.array(self._env.sim.data.site_xpos[self._eef_site_id])

    def eef_rotmat(self) -> np.ndarray:
        """Grip-site orientation; this is the frame the OSC controller tracks."""
        return np.array(self._env.sim.data.site_xmat[self._eef_site_id]).reshape(3, 3)

    def object_pos(self) -> np.ndarray:
        return np.array(self._env.sim.data.body_xpos[self._object_body_id()])

    def object_rotmat(self) -> np.ndarray:
        return np.array(self._env.sim.data.body_xmat[self._object_body_id()]).reshape(3, 3)

    def place_region(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) xyz bounds of the PickPlaceCan success box, mirroring PickPlace.not_in_bin."""
        env = self._env
        bin_id = env.object_id
        low = np.array(env.bin2_pos, dtype=np.float64)
        if bin_id in (0, 2):
            low[0] -= env.bin_size[0] / 2
        if bin_id < 2:
            low[1] -= env.bin_size[1] / 2
        high = low + [env.bin_size[0] / 2, env.bin_size[1] / 2, 0.1]
        return low, high

    def _object_body_id(self) -> int:
        env = self._env
        if self.task == "lift":
            return env.cube_body_id
        return env.obj_body_id[env.obj_to_use]

    def _convert_obs(self, raw: dict) -> dict[str, np.ndarray]:
        k = self._cfg.obj_key
        if k:
            eef_pos = raw["robot0_eef_pos"]
            obj_pos = raw[f"{k}_pos"]
            parts = [eef_pos, raw["robot0_eef_quat"], raw["robot0_gripper_qpos"], obj_pos, raw[f"{k}_quat"],
                     obj_pos - eef_pos]
        else:
            # robomimic stores robosuite's "object-state" under the key "object"
            parts = [np.ravel(raw["object-state" if key == "object" else key]) for key in self._cfg.robomimic_keys]
        obs = {"state": np.concatenate(parts).astype(np.float32)}
        if self.images:
            for cam in self.cameras:
                # (H, W, 3) bottom-up -> (3, H, W) top-down
                obs[f"image.{cam}"] = np.ascontiguousarray(raw[f"{cam}_image"][::-1].transpose(2, 0, 1))
        return obs


# ====================================================================== experts
def _yaw(rot: np.ndarray) -> float:
    return math.atan2(rot[1, 0], rot[0, 0])


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _wrap(angle: float, period: float) -> float:
    """Wrap to [-period/2, period/2)."""
    return (angle + period / 2) % period - period / 2


# A waypoint target is a function of the env and the current grip-site position, so pre-grasp
# targets can follow an object that gets nudged.
TargetFn = Callable[[RobosuiteEnv, np.ndarray], np.ndarray]


def _const(pos: np.ndarray) -> TargetFn:
    pos = np.array(pos, dtype=np.float64)
    return lambda env, eef: pos


@dataclass
class _Waypoint:
    name: str
    target: TargetFn
    gripper: float  # -1 open, +1 close
    tol: float  # position tolerance (m) to count as reached
    max_steps: int  # timeout; keeps the expert from stalling forever
    hold: int = 0  # extra steps to stay after reaching (e.g. while the fingers close)
    speed: float = 1.0  # cap on |position action| per axis
    freeze: bool = False  # evaluate target once when the waypoint becomes active
    replan_on_timeout: bool = False  # timeout means the pick is compromised -> start the pick over


class _ScriptedExpert:
    """Waypoint state machine on top of OSC_POSE delta actions.

    Position actions are a saturated P-controller on the grip-site error; orientation actions keep
    the gripper pointing down (with a task-specific yaw). Pre-grasp targets track the live object
    pose, the descent is gated on xy alignment, and a failed grasp (object not following the
    gripper) or a stuck descent restarts the pick, so noisy rollouts still mostly succeed.
    Gaussian action noise is added *after* the controller, so the expert corrects its own noise.
    """

    POS_GAIN = 5.0  # commanded displacement = POS_GAIN * error (OSC reaches only part of it per step)
    ROT_GAIN = 1.5  # rad of commanded rotation per rad of error
    MAX_RETRIES = 3
    HOVER = 0.10  # pre-grasp height above the object centre
    GRASP_DZ = 0.0  # grip-site offset from the object centre when closing
    GRASP_STEPS = 10  # Panda fingers ramp at 0.2/step, so -1 -> +1 takes 10 steps
    CARRY_DIST = 0.06  # object farther than this from the grip site while carrying = grasp lost
    MAX_PICK_Z = 0.95  # pick targets never go above this (objects rest at z ~0.82-0.88)

    def __init__(self, noise: float = 0.0, detour_prob: float = 0.0, seed: int = 0) -> None:
        self.noise = float(noise)
        self.detour_prob = float(detour_prob)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode. Episode randomness (detour, noise) continues the seeded stream unless
        ``seed`` is given, so (constructor seed, sequence of calls) fully determines the actions."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._plan: list[_Waypoint] | None = None
        self._idx = 0
        self._steps_in_wp = 0
        self._hold_left: int | None = None
        self._frozen: np.ndarray | None = None
        self._retries = 0
        self._base_rot: np.ndarray | None = None
        self._target_rot: np.ndarray | None = None
        self.use_detour = bool(self._rng.random() < self.detour_prob)
        # Drawn every episode (even if unused) so the stream advances identically per episode.
        self._detour_offset = self._rng.uniform([-0.12, -0.12, 0.0], [0.12, 0.12, 0.12])
        self._detour_carrying = bool(self._rng.random() < 0.5)

    @property
    def phase(self) -> str:
        """Name of the active waypoint (for logging / debugging)."""
        if self._plan is None:
            return "start"
        return self._plan[min(self._idx, len(self._plan) - 1)].name

    def act(self, env: RobosuiteEnv, obs: dict) -> np.ndarray:
        if self._plan is None:
            self._base_rot = env.eef_rotmat()  # pointing down, as after reset
            self._replan(env, retry=False)
        eef = env.eef_pos()
        if self.phase in self._carry_phases() and np.linalg.norm(env.object_pos() - eef) > self.CARRY_DIST:
            self._replan(env, retry=True)
        wp, target = self._advance(env, eef)
        assert self._target_rot is not None
        action = np.zeros(7)
        action[:3] = np.clip(self.POS_GAIN * (target - eef) / 0.05, -wp.speed, wp.speed)
        rot_err = orientation_error(self._target_rot, env.eef_rotmat())
        action[3:6] = np.clip(self.ROT_GAIN * rot_err / 0.5, -1.0, 1.0)
        action[6] = wp.gripper
        if self.noise > 0:
            action += self._rng.normal(0.0, self.noise, size=7)
        return np.clip(action, env.spec.action_low, env.spec.action_high).astype(np.float32)

    # -------------------------------------------------------------- internals
    def _replan(self, env: RobosuiteEnv, retry: bool) -> None:
        if retry:
            if self._retries >= self.MAX_RETRIES:
                return
            self._retries += 1
        self._target_rot = self._grasp_rotation(env)
        self._plan = self._make_plan(env, retry)
        self._idx = 0
        self._steps_in_wp = 0
        self._hold_left = None
        self._frozen = None

    def _advance(self, env: RobosuiteEnv, eef: np.ndarray) -> tuple[_Waypoint, np.ndarray]:
        """Return the active waypoint and its target; reached (+hold) or timed out -> next one."""
        while True:
            assert self._plan is not None
            wp = self._plan[self._idx]
            if wp.freeze:
                if self._frozen is None:
                    self._frozen = wp.target(env, eef)
                target = self._frozen
            else:
                target = wp.target(env, eef)
            if self._idx == len(self._plan) - 1:
                return wp, target  # last waypoint: stay there
            self._steps_in_wp += 1
            timed_out = self._steps_in_wp > wp.max_steps
            if timed_out and wp.replan_on_timeout and self._retries < self.MAX_RETRIES:
                self._replan(env, retry=True)
                continue
            if self._hold_left is None and (np.linalg.norm(target - eef) < wp.tol or timed_out):
                self._hold_left = wp.hold
            if self._hold_left is not None:
                if self._hold_left <= 0:
                    self._idx += 1
                    self._steps_in_wp = 0
                    self._hold_left = None
                    self._frozen = None
                    continue
                self._hold_left -= 1
            return wp, target

    def _pick_waypoints(self, env: RobosuiteEnv, retry: bool) -> list[_Waypoint]:
        """Reopen (on retry) -> hover above object -> xy-gated descent -> close fingers."""
        dz = np.array([0.0, 0.0, self.GRASP_DZ])
        hover = np.array([0.0, 0.0, self.HOVER])

        def approach(env: RobosuiteEnv, eef: np.ndarray) -> np.ndarray:
            goal = env.object_pos() + hover
            # Capped so that an object stuck to the fingers cannot drag the target upwards forever.
            goal[2] = min(goal[2], self.MAX_PICK_Z + self.HOVER)
            return goal

        def descend(env: RobosuiteEnv, eef: np.ndarray) -> np.ndarray:
            # Stay higher while misaligned in xy (a cone above the grasp point) so noisy descents
            # do not land the fingers on the object.
            goal = env.object_pos() + dz
            goal[2] = min(goal[2], self.MAX_PICK_Z)
            xy_err = float(np.linalg.norm(goal[:2] - eef[:2]))
            goal[2] += min(self.HOVER, max(0.0, 3.0 * (xy_err - 0.006)))
            return goal

        wps: list[_Waypoint] = []
        if retry:
            up = lambda env, eef: eef + [0.0, 0.0, 0.04]  # noqa: E731
            wps.append(_Waypoint("reopen", up, -1.0, 0.0, 0, hold=self.GRASP_STEPS, freeze=True))
        wps += [
            _Waypoint("approach", approach, -1.0, 0.015, 60),
            _Waypoint("descend", descend, -1.0, 0.015, 40, replan_on_timeout=True),
            _Waypoint("grasp", lambda env, eef: env.object_pos() + dz, 1.0, 0.0, 0, hold=self.GRASP_STEPS),
        ]
        return wps

    def _detour_waypoint(self, env: RobosuiteEnv, name: str, anchor: np.ndarray, gripper: float) -> _Waypoint:
        return _Waypoint(name, _const(anchor + self._detour_offset), gripper, 0.03, 40)

    def _grasp_rotation(self, env: RobosuiteEnv) -> np.ndarray:
        assert self._base_rot is not None
        return self._base_rot

    def _carry_phases(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _make_plan(self, env: RobosuiteEnv, retry: bool) -> list[_Waypoint]:
        raise NotImplementedError


class LiftExpert(_ScriptedExpert):
    """Hover above cube (yaw-aligned to its faces) -> descend -> close -> lift."""

    GRASP_DZ = -0.003  # slightly below the cube centre for a deeper grasp
    LIFT_HEIGHT = 0.15

    def _grasp_rotation(self, env: RobosuiteEnv) -> np.ndarray:
        assert self._base_rot is not None
        # The cube is 90deg-symmetric: rotate the smallest angle that aligns the fingers with its faces.
        dyaw = _wrap(_yaw(env.object_rotmat()) - _yaw(self._base_rot), math.pi / 2)
        return _rot_z(dyaw) @ self._base_rot

    def _carry_phases(self) -> tuple[str, ...]:
        return ("lift",)

    def _make_plan(self, env: RobosuiteEnv, retry: bool) -> list[_Waypoint]:
        plan: list[_Waypoint] = []
        if self.use_detour and not retry:
            plan.append(self._detour_waypoint(env, "detour", env.object_pos() + [0, 0, self.HOVER], -1.0))
        plan += self._pick_waypoints(env, retry)
        lift = lambda env, eef: eef + [0.0, 0.0, self.LIFT_HEIGHT]  # noqa: E731
        plan.append(_Waypoint("lift", lift, 1.0, 0.01, 60, freeze=True))
        return plan


class PickPlaceCanExpert(_ScriptedExpert):
    """Hover above can -> descend -> close -> lift -> carry over target -> lower -> release -> retreat."""

    CARRY_Z = 1.06  # grip-site z while carrying; the can bottom then clears the 0.9 m bin walls
    PLACE_Z = 0.93  # grip-site z when releasing (can ~2 cm above the bin floor)
    # Release point relative to the success box's corner nearest the robot. The quadrant centre
    # (robosuite's target_bin_placements) is at the edge of the Panda's reach: the elbow
    # straightens and the arm stalls there. The offset keeps the can (radius ~0.035 m) ~1.5 cm
    # clear of the quadrant dividers (0.01 m half-thick walls on the box edges x=0.1, y=0.28).
    PLACE_OFFSET = np.array([0.06, 0.065, 0.0])
    RELEASE_STEPS = 12
    LIFT_SPEED = 1.0

    def _carry_phases(self) -> tuple[str, ...]:
        return ("lift", "detour_carry", "carry", "lower")

    def _make_plan(self, env: RobosuiteEnv, retry: bool) -> list[_Waypoint]:
        low, _ = env.place_region()
        tgt = low + self.PLACE_OFFSET
        above_tgt = np.array([tgt[0], tgt[1], self.CARRY_Z])
        place = np.array([tgt[0], tgt[1], self.PLACE_Z])
        plan: list[_Waypoint] = []
        if self.use_detour and not self._detour_carrying and not retry:
            plan.append(self._detour_waypoint(env, "detour", env.object_pos() + [0, 0, self.HOVER], -1.0))
        plan += self._pick_waypoints(env, retry)
        lift = lambda env, eef: np.array([eef[0], eef[1], self.CARRY_Z])  # noqa: E731
        plan.append(_Waypoint("lift", lift, 1.0, 0.02, 60, speed=self.LIFT_SPEED, freeze=True))
        if self.use_detour and self._detour_carrying and not retry:
            mid = (env.object_pos() + above_tgt) / 2
            mid[2] = self.CARRY_Z + 0.02  # offset z >= 0, so the can still clears the walls
            plan.append(self._detour_waypoint(env, "detour_carry", mid, 1.0))
        plan += [
            _Waypoint("carry", _const(above_tgt), 1.0, 0.015, 100),
            _Waypoint("lower", _const(place), 1.0, 0.01, 40, speed=0.6),
            _Waypoint("release", _const(place), -1.0, 0.0, 0, hold=self.RELEASE_STEPS),
            _Waypoint("retreat", _const(above_tgt), -1.0, 0.01, 1000),
        ]
        return plan


def make_robosuite_expert(task: str, noise: float = 0.0, detour_prob: float = 0.0, seed: int = 0) -> _ScriptedExpert:
    """Expert for a task name accepted by RobosuiteEnv (Lift and Can only)."""
    canonical = _canonical_task(task)
    experts = {"lift": LiftExpert, "pickplacecan": PickPlaceCanExpert}
    if canonical not in experts:
        name = TASKS[canonical].name
        keys = ",".join(ROBOMIMIC_STATE_KEYS[name])
        raise ConfigError(
            f"robosuite/{name} has no scripted expert (only robosuite/lift and robosuite/can do); train from "
            f"robomimic demonstrations instead: `genpolicy data convert {name}.hdf5 data/{name}.zarr "
            f"state_keys=[{keys}]`")
    cls = experts[canonical]
    return cls(noise=noise, detour_prob=detour_prob, seed=seed)
