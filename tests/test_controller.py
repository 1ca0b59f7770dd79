"""The controller on simulated time: cadence and overruns, late actions, blending, watchdog, hold on every exit.

The robot is the real sim robot (toy task); the clock is a FakeClock; policies are small deterministic runners that
misbehave on purpose (stall, NaN, huge values, raise).
"""

from __future__ import annotations

import numpy as np
import pytest

from genpolicy.config import ControllerConfig, SafetyConfig
from genpolicy.real_robot.clock import FakeClock, RateTimer
from genpolicy.real_robot.controller import Controller
from genpolicy.real_robot.inference import PolicySpec, SimulatedInference
from genpolicy.real_robot.safety import SafetyFilter
from genpolicy.real_robot.schedule import ActionSchedule
from genpolicy.real_robot.sim import SimRobot

RATE = 30.0
SPEC = PolicySpec(task="toy/bimodal", n_obs_steps=2, horizon=8, n_action_steps=4, state_dim=2, action_dim=2)


class Runner:
    """Chunk action i = base + i * slope on every dim (so a sent action tells which chunk index it came from)."""

    def __init__(self, base: float = 0.0, slope: float = 0.01, value: float | None = None, fail: bool = False) -> None:
        self.spec, self.base, self.slope, self.value, self.fail, self.calls = SPEC, base, slope, value, fail, 0

    def infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self.calls += 1
        SPEC.check_obs(obs)
        if self.fail:
            raise RuntimeError("policy crashed")
        if self.value is not None:
            return np.full((SPEC.horizon, SPEC.action_dim), self.value, np.float32)
        return np.repeat((self.base + self.slope * np.arange(SPEC.horizon))[:, None], SPEC.action_dim, 1).astype(np.float32)


def _setup(runner: Runner, latency_s: float = 0.0, clock: FakeClock | None = None, fail_on: float | None = None,
           safety: SafetyConfig | None = None, **ctl):
    clock = clock or FakeClock()
    robot = SimRobot("toy/bimodal", clock, RATE, seed=0, fail_on=fail_on)
    robot.connect()
    robot.start_episode(0)
    f = SafetyFilter.from_config(safety or SafetyConfig(max_velocity=0.0), robot.features.action_low,
                                 robot.features.action_high, 1 / RATE, robot.features.position_dims)
    ctl_cfg = ControllerConfig(rate_hz=RATE, **({"blending": "latest"} | ctl))
    return Controller(robot, SimulatedInference(runner, clock, latency_s), f, SPEC, ctl_cfg, clock), robot, clock


# --- timer --------------------------------------------------------------------------------------------------------
def test_timer_counts_overruns_and_skips_missed_ticks() -> None:
    clock = FakeClock(overshoot=0.001)
    t = RateTimer(100.0, clock)
    ticks = []
    for i in range(50):
        ticks.append(t.wait())
        clock.advance(0.002 if i != 20 else 0.025)  # tick 20's body takes 2.5 periods
    rep = t.report()
    assert rep.overruns == 1 and rep.skipped_ticks == 2
    assert ticks[:21] == list(range(21)) and ticks[21] == 23  # the missed ticks are skipped, not bunched
    assert rep.jitter_p50_ms == pytest.approx(1.0, abs=1e-6)  # every wake-up is the modelled 1 ms late
    assert rep.work_p50_ms == pytest.approx(2.0, abs=1e-6)  # the body time, measured from the (late) wake-up


# --- schedule -----------------------------------------------------------------------------------------------------
def test_late_actions_are_dropped_and_steps_stay_aligned() -> None:
    s = ActionSchedule("latest", latency_handling=True)
    chunk = np.arange(8)[:, None] * np.ones((1, 2))
    s.add(chunk, obs_step=10, now_step=13)  # predicted at 10, arrived at 13
    assert s.late_dropped == 3
    assert s.action_at(12) is None and s.action_at(13).action[0] == 3 and s.action_at(17).action[0] == 7
    naive = ActionSchedule("latest", latency_handling=False)
    naive.add(chunk, obs_step=10, now_step=13)
    assert naive.action_at(13).action[0] == 0  # executed from its first action at arrival


def test_blending_cuts_the_boundary_jump() -> None:
    jumps = {}
    for mode in ("latest", "blend", "ensemble"):
        s = ActionSchedule(mode, blend_steps=4, latency_handling=True)
        s.add(np.zeros((16, 1)), 0, 0)
        s.add(np.ones((16, 1)), 8, 8)  # the new plan disagrees by 1.0
        a = [s.action_at(t).action[0] for t in range(16)]
        jumps[mode] = max(abs(a[t] - a[t - 1]) for t in range(1, 16))
    assert jumps["latest"] == pytest.approx(1.0)
    assert jumps["blend"] <= jumps["latest"] / 2 - 1e-9 and jumps["ensemble"] <= jumps["latest"] / 2


