"""Robots that follow LeRobot's `Robot` API (SO-100/SO-101, Koch, LeKiwi, ...) behind our Robot protocol.

LeRobot's contract (lerobot/robots/robot.py, as documented): `connect(calibrate=True)`, `disconnect()`, `is_connected`,
`observation_features` ({"<motor>.pos": float, ..., "<camera>": (H, W, 3)}), `action_features` ({"<motor>.pos": float}),
`get_observation()` -> dict of floats and HWC uint8 images, `send_action(dict)` -> the dict actually sent.
`lerobot` itself is not installable on the development machine (DESIGN.md), so this adapter is tested through
`SimLeRobot`: the simulated robot exposed with that same API.

Our side: state = the float observation features in declared order; cameras -> image.<name> as (3, H, W).
Holding: for position-controlled arms every action key is also an observation key, so the hold command is the
present position; other robots must say what holds them (`hold=` a callable).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from genpolicy.errors import GenpolicyError
from genpolicy.real_robot.robot import RobotFeatures


class LeRobotRobot:
    def __init__(self, robot: Any, action_low: np.ndarray | list[float], action_high: np.ndarray | list[float],
                 hold: str | Callable[[], np.ndarray] = "present", calibrate: bool = False) -> None:
        self.robot, self.calibrate = robot, calibrate
        ofeat, afeat = dict(robot.observation_features), dict(robot.action_features)
        self.state_keys = [k for k, v in ofeat.items() if v is float]
        self.camera_keys = [k for k, v in ofeat.items() if isinstance(v, tuple)]
        self.action_keys = [k for k, v in afeat.items() if v is float]
        if len(self.action_keys) != len(afeat):
            raise GenpolicyError(f"{type(robot).__name__}: only float action features are supported, got {afeat}")
        low, high = np.asarray(action_low, np.float64), np.asarray(action_high, np.float64)
        if low.shape != (len(self.action_keys),) or high.shape != low.shape:
            raise GenpolicyError(f"{type(robot).__name__}: action limits need {len(self.action_keys)} values "
                                 f"({self.action_keys}), got {low.shape} and {high.shape}")
        for k in self.camera_keys:
            if len(ofeat[k]) != 3 or ofeat[k][2] != 3:
                raise GenpolicyError(f"{type(robot).__name__}: camera feature '{k}' must be (H, W, 3), got {ofeat[k]}")
        self.features = RobotFeatures(state_dim=len(self.state_keys), action_dim=len(self.action_keys), action_low=low,
                                      action_high=high, cameras={k: (3, ofeat[k][0], ofeat[k][1]) for k in self.camera_keys},
                                      action_names=list(self.action_keys),
                                      position_dims=np.asarray([k.endswith(".pos") for k in self.action_keys]))
        if hold == "present":
            missing = [k for k in self.action_keys if k not in self.state_keys]
            if missing:
                raise GenpolicyError(f"{type(robot).__name__}: hold='present' needs every action key in the observation; "
                                     f"missing {missing}. Pass hold=<callable> that returns the hold command.")
        self._hold = hold
        self._last_obs: dict[str, Any] | None = None

    @property
    def is_connected(self) -> bool:
        return bool(self.robot.is_connected)

    def connect(self) -> None:
        self.robot.connect(calibrate=self.calibrate)

    def disconnect(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()

    def get_observation(self) -> dict[str, np.ndarray]:
        raw = self.robot.get_observation()
        self._last_obs = raw
        try:
            state = np.asarray([float(raw[k]) for k in self.state_keys], np.float32)
            out = {"state": state}
            for k in self.camera_keys:
                img = np.asarray(raw[k])
                out[f"image.{k}"] = np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.uint8)
        except KeyError as e:
            raise GenpolicyError(f"{type(self.robot).__name__}.get_observation() lacks declared feature {e}") from None
        return out

    def send_action(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, np.float64).reshape(-1)
        sent = self.robot.send_action({k: float(v) for k, v in zip(self.action_keys, a)})
        return np.asarray([float(sent[k]) for k in self.action_keys], np.float64)

    def present_action(self) -> np.ndarray | None:
        if self._hold != "present" or self._last_obs is None:
            return None
        return np.asarray([float(self._last_obs[k]) for k in self.action_keys], np.float64)

    def hold_action(self) -> np.ndarray:
        if callable(self._hold):
            return np.asarray(self._hold(), np.float64)
        if self._last_obs is None:
            self.get_observation()
        return self.present_action()


class SimDeviceLifecycle:
    """LeRobot's device lifecycle (connect / calibrate / configure) for a simulated device behind `self.sim`: shared
    by the simulated robot and the simulated teleoperator."""

    sim: Any

    @property
    def is_connected(self) -> bool:
        return self.sim.is_connected

    @property
    def is_calibrated(self) -> bool:
        return True

    def connect(self, calibrate: bool = True) -> None:
        if self.sim.is_connected:  # LeRobot raises DeviceAlreadyConnectedError
            raise RuntimeError(f"{type(self).__name__} is already connected")
        self.sim.connect()

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass


class SimLeRobot(SimDeviceLifecycle):
    """A SimRobot behind LeRobot's Robot API (names a0.. for actions, s0.. for state, cameras as HWC)."""

    name = "genpolicy_sim"

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        f = sim.features
        self._state_names = [f"s{i}" for i in range(f.state_dim)]
        self._action_names = [f"a{i}" for i in range(f.action_dim)]
        self.observation_features: dict[str, Any] = {k: float for k in self._state_names} | {
            cam: (s[1], s[2], 3) for cam, s in f.cameras.items()}
        self.action_features: dict[str, Any] = {k: float for k in self._action_names}


    def get_observation(self) -> dict[str, Any]:
        obs = self.sim.get_observation()
        out: dict[str, Any] = {k: float(v) for k, v in zip(self._state_names, obs["state"])}
        for cam in self.sim.features.cameras:
            out[cam] = obs[f"image.{cam}"].transpose(1, 2, 0)
        return out

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        a = np.asarray([action[k] for k in self._action_names], np.float64)
        sent = self.sim.send_action(a)
        return {k: float(v) for k, v in zip(self._action_names, sent)}

    def disconnect(self) -> None:
        if not self.sim.is_connected:
            raise RuntimeError("SimLeRobot is not connected")  # LeRobot raises DeviceNotConnectedError
        self.sim.disconnect()
