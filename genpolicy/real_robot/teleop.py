"""Teleoperators beside the Robot: who may take control from the policy, and what they command while they have it.

The controller asks the teleoperator once per control tick, in this order:
  1. `is_intervening(obs, policy_action)` - does the person (or the simulated expert) have control this tick?
     `policy_action` is the policy's proposal for this tick (None when it has none); a person ignores both
     arguments (they watch the robot), the simulated teleoperator decides from them by its stated rule;
  2. `get_action(obs)` - only when intervening: the command (robot units). It goes through the same safety filter
     as a policy action and is then sent; the frame is recorded with intervention=1 and source=teleop.

Backends:
  * `SimTeleop`: a toolkit expert (scripted Meta-World/robosuite policy, SAC locomotion expert, toy expert) that
    takes over by a rule and hands back after exactly `hold_steps` ticks:
      - deviation: max_i |policy_action_i - expert_action_i| > threshold (the policy's proposal departs from what the
        expert would do; ticks without a policy proposal never trigger it);
      - stall: the task's progress signal rose by at most `stall_tol` over the last `stall_steps` policy ticks;
      - deviation_or_stall: either.
    Rules run only on policy ticks; the progress window restarts after every hand-back.
  * `LeRobotTeleop`: a LeRobot `Teleoperator` (leader arms, gamepads, keyboards) through its documented API:
    `connect(calibrate=...)`, `disconnect()`, `is_connected`, `action_features` ({"<motor>.pos": float, ...}),
    `get_action()` -> {name: float}; interventions come from `get_teleop_events()[TeleopEvents.IS_INTERVENTION]`
    (gamepad/keyboard) or from a callable you pass (e.g. a foot pedal for leader arms, which report no events).
    `lerobot` is NOT installable on the development machine: this adapter is tested only through
    `SimLeRobotTeleop` (the simulated teleoperator behind that same API), never against LeRobot itself.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Protocol

import numpy as np

from genpolicy.errors import GenpolicyError
from genpolicy.real_robot.lerobot_adapter import SimDeviceLifecycle

# the recorded `source` column: a float code per frame (LeRobot v3 extra features are numeric)
SOURCE_POLICY, SOURCE_TELEOP = 0.0, 1.0
SOURCE_NAMES = {0: "policy", 1: "teleop"}
RULES = ("deviation", "stall", "deviation_or_stall")


class Teleop(Protocol):
    """A teleoperator. Called from the control-loop thread only."""

    @property
    def is_connected(self) -> bool: ...

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def reset(self) -> None:
        """A new episode starts (a simulated teleoperator forgets its state; a person needs nothing)."""

    def is_intervening(self, obs: dict[str, np.ndarray], policy_action: np.ndarray | None) -> bool: ...

    def get_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The command (Da,) in robot units; called only on ticks where `is_intervening` returned True."""
        ...


class SimTeleop:
    """A simulated teleoperator: `expert.act(env, obs)` drives while it intervenes, by a stated rule.

    Args:
        expert: anything with `reset()` and `act(env, obs) -> (Da,)` (genpolicy.experts.registry.make_expert).
        env: what the expert reads besides the observation (Meta-World's scripted policies read the env's state).
        rule: deviation | stall | deviation_or_stall (module docstring).
        threshold: deviation rule, in action units (inf-norm).
        hold_steps: ticks per takeover, counting the tick that triggered it; then control returns to the policy.
        stall_steps, stall_tol: stall rule window (policy ticks) and the rise in progress that counts as progress.
        progress: callable returning the task's progress signal (higher is better), e.g. the last shaped reward;
            required by the stall rules.
    """

    def __init__(self, expert: Any, env: Any, rule: str = "deviation", threshold: float = 0.5, hold_steps: int = 20,
                 stall_steps: int = 20, stall_tol: float = 1e-3, progress: Callable[[], float] | None = None) -> None:
        if rule not in RULES:
            raise GenpolicyError(f"teleop rule must be one of {'|'.join(RULES)}, got '{rule}'")
        if hold_steps < 1 or stall_steps < 1 or not threshold >= 0:
            raise GenpolicyError(f"teleop: hold_steps and stall_steps must be >= 1 and threshold >= 0, got "
                                 f"{hold_steps}, {stall_steps}, {threshold}")
        if rule != "deviation" and progress is None:
            raise GenpolicyError(f"teleop rule '{rule}' needs a progress signal (progress=<callable>)")
        self.expert, self.env, self.rule, self.threshold = expert, env, rule, float(threshold)
        self.hold_steps, self.stall_steps, self.stall_tol, self.progress = hold_steps, stall_steps, stall_tol, progress
        self._connected = False
        self.takeovers = 0  # number of takeovers since construction (rates are per episode in the callers)
        self.reset()

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    def reset(self) -> None:
        self.expert.reset()
        self._left = 0  # ticks of the current takeover still to run (0: the policy has control)
        self._window: deque[float] = deque(maxlen=self.stall_steps + 1)
        self._expert_action: np.ndarray | None = None
        self.last_trigger = ""  # which rule fired the latest takeover (deviation | stall)

    @property
    def in_takeover(self) -> bool:
        """The next `is_intervening` call continues a takeover (callers may skip computing a policy proposal)."""
        return self._left > 0

    def is_intervening(self, obs: dict[str, np.ndarray], policy_action: np.ndarray | None) -> bool:
        # the expert is asked every tick: it must see every state (scripted experts keep per-episode counters)
        self._expert_action = np.asarray(self.expert.act(self.env, obs), np.float64).reshape(-1)
        if self._left > 0:
            self._left -= 1
            return True
        trigger = ""
        if self.rule in ("deviation", "deviation_or_stall") and policy_action is not None:
            gap = float(np.max(np.abs(np.asarray(policy_action, np.float64).reshape(-1) - self._expert_action)))
            if gap > self.threshold:
                trigger = "deviation"
        if not trigger and self.rule in ("stall", "deviation_or_stall"):
            self._window.append(float(self.progress()))  # type: ignore[misc]
            if len(self._window) == self._window.maxlen and self._window[-1] - self._window[0] <= self.stall_tol:
                trigger = "stall"
        if not trigger:
            return False
        self._left = self.hold_steps - 1
        self._window.clear()  # after the hand-back, progress is measured afresh
        self.takeovers += 1
        self.last_trigger = trigger
        return True

    def get_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self._expert_action is None:
            raise RuntimeError("SimTeleop.get_action before is_intervening")
        return self._expert_action.copy()