# --- controller ---------------------------------------------------------------------------------------------------
def test_delayed_chunks_never_send_past_actions() -> None:
    runner = Runner(base=0.0, slope=0.1)
    ctl, robot, _ = _setup(runner, latency_s=2.5 / RATE)  # ready between ticks s+2 and s+3: taken at s+3
    rep = ctl.run_episode(max_steps=40, record=True)
    sent = np.asarray(rep.frames["policy_action"])[:, 0]
    valid = np.isfinite(sent)
    # a chunk predicted at step s arrives at s+3, so the first action executed from it is index 3 (value 0.3)
    assert np.nanmin(sent[valid]) == pytest.approx(0.3) and rep.late_dropped == 3 * rep.chunks
    assert rep.cadence.overruns == 0 and rep.status == "max_steps"


def test_nan_policy_holds_then_safe_stop() -> None:
    ctl, robot, _ = _setup(Runner(value=float("nan")), stop_after_s=0.5)
    rep = ctl.run_episode(max_steps=1000)
    hold = robot.hold_action()
    assert rep.status == "safe_stop" and rep.clamps["nonfinite"] > 0
    assert all(np.array_equal(a, hold) for a in robot.sent)  # NaN is never a range end: every command is the hold
    assert rep.steps == pytest.approx(0.5 * RATE, abs=2)


def test_huge_actions_are_clamped_into_the_limits() -> None:
    ctl, robot, _ = _setup(Runner(value=1e9))
    rep = ctl.run_episode(max_steps=30)
    sent = np.asarray(robot.sent)
    assert rep.clamps["position"] > 0
    assert np.all(sent <= robot.features.action_high) and np.all(sent >= robot.features.action_low)


def test_stalled_policy_goes_to_hold_within_n_periods() -> None:
    ctl, robot, _ = _setup(Runner(), latency_s=100.0, hold_after=2, stop_after_s=1.0)
    rep = ctl.run_episode(max_steps=1000)
    held = np.asarray(rep.frames["held"])
    assert held[0] == 1.0  # nothing to bridge with at the start: hold at once
    assert rep.status == "safe_stop" and rep.steps == pytest.approx(RATE * 1.0, abs=2)
    assert np.array_equal(robot.sent[-1], robot.hold_action())


def test_gap_is_bridged_then_held() -> None:
    # a chunk predicted at s covers s..s+7 and is taken at s+6; the next is asked for at s+8 and taken at s+14:
    # the 6-step gap s+8..s+13 is bridged with the last command for 2 ticks, then held for 4
    ctl, robot, _ = _setup(Runner(value=0.5), latency_s=5.5 / RATE, hold_after=2, stop_after_s=5.0, request_every=8)
    rep = ctl.run_episode(max_steps=62)
    held = np.asarray(rep.frames["held"]).astype(bool)
    pattern = "".join("H" if h else "a" for h in held[14:30])
    assert pattern == "aaaaHHHHaaaaHHHH", pattern  # taken(2) + bridged(2), held(4), ...


def test_exception_in_the_loop_still_ends_with_hold() -> None:
    ctl, robot, _ = _setup(Runner(value=0.25), fail_on=0.25)
    with pytest.raises(RuntimeError, match="actuator fault"):
        ctl.run_episode(max_steps=100)
    assert np.array_equal(robot.sent[-1], robot.hold_action())


def test_context_manager_holds_and_disconnects_on_error() -> None:
    ctl, robot, _ = _setup(Runner(value=0.5))
    with pytest.raises(KeyboardInterrupt):
        with ctl:
            ctl.run_episode(max_steps=5)
            robot.send_action(np.array([0.7, 0.7]))  # the last command before the failure is not a hold
            raise KeyboardInterrupt
    assert np.array_equal(robot.sent[-1], robot.hold_action()) and not robot.is_connected


def test_inference_errors_are_counted_and_the_loop_survives() -> None:
    ctl, robot, _ = _setup(Runner(fail=True), stop_after_s=0.3)
    rep = ctl.run_episode(max_steps=1000)
    assert rep.status == "safe_stop" and rep.inference_errors >= 1


def test_sim_robot_moves_on_without_the_controller() -> None:
    clock = FakeClock()
    robot = SimRobot("toy/bimodal", clock, RATE, seed=0, obs_latency_s=2 / RATE)
    robot.connect()
    robot.start_episode(0)
    robot.send_action(np.array([1.0, 0.0]))
    clock.advance(10 / RATE)
    obs_late = robot.get_observation()["state"]
    assert robot.steps == 10  # ten periods passed -> ten env steps with the held command
    assert np.allclose(obs_late, robot._history[-3][1]["state"])  # observations are 2 periods old
    assert not np.allclose(obs_late, robot._history[-1][1]["state"])
