"""The Robot protocol the controller drives, and the check of a policy against a robot before connect."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from genpolicy.errors import GenpolicyError


@dataclass
class RobotFeatures:
    """What a robot observes and takes. Observations: {"state": (Ds,) float32, "image.<cam>": (3, H, W) uint8}."""

    state_dim: int
    action_dim: int
    action_low: np.ndarray  # (Da,) the actuators' command range (robot units)
    action_high: np.ndarray  # (Da,)
    cameras: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (3, H, W)
    action_names: list[str] = field(default_factory=list)
    position_dims: np.ndarray | None = None  # (Da,) bool: dims commanded as positions (get the limit margin); None = all


class Robot(Protocol):
    """A robot, real or simulated. Every method may be called from the control-loop thread only."""

    features: RobotFeatures

    @property
    def is_connected(self) -> bool: ...

    def connect(self) -> None:
        """Open the connection and bring the robot to a state where `send_action` is accepted. Raises if it cannot."""

    def disconnect(self) -> None:
        """Close the connection. Idempotent. Callers send the hold command first (the controller does)."""

    def get_observation(self) -> dict[str, np.ndarray]:
        """The latest observation; returns promptly (it never waits for a new sensor frame longer than one period)."""
        ...

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Command one action (Da,) in robot units; returns the command actually applied (after actuator limits)."""
        ...

    def hold_action(self) -> np.ndarray:
        """The command that keeps the robot where it is (position robots: the present position; rate robots: zero)."""
        ...

    def present_action(self) -> np.ndarray | None:
        """The measured value of each commanded dim (position-controlled robots), or None."""
        ...


def check_compatible(spec: "PolicySpec", features: RobotFeatures, robot_name: str) -> None:  # noqa: F821
    """Raise, naming the mismatch, when a policy cannot drive this robot. Called before connect."""
    problems = []
    if spec.state_dim != features.state_dim:
        problems.append(f"state dim: policy {spec.state_dim}, robot {features.state_dim}")
    if spec.action_dim != features.action_dim:
        problems.append(f"action dim: policy {spec.action_dim}, robot {features.action_dim}")
    for cam, shape in spec.cameras.items():
        if cam not in features.cameras:
            problems.append(f"camera '{cam}': the policy needs it, the robot has {sorted(features.cameras) or 'none'}")
        elif tuple(features.cameras[cam]) != tuple(shape):
            problems.append(f"camera '{cam}': policy takes {tuple(shape)}, robot gives {tuple(features.cameras[cam])}")
    if problems:
        raise GenpolicyError(f"checkpoint {spec.checkpoint or '<remote>'} does not fit robot {robot_name}: " + "; ".join(problems))
