"""The fixed-rate controller: observe, schedule, filter, send; inference runs off the loop.

Each tick (RateTimer on a monotonic clock):
  1. read the observation and push it into the To-step history;
  2. take finished chunks from the inference worker and stamp them into the action schedule;
  3. ask for a new chunk every `request_every` steps (never waiting for it); rtc/bid send the plan in force for the
     chunk's steps and the frozen prefix d (the largest measured delay, in steps, of the last `delay_window` chunks);
     sync asks only when the current chunk is used up and holds until the next one arrives;
  4. pick this step's action (latest/blended/ensembled). Without a valid one, the last command bridges up to `hold_after`
     periods, then the hold command is sent; after `stop_after_s` the episode ends in the safe state;
  5. with a teleoperator (real_robot/teleop.py): if it intervenes this tick, its command replaces the proposal;
  6. the safety filter (the same one for policy and teleop commands); send; record (intervention, source).
Shutdown always sends the hold command (try/finally), even when the loop body raised.

Shapes: To = n_obs_steps, Da = action dim.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from genpolicy.real_robot.clock import CadenceReport, Clock, RateTimer
from genpolicy.real_robot.config import ControllerConfig
from genpolicy.real_robot.inference import ChunkRequest, InferenceResult, PolicySpec
from genpolicy.real_robot.robot import Robot
from genpolicy.real_robot.safety import STAGES, SafetyFilter
from genpolicy.real_robot.schedule import ActionSchedule


class Inference(Protocol):
    busy: bool
    errors: int
    latencies: list[float]

    def submit(self, obs_step: int, obs: dict[str, np.ndarray], request: ChunkRequest | None = None) -> bool: ...

    def poll(self) -> list[InferenceResult]: ...

    def close(self) -> None: ...


@dataclass
class EpisodeReport:
    """What happened in one episode (named results; `frames` is what the recorder stores)."""

    steps: int
    status: str  # done (should_stop said so) | max_steps | safe_stop (no valid action for stop_after_s)
    cadence: CadenceReport
    held_ticks: int  # ticks on which the hold command was sent
    late_dropped: int  # chunk actions dropped because their time had passed
    inference_errors: int
    chunks: int
    # chunk boundaries: for the blend_steps steps after a newer chunk takes over, the change of the sent action in
    # excess of the outgoing plan's own change, |(a_t - a_{t-1}) - (old_t - old_{t-1})|_inf: the jump the switch adds
    max_boundary_jump: float
    clamps: dict[str, int]
    frames: dict[str, list] = field(default_factory=dict)
    lateness_ms: list[float] = field(default_factory=list)  # per tick, for pooled jitter statistics
    boundary_jumps: list[float] = field(default_factory=list)
    boundary_step_changes: list[float] = field(default_factory=list)  # raw |a_t - a_{t-1}|_inf at each takeover
    execution: str = "blend"
    mean_jerk: float = 0.0  # mean |third difference of the sent command|_2 * rate^3 (action units / s^3)
    delays: list[int] = field(default_factory=list)  # per chunk: arrival step - observation step
    frozen: list[int] = field(default_factory=list)  # rtc/bid: the frozen prefix d sent with each request
    starved_chunks: int = 0  # chunks (after the first) that arrived when the plan in force had already run out
    intervention_steps: int = 0  # ticks on which a teleoperator had control

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("frames", "cadence", "lateness_ms", "boundary_jumps",
                                                                  "boundary_step_changes", "delays", "frozen")}
        return d | {"cadence": self.cadence.as_dict()}


class Controller:
    def __init__(self, robot: Robot, inference: Inference, safety: SafetyFilter, spec: PolicySpec,
                 cfg: ControllerConfig, clock: Clock, teleop: Any = None) -> None:
        self.robot, self.inference, self.safety, self.spec, self.cfg, self.clock = robot, inference, safety, spec, cfg, clock
        self.teleop = teleop  # genpolicy.real_robot.teleop.Teleop or None
        self.request_every = cfg.request_every or spec.n_action_steps
        self.keys = ["state"] + [f"image.{c}" for c in spec.cameras]

    def __enter__(self) -> "Controller":
        """Connect (if needed); leaving the block sends the hold command and disconnects, whatever happened."""
        if not self.robot.is_connected:
            self.robot.connect()
        if self.teleop is not None and not self.teleop.is_connected:
            self.teleop.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._hold_safely()
        finally:
            try:
                self.robot.disconnect()
            finally:
                if self.teleop is not None:
                    self.teleop.disconnect()

    def _window(self, hist: deque) -> dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in hist]) for k in self.keys}  # {key: (To, ...)}

    def run_episode(self, max_steps: int, should_stop: Callable[[], bool] = lambda: False,
                    record: bool = True) -> EpisodeReport:
        """Drive the robot until `should_stop()`, `max_steps` ticks, or the safe stop. Always ends with a hold."""
        cfg = self.cfg
        mode, window = cfg.blending, cfg.blend_window
        timer = RateTimer(cfg.rate_hz, self.clock)
        # rtc and bid build the seam into the chunk itself, so the newest chunk simply takes over; sync executes each
        # chunk from its arrival (the robot held still meanwhile)
        sched = ActionSchedule(mode if mode in ("latest", "blend", "ensemble") else "latest", window, cfg.ensemble_k,
                               cfg.latency_handling and mode != "sync")
        delays: deque = deque(maxlen=cfg.delay_window)
        all_delays, all_frozen, sent_hist = [], [], []
        self._starved = 0
        hist: deque = deque(maxlen=self.spec.n_obs_steps)
        frames: dict[str, list] = {k: [] for k in (*self.keys, "action", "policy_action", "held", "clamped",
                                                   "lateness_ms", "t", "intervention")}
        if self.teleop is not None:
            self.teleop.reset()
        self.safety.reset()
        self.inference.poll()  # drop results of a previous episode: they must not leak in
        errors0, counts0 = self.inference.errors, dict(self.safety.counts)
        last_request, invalid_since, gap, held, chunks, status = -10**9, None, 0, 0, 0, "max_steps"
        prev_sent, prev_owner, last_policy = None, None, None
        outgoing, switch_step, jumps, raw_jumps = None, -1, [], []  # the plan being replaced, and when
        t_start = self.clock.now()
        step, n_teleop = 0, 0
        try:
            while True:
                step = timer.wait()
                if step >= max_steps:
                    break
                obs = self.robot.get_observation()
                if not hist:
                    hist.extend([obs] * self.spec.n_obs_steps)
                else:
                    hist.append(obs)
                chunks += self._take(sched, step, delays, all_delays)
                sched.prune(step)
                due = sched.remaining(step) == 0 if mode == "sync" else step - last_request >= self.request_every
                if not self.inference.busy and due:
                    request = None
                    if mode in ("rtc", "bid"):
                        d = max(delays) + cfg.delay_margin if delays else 0
                        request = ChunkRequest(self._plan(sched, step), d)
                        all_frozen.append(d)
                    if self.inference.submit(step, self._window(hist), request):
                        last_request = step
                        if mode == "sync":  # a result ready at once (zero latency) is used on this very tick
                            chunks += self._take(sched, step, delays, all_delays)
                pick = sched.action_at(step)
                valid = pick is not None and bool(np.all(np.isfinite(pick.action)))
                now = self.clock.now()
                policy_proposal = pick.action if valid else None
                # the teleoperator decides before the policy's gap handling: while a person drives, a missing policy
                # action is no reason to bridge, hold or stop
                teleop_on = self.teleop is not None and bool(self.teleop.is_intervening(obs, policy_proposal))
                if teleop_on:
                    invalid_since, gap = None, 0
                    proposal = np.asarray(self.teleop.get_action(obs), np.float64)
                elif valid:
                    invalid_since, gap = None, 0
                    proposal = pick.action
                else:
                    invalid_since = now if invalid_since is None else invalid_since
                    gap += 1
                    if now - invalid_since >= cfg.stop_after_s:
                        status = "safe_stop"
                        break
                    if pick is not None:
                        proposal = pick.action  # non-finite: the filter replaces it with the hold and counts it
                    elif last_policy is not None and gap <= cfg.hold_after and mode != "sync":
                        proposal = last_policy  # bridge a short gap with the last policy command
                    else:
                        proposal = None  # the hold command
                hold = self.robot.hold_action()
                if proposal is None:
                    out, is_hold, clamped = self.safety(hold, hold, self.robot.present_action()), True, None
                else:
                    out = self.safety(proposal, hold, self.robot.present_action())
                    is_hold, clamped = out.held, out.clamped
                held += int(is_hold)
                n_teleop += int(teleop_on)
                sent = self.robot.send_action(out.action)
                sent_hist.append(np.asarray(sent, np.float64))
                last_policy = None if (is_hold or teleop_on) else sent
                owner = pick.chunk if valid and not teleop_on else None
                if prev_sent is not None and owner is not None and prev_owner is not None and owner != prev_owner:
                    outgoing, switch_step = sched.chunk(prev_owner), step
                    raw_jumps.append(float(np.max(np.abs(sent - prev_sent))))
                if outgoing is not None and prev_sent is not None and step - switch_step < window:
                    if outgoing.start < step < outgoing.end:  # the jump in excess of the outgoing plan's own motion
                        plan_step = outgoing.actions[step - outgoing.start] - outgoing.actions[step - 1 - outgoing.start]
                        jumps.append(float(np.max(np.abs((sent - prev_sent) - plan_step))))
                prev_sent, prev_owner = sent, (owner if owner is not None else prev_owner)
                if record:
                    # policy_action is the policy's own proposal, also on teleop ticks (what it would have done)
                    self._record(frames, obs, sent, proposal if not teleop_on else policy_proposal,
                                 (is_hold, clamped), timer, now - t_start)
                    frames["intervention"].append(float(teleop_on))
                if should_stop():
                    status = "done"
                    break
        finally:
            self._hold_safely()
        return EpisodeReport(steps=min(step, max_steps), status=status, cadence=timer.report(), held_ticks=held,
                             late_dropped=sched.late_dropped, inference_errors=self.inference.errors - errors0,
                             chunks=chunks, max_boundary_jump=max(jumps, default=0.0),
                             boundary_jumps=jumps, boundary_step_changes=raw_jumps, intervention_steps=n_teleop,
                             clamps={k: self.safety.counts[k] - counts0[k] for k in STAGES}, frames=frames,
                             lateness_ms=[x * 1e3 for x in timer.lateness], execution=mode,
                             mean_jerk=mean_jerk(sent_hist, cfg.rate_hz), delays=all_delays, frozen=all_frozen,
                             starved_chunks=self._starved)

    def _take(self, sched: ActionSchedule, step: int, delays: deque, all_delays: list) -> int:
        """Stamp finished chunks into the schedule; record each one's delay in steps (what rtc's d is estimated
        from: the steps actually consumed while it was computed, not a wall-clock guess). Returns how many."""
        n = 0
        for res in self.inference.poll():
            if res.actions is None:
                continue
            actions = res.actions[: self.request_every] if self.cfg.blending == "sync" else res.actions
            if all_delays and sched.remaining(step) == 0 and self.cfg.blending != "sync":  # sync waits by design
                self._starved += 1
            sched.add(actions, res.obs_step, step)
            delays.append(step - res.obs_step)
            all_delays.append(step - res.obs_step)
            n += 1
        return n

    def _plan(self, sched: ActionSchedule, step: int) -> np.ndarray:
        """The plan in force from `step` on, up to one horizon, as the robot will execute it (n, Da); stops at the
        first step no chunk covers."""
        out = []
        for s in range(step, step + self.spec.horizon):
            a = sched.action_at(s)
            if a is None:
                break
            out.append(a.action)
        return np.asarray(out, np.float64).reshape(len(out), self.spec.action_dim)

    def _record(self, frames: dict[str, list], obs: dict[str, np.ndarray], sent: np.ndarray,
                proposal: np.ndarray | None, flags: tuple, timer: RateTimer, t: float) -> None:
        da = self.spec.action_dim
        for k in self.keys:
            frames[k].append(obs[k])
        frames["action"].append(np.asarray(sent, np.float64))
        frames["policy_action"].append(np.full(da, np.nan) if proposal is None else np.asarray(proposal, np.float64))
        held, clamped = flags
        frames["held"].append(float(held))
        frames["clamped"].append(np.asarray([float(bool(clamped and clamped[s])) for s in STAGES]))
        frames["lateness_ms"].append(timer.lateness[-1] * 1e3 if timer.lateness else 0.0)
        frames["t"].append(t)

    def _hold_safely(self) -> None:
        """The last command of every episode is the hold command, whatever happened before."""
        try:
            self.robot.send_action(self.safety._safe_hold(self.robot.hold_action()))
        except Exception:  # the robot itself is failing; disconnect (the caller's finally) is all that is left
            pass


def mean_jerk(sent: list[np.ndarray], rate_hz: float) -> float:
    """Mean |a_t - 3 a_(t-1) + 3 a_(t-2) - a_(t-3)|_2 * rate^3 over an episode's sent commands (units per s^3, so
    rates compare); 0 for fewer than four commands."""
    if len(sent) < 4:
        return 0.0
    a = np.asarray(sent, np.float64)
    d3 = a[3:] - 3 * a[2:-1] + 3 * a[1:-2] - a[:-3]
    return float(np.linalg.norm(d3, axis=1).mean() * rate_hz**3)