def _intervention_flag(events: Any) -> bool:
    """LeRobot's events dict is keyed by `TeleopEvents` members (value "is_intervention") or by plain strings."""
    for k, v in dict(events).items():
        if getattr(k, "value", k) == "is_intervention":
            return bool(v)
    return False


class LeRobotTeleop:
    """A LeRobot `Teleoperator` behind our Teleop protocol (see the module docstring for the API it relies on).

    `action_names` are the robot's action keys in the order our arrays use; the teleoperator must provide exactly
    those keys (a leader arm's "<motor>.pos" match its follower's). `intervening` overrides the event source."""

    def __init__(self, teleop: Any, action_names: list[str], intervening: Callable[[], bool] | None = None,
                 calibrate: bool = False) -> None:
        self.teleop, self.calibrate, self.action_names = teleop, calibrate, list(action_names)
        feats = dict(teleop.action_features)
        missing = [k for k in self.action_names if k not in feats]
        if missing:
            raise GenpolicyError(f"{type(teleop).__name__}: action features lack the robot's keys {missing} "
                                 f"(has {sorted(feats)})")
        if intervening is None and not hasattr(teleop, "get_teleop_events"):
            raise GenpolicyError(f"{type(teleop).__name__} reports no intervention events (get_teleop_events); pass "
                                 "intervening=<callable> (e.g. a foot pedal) to say when the person has control")
        self._intervening = intervening

    @property
    def is_connected(self) -> bool:
        return bool(self.teleop.is_connected)

    def connect(self) -> None:
        self.teleop.connect(calibrate=self.calibrate)

    def disconnect(self) -> None:
        if self.teleop.is_connected:
            self.teleop.disconnect()

    def reset(self) -> None:
        pass

    def is_intervening(self, obs: dict[str, np.ndarray], policy_action: np.ndarray | None) -> bool:
        watch = getattr(self.teleop, "watch", None)
        if callable(watch):  # simulation only: a person sees the robot; the simulated one is shown what it would see
            watch(obs, policy_action)
        if self._intervening is not None:
            return bool(self._intervening())
        return _intervention_flag(self.teleop.get_teleop_events())

    def get_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        raw = self.teleop.get_action()
        try:
            return np.asarray([float(raw[k]) for k in self.action_names], np.float64)
        except KeyError as e:
            raise GenpolicyError(f"{type(self.teleop).__name__}.get_action() lacks declared feature {e}") from None


class SimLeRobotTeleop(SimDeviceLifecycle):
    """A SimTeleop behind LeRobot's Teleoperator API (action names a0.., `get_teleop_events` with is_intervention).

    `watch(obs, policy_action)` is the simulation's stand-in for a person looking at the robot; LeRobotTeleop calls
    it when present. Real LeRobot teleoperators have no such method."""

    name = "genpolicy_sim_teleop"

    def __init__(self, sim: SimTeleop, action_dim: int) -> None:
        self.sim = sim
        self._names = [f"a{i}" for i in range(action_dim)]
        self.action_features: dict[str, Any] = {k: float for k in self._names}
        self.feedback_features: dict[str, Any] = {}
        self._on = False
        self._obs: dict[str, np.ndarray] | None = None


    def watch(self, obs: dict[str, np.ndarray], policy_action: np.ndarray | None) -> None:
        self._obs = obs
        self._on = self.sim.is_intervening(obs, policy_action)

    def get_teleop_events(self) -> dict[str, Any]:
        return {"is_intervention": self._on, "terminate_episode": False, "success": False,
                "rerecord_episode": False}

    def get_action(self) -> dict[str, float]:
        a = self.sim.get_action(self._obs or {})
        return {k: float(v) for k, v in zip(self._names, a)}

    def send_feedback(self, feedback: dict[str, Any]) -> None:
        pass

    def disconnect(self) -> None:
        if not self.sim.is_connected:
            raise RuntimeError("SimLeRobotTeleop is not connected")  # LeRobot raises DeviceNotConnectedError
        self.sim.disconnect()


def make_lerobot_teleop(type_name: str, port: str, action_names: list[str]) -> LeRobotTeleop:
    """A real LeRobot teleoperator from its registered config type (e.g. so101_leader, gamepad). Needs `lerobot`."""
    try:
        from lerobot.teleoperators import make_teleoperator_from_config  # type: ignore[import-not-found]
        from lerobot.teleoperators.config import TeleoperatorConfig  # type: ignore[import-not-found]
    except ImportError:
        raise GenpolicyError("teleop=lerobot needs the `lerobot` package (pip install lerobot), which is not "
                             "installed; teleop=sim or teleop=lerobot_sim run without it") from None
    cls = TeleoperatorConfig.get_choice_class(type_name)  # draccus registry of teleoperator configs
    kwargs = {"port": port} if port else {}
    return LeRobotTeleop(make_teleoperator_from_config(cls(**kwargs)), action_names)
