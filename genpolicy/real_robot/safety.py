"""The safety filter between the policy and `Robot.send_action`. On by default; every clamp is counted.

Order (each stage sees the previous stage's output):
  1. finite check      - any NaN/inf in the action -> send the robot's hold action (never a range end)
  2. position limits   - clip into [low + margin, high - margin] (the margin only on position-commanded dims)
  3. delta clamp       - clip into present +- max_delta (present = the robot's measured value of each commanded dim;
                         skipped for robots that do not report one, e.g. delta/velocity-commanded arms)
  4. velocity limit    - clip into previous_sent +- max_velocity * dt
  5. workspace box     - optional box on chosen dims
A final clip into the position limits keeps the promise "what leaves is finite and inside the limits" even when the
boxes of stages 3-5 do not intersect the limits (e.g. a present position measured outside them).

Shapes: Da = action dim. Everything is float64 numpy, one action at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from genpolicy.errors import ConfigError
from genpolicy.real_robot.config import SafetyConfig

STAGES = ("nonfinite", "position", "delta", "velocity", "workspace")


@dataclass
class SafetyResult:
    """What the filter decided for one action."""

    action: np.ndarray  # (Da,) the action actually sent
    held: bool  # the hold action replaced the policy's action
    clamped: dict[str, bool]  # stage -> this action was changed by that stage


@dataclass
class SafetyFilter:
    """Stateful (it remembers the last action sent, for the velocity limit). One per robot connection."""

    low: np.ndarray  # (Da,) position limits after the margin
    high: np.ndarray  # (Da,)
    dt: float  # control period (s)
    max_delta: np.ndarray | None = None  # (Da,) per-step clamp against the present measured value
    max_velocity: np.ndarray | None = None  # (Da,) units per second against the last sent action
    workspace_dims: np.ndarray | None = None  # (W,) indices of the boxed dims
    workspace_low: np.ndarray | None = None  # (W,)
    workspace_high: np.ndarray | None = None  # (W,)
    enabled: bool = True
    counts: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STAGES})
    n_actions: int = 0
    last_sent: np.ndarray | None = None

    @classmethod
    def from_config(cls, cfg: SafetyConfig, action_low: np.ndarray, action_high: np.ndarray, dt: float,
                    position_dims: np.ndarray | None = None) -> "SafetyFilter":
        """Limits come from the robot's declared action range, shrunk by `cfg.margin` (a fraction of each range) on
        the dims commanded as positions (a margin keeps joints off their hard stops; a rate or delta command at full
        scale is not near one, so rate dims keep their whole range)."""
        lo, hi = np.asarray(action_low, np.float64), np.asarray(action_high, np.float64)
        if lo.shape != hi.shape or lo.ndim != 1 or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)) or np.any(hi <= lo):
            raise ConfigError(f"safety: the robot's action limits must be finite with low < high, got low={lo}, high={hi}")
        span = hi - lo
        pos = np.ones(lo.shape, bool) if position_dims is None else np.asarray(position_dims, bool)
        margin = np.where(pos, cfg.margin, 0.0) * span
        low, high = lo + margin, hi - margin
        da = lo.shape[0]

        def per_dim(v: float | list[float], name: str) -> np.ndarray | None:
            """Config values are fractions of each dim's range; 0 turns the stage off."""
            if isinstance(v, (int, float)):
                return None if v <= 0 else float(v) * span
            arr = np.asarray(v, np.float64)
            if arr.shape != (da,) or np.any(arr <= 0):
                raise ConfigError(f"safety.{name} must be a positive number or {da} positive numbers, got {v}")
            return arr * span

        ws = None
        if cfg.workspace_dims:
            ws = np.asarray(cfg.workspace_dims, np.int64)
            if np.any(ws < 0) or np.any(ws >= da) or len(cfg.workspace_low) != len(ws) or len(cfg.workspace_high) != len(ws):
                raise ConfigError(f"safety.workspace_dims/low/high must have equal lengths with dims in [0, {da}), "
                                  f"got {cfg.workspace_dims}, {cfg.workspace_low}, {cfg.workspace_high}")
        return cls(low=low, high=high, dt=float(dt), max_delta=per_dim(cfg.max_delta, "max_delta"),
                   max_velocity=per_dim(cfg.max_velocity, "max_velocity"), workspace_dims=ws,
                   workspace_low=None if ws is None else np.asarray(cfg.workspace_low, np.float64),
                   workspace_high=None if ws is None else np.asarray(cfg.workspace_high, np.float64), enabled=cfg.enabled)

    def reset(self) -> None:
        """Forget the last sent action (call at connect and at every episode start)."""
        self.last_sent = None

    def _safe_hold(self, hold: np.ndarray) -> np.ndarray:
        h = np.asarray(hold, np.float64).reshape(-1)
        h = np.where(np.isfinite(h), h, 0.5 * (self.low + self.high))  # a broken hold still never leaves the box
        return np.clip(h, self.low, self.high)

    def __call__(self, action: np.ndarray, hold: np.ndarray, present: np.ndarray | None = None) -> SafetyResult:
        """Filter one action. `hold` is the robot's hold command; `present` its measured value of each commanded dim."""
        self.n_actions += 1
        clamped = {s: False for s in STAGES}
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != self.low.shape:
            raise ValueError(f"safety filter: action has shape {a.shape}, the robot takes {self.low.shape}")
        if not self.enabled:
            out = a.copy()
            self.last_sent = out
            return SafetyResult(out, False, clamped)
        if not np.all(np.isfinite(a)):
            clamped["nonfinite"] = True
            self.counts["nonfinite"] += 1
            out = self._safe_hold(hold)
            self.last_sent = out
            return SafetyResult(out, True, clamped)

        def stage(name: str, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            y = np.clip(x, lo, hi)
            if not np.array_equal(y, x):
                clamped[name] = True
                self.counts[name] += 1
            return y

        a = stage("position", a, self.low, self.high)
        if self.max_delta is not None and present is not None:
            p = np.asarray(present, np.float64).reshape(-1)
            if p.shape == a.shape and np.all(np.isfinite(p)):
                a = stage("delta", a, p - self.max_delta, p + self.max_delta)
        if self.max_velocity is not None and self.last_sent is not None:
            step = self.max_velocity * self.dt
            a = stage("velocity", a, self.last_sent - step, self.last_sent + step)
        if self.workspace_dims is not None:
            sub = stage("workspace", a[self.workspace_dims], self.workspace_low, self.workspace_high)
            a = a.copy()
            a[self.workspace_dims] = sub
        a = np.clip(a, self.low, self.high)  # the invariant, whatever stages 3-5 did
        self.last_sent = a
        return SafetyResult(a, False, clamped)

    def report(self) -> dict[str, int]:
        return {"actions": self.n_actions, **{f"clamp_{k}": v for k, v in self.counts.items()}}
