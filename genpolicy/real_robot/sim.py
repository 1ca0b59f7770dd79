"""A simulated robot: a toolkit task advanced in real time at the control rate, with injectable faults.

The simulation advances lazily from the clock: whenever the robot is touched, it first runs one env step per control
period that has elapsed, each with the command that was in force (zero-order hold, like a servo holding its last
goal). So a late controller sees the world move on without it, and a FakeClock makes everything deterministic.

Faults: observation latency and jitter (observations come from the past), dropped frames (the previous observation
again), actuator limits (command range and a slew-rate limit per period), and `fail_on` (a magic command value that
makes send_action raise, after ros2_control's test hardware).
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from genpolicy.real_robot.clock import Clock
from genpolicy.real_robot.robot import RobotFeatures

# dims that are rates (velocity / delta commands: zero holds still); the others are held at their last value
_RATE_DIMS = {"metaworld": (0, 1, 2), "robosuite": (0, 1, 2, 3, 4, 5), "pusht": ()}  # PushT: absolute targets


class SimRobot:
    def __init__(self, task: str, clock: Clock, rate_hz: float, seed: int = 0, images: bool = False,
                 obs_latency_s: float = 0.0, obs_jitter_s: float = 0.0, drop_prob: float = 0.0,
                 max_action_rate: float = 0.0, max_episode_steps: int = 0, fail_on: float | None = None) -> None:
        from genpolicy.envs.registry import make_env

        self.task, self.clock, self.period = task, clock, 1.0 / float(rate_hz)
        self.env = make_env(task, seed=seed, images=images, max_episode_steps=max_episode_steps)
        spec = self.env.spec
        first = self.env.reset(seed=seed)
        cams = {k[len("image."):]: tuple(int(x) for x in v.shape) for k, v in first.items() if k.startswith("image.")}
        self.features = RobotFeatures(state_dim=spec.state_dim, action_dim=spec.action_dim,
                                      action_low=np.asarray(spec.action_low, np.float64),
                                      action_high=np.asarray(spec.action_high, np.float64), cameras=cams,
                                      action_names=[f"a{i}" for i in range(spec.action_dim)])
        suite = task.split("/", 1)[0]
        self.rate_dims = np.zeros(spec.action_dim, bool)
        self.rate_dims[list(_RATE_DIMS.get(suite, range(spec.action_dim)))] = True
        self.features.position_dims = ~self.rate_dims
        self.obs_latency_s, self.obs_jitter_s, self.drop_prob = obs_latency_s, obs_jitter_s, drop_prob
        self.max_action_rate, self.fail_on = max_action_rate, fail_on
        self.max_episode_steps = spec.max_episode_steps
        self.success_definition = spec.success_definition
        self.fps = 1.0 / self.period
        self._rng = np.random.default_rng(seed)
        self._connected = False
        self.sent: list[np.ndarray] = []  # every applied command, in order (tests read the last one)
        self._reset_state(first)

    # --- Robot protocol -------------------------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True
        self._t_sim = self.clock.now()

    def disconnect(self) -> None:
        self._connected = False

    def get_observation(self) -> dict[str, np.ndarray]:
        self._require()
        self._advance()
        if self._last_returned is not None and self._rng.random() < self.drop_prob:
            self.dropped += 1
            return self._last_returned
        age = self.obs_latency_s + (self._rng.random() * self.obs_jitter_s if self.obs_jitter_s else 0.0)
        cutoff = self.clock.now() - age
        obs = self._history[0][1]
        for t, o in self._history:  # oldest first; take the newest one old enough
            if t <= cutoff + 1e-12:
                obs = o
        self._last_returned = obs
        return obs

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._require()
        a = np.asarray(action, np.float64).reshape(-1)
        if self.fail_on is not None and np.any(a == self.fail_on):
            raise RuntimeError(f"simulated actuator fault (command value {self.fail_on})")
        self._advance()
        a = np.clip(a, self.features.action_low, self.features.action_high)
        if self.max_action_rate > 0:
            a = np.clip(a, self._command - self.max_action_rate, self._command + self.max_action_rate)
        self._command = a
        self.sent.append(a.copy())
        return a.copy()

    def hold_action(self) -> np.ndarray:
        return np.where(self.rate_dims, 0.0, self._command)

    def present_action(self) -> np.ndarray | None:
        return None  # these tasks take rate/delta commands; there is no measured "position" of a command dim

    # --- episodes (simulation only: on a real robot a person resets the scene) ------------------------------------
    def start_episode(self, seed: int) -> None:
        self._reset_state(self.env.reset(seed=seed))
        self._t_sim = self.clock.now()

    @property
    def success(self) -> bool:
        return self._success

    @property
    def done(self) -> bool:
        return self._done

    def close(self) -> None:
        self.disconnect()
        self.env.close()

    # --- internals ------------------------------------------------------------------------------------------------
    def _require(self) -> None:
        if not self._connected:
            raise RuntimeError(f"sim robot {self.task} is not connected")

    def _reset_state(self, obs: dict[str, np.ndarray]) -> None:
        self._command = np.zeros(self.features.action_dim)
        if self.task.startswith("pusht/"):  # absolute target commands: holding means staying where the agent is
            self._command = np.asarray(obs["state"][:2], np.float64).copy()
        self._history: collections.deque = collections.deque(maxlen=64)
        self._t_sim = self.clock.now()
        self._history.append((self._t_sim, obs))
        self._last_returned = None
        self._success = self._done = False
        self.steps = 0
        self.ret = 0.0
        self.last_reward = 0.0
        self.dropped = 0
        self.sent = []

    def _advance(self) -> None:
        now = self.clock.now()
        while self._t_sim + self.period <= now + 1e-12:
            self._t_sim += self.period
            if self._done:
                continue
            obs, reward, terminated, truncated, info = self.env.step(self._command.astype(np.float32))
            self.steps += 1
            self.ret += float(reward)
            self.last_reward = float(reward)  # the progress signal of a simulated teleoperator's stall rule
            self._success |= bool(info.get("success", False))
            self._done = bool(terminated or truncated or self.steps >= self.max_episode_steps)
            self._history.append((self._t_sim, obs))

    def info(self) -> dict[str, Any]:
        return {"success": self._success, "steps": self.steps, "return": self.ret, "dropped_obs": self.dropped}
