"""Teleoperators in the control loop, on simulated time: the simulated expert takes over exactly by its rule and hands
back after its stated number of ticks; its commands pass the same safety filter as the policy's; every frame is
recorded with intervention and source, and both survive the LeRobot v3 round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genpolicy.config import ControllerConfig, SafetyConfig
from genpolicy.real_robot.clock import FakeClock
from genpolicy.real_robot.controller import Controller
from genpolicy.real_robot.inference import PolicySpec, SimulatedInference
from genpolicy.real_robot.safety import SafetyFilter
from genpolicy.real_robot.sim import SimRobot
from genpolicy.real_robot.teleop import LeRobotTeleop, SimLeRobotTeleop, SimTeleop

RATE = 30.0
SPEC = PolicySpec(task="toy/bimodal", n_obs_steps=1, horizon=8, n_action_steps=4, state_dim=2, action_dim=2)


class UpRunner:
    """Always proposes (0, `speed`): straight up. The toy expert goes round the obstacle, so its action agrees with
    this on the straight stretches and departs from it at the turns: both branches of the deviation rule occur."""

    def __init__(self, speed: float = 1.0) -> None:
        self.spec, self.speed = SPEC, speed

    def infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.tile(np.array([0.0, self.speed], np.float32), (SPEC.horizon, 1))


class LoggedExpert:
    """A toy expert that logs what it answered, so the test can replay the rule on the same numbers."""

    def __init__(self) -> None:
        from genpolicy.envs.toy import ToyExpert

        self.inner, self.log = ToyExpert(seed=3), []

    def reset(self) -> None:
        self.inner.reset()
        self.log = []

    def act(self, env, obs):
        a = self.inner.act(env, obs)
        self.log.append(np.asarray(a, np.float64))
        return a


class FixedTeleop:
    """Intervenes with one fixed command on every tick where the policy has a proposal (all but the first), so that
    a policy proposing the same command sees the very same filter history."""

    def __init__(self, action) -> None:
        self.action, self._c = np.asarray(action, np.float64), False

    is_connected = property(lambda self: self._c)

    def connect(self) -> None:
        self._c = True

    def disconnect(self) -> None:
        self._c = False

    def reset(self) -> None:
        pass

    def is_intervening(self, obs, policy_action) -> bool:
        return policy_action is not None

    def get_action(self, obs) -> np.ndarray:
        return self.action.copy()


def _run(runner, teleop=None, steps: int = 90, safety: SafetyConfig | None = None, robot_wrap=None):
    clock = FakeClock()
    robot = SimRobot("toy/bimodal", clock, RATE, seed=0, max_episode_steps=10_000)
    f = SafetyFilter.from_config(safety or SafetyConfig(max_velocity=0.0), robot.features.action_low,
                                 robot.features.action_high, 1 / RATE, robot.features.position_dims)
    t = teleop(robot) if callable(teleop) and not hasattr(teleop, "is_intervening") else teleop
    ctl = Controller(robot, SimulatedInference(runner, clock, 0.0), f, SPEC,
                     ControllerConfig(rate_hz=RATE, blending="latest"), clock, t)
    with ctl:
        robot.start_episode(0)
        rep = ctl.run_episode(steps)
    return rep, robot, f, t


def _replay_deviation_rule(policy: np.ndarray, expert: list[np.ndarray], threshold: float, hold: int) -> list[float]:
    """The stated rule, written out: on a policy tick with a proposal, take over when the inf-norm gap exceeds the
    threshold; keep control for `hold` ticks in all (the triggering tick included), then hand back."""
    out, left = [], 0
    for pa, ea in zip(policy, expert):
        if left > 0:
            left -= 1
            out.append(1.0)
        elif np.all(np.isfinite(pa)) and np.max(np.abs(pa - ea)) > threshold:
            left = hold - 1
            out.append(1.0)
        else:
            out.append(0.0)
    return out


@pytest.mark.parametrize("lerobot_api", [False, True])
def test_sim_teleop_takes_over_by_the_deviation_rule_and_hands_back_after_hold_steps(lerobot_api: bool) -> None:
    expert, hold, thr = LoggedExpert(), 7, 1.0

    def make(robot):
        st = SimTeleop(expert, robot.env, "deviation", threshold=thr, hold_steps=hold)
        return LeRobotTeleop(SimLeRobotTeleop(st, 2), ["a0", "a1"]) if lerobot_api else st

    rep, robot, _, _ = _run(UpRunner(), make, steps=45)
    flags = rep.frames["intervention"]
    policy = np.asarray(rep.frames["policy_action"])
    assert flags == _replay_deviation_rule(policy, expert.log, thr, hold)
    # both outcomes happened, and every takeover ran exactly `hold` ticks (the last may be cut by the episode end)
    runs, n = [], 0
    for f in flags + [0.0]:
        if f:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    assert 2 <= len(runs) and 0 < sum(flags) < len(flags)
    assert all(r % hold == 0 for r in runs[:-1]) and runs[-1] <= len(flags)
    # what was sent on teleop ticks is the expert's command (inside the limits, so unclamped); else the policy's
    sent = np.asarray(rep.frames["action"])
    on = np.asarray(flags, bool)
    np.testing.assert_allclose(sent[on], np.asarray(expert.log)[on], atol=1e-6)
    mine = ~on & np.isfinite(policy).all(1)  # the first tick has no proposal yet: the hold command goes out
    assert mine.sum() >= len(flags) // 4
    np.testing.assert_allclose(sent[mine], policy[mine], atol=1e-6)
    assert rep.intervention_steps == int(on.sum())


def test_sim_teleop_stall_rule_fires_after_stall_steps_and_restarts_its_window() -> None:
    progress = [0.0]
    expert, stall, hold = LoggedExpert(), 10, 4
    teleop = None

    def make(robot):
        nonlocal teleop
        teleop = SimTeleop(expert, robot.env, "stall", hold_steps=hold, stall_steps=stall, stall_tol=1e-3,
                           progress=lambda: progress[0])
        return teleop

    rep, *_ = _run(UpRunner(speed=0.0), make, steps=40)  # the policy stands still: progress never rises
    flags = rep.frames["intervention"]
    # window of stall+1 samples: full at tick `stall`; takeover ticks stall..stall+hold-1; a fresh window after
    period = hold + stall  # takeovers at ticks stall, stall + period, ...: 10, 24, 38
    want = [1.0 if t >= stall and (t - stall) % period < hold else 0.0 for t in range(len(flags))]
    assert flags == want
    assert teleop.takeovers == 3 and teleop.last_trigger == "stall"


def test_teleop_commands_pass_the_same_safety_filter_as_policy_commands() -> None:
    class Const:
        spec = SPEC

        def __init__(self, v) -> None:
            self.v = np.asarray(v, np.float32)

        def infer(self, obs):
            return np.tile(self.v, (SPEC.horizon, 1))

    safety = SafetyConfig(margin=0.1, max_velocity=6.0, workspace_dims=[1], workspace_low=[-0.3], workspace_high=[0.3])
    wild = [5.0, -5.0]
    by_policy, _, f_policy, _ = _run(Const(wild), None, steps=20, safety=safety)
    by_teleop, _, f_teleop, _ = _run(Const([0.0, 0.0]), FixedTeleop(wild), steps=20, safety=safety)
    a_policy, a_teleop = np.asarray(by_policy.frames["action"]), np.asarray(by_teleop.frames["action"])
    assert by_teleop.frames["intervention"] == [0.0] + [1.0] * 19
    np.testing.assert_array_equal(a_teleop, a_policy)
    # position limit (1), velocity (6 range/s * 2 / 30 Hz = 0.4 per tick), workspace box on dim 1
    np.testing.assert_allclose(a_teleop[:4, 0], [0.0, 0.4, 0.8, 1.0])
    np.testing.assert_allclose(a_teleop[1:, 1], -0.3)
    assert by_teleop.clamps == by_policy.clamps and by_teleop.clamps["position"] > 0
    # a non-finite teleop command becomes the hold command, counted like a policy's
    nan_rep, robot, _, _ = _run(Const([0.0, 0.0]), FixedTeleop([np.nan, 0.0]), steps=5, safety=safety)
    assert nan_rep.clamps["nonfinite"] == 4 and nan_rep.held_ticks == 5


def test_intervention_and_source_survive_the_lerobot_v3_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("ledataset")
    import pyarrow.parquet as pq

    from genpolicy.real_robot.recorder import EpisodeRecorder
    from genpolicy.datasets.lerobot import import_lerobot

    rec = EpisodeRecorder(tmp_path / "run", RATE, "toy/bimodal")
    flags_all = []
    for ep in range(2):
        expert = LoggedExpert()
        rep, *_ = _run(UpRunner(), lambda robot: SimTeleop(expert, robot.env, "deviation", 0.5, 5), steps=30 + 7 * ep)
        rec.add(rep.frames, {"episode": ep})
        flags_all.append(np.asarray(rep.frames["intervention"], np.float32))
    flags = np.concatenate(flags_all)
    assert 0 < flags.sum() < len(flags)
    # our reader: the dataset is a valid v3 dataset with the episodes and actions
    rb = import_lerobot(rec.dataset_dir)
    assert rb.n_episodes == 2 and rb.n_steps == len(flags)
    # the frame table as stored (what any LeRobot loader reads), in (episode, frame) order
    table = pq.read_table(sorted((rec.dataset_dir / "data").glob("*/*.parquet"))).to_pydict()
    order = np.lexsort((table["frame_index"], table["episode_index"]))
    col = lambda k: np.asarray(table[k], np.float32).reshape(len(order), -1)[order, 0]  # noqa: E731
    np.testing.assert_array_equal(col("intervention"), flags)
    np.testing.assert_array_equal(col("source"), flags)  # 1 = teleop exactly on intervention frames
    info = json.loads((rec.dataset_dir / "meta" / "info.json").read_text())["features"]
    assert info["intervention"]["dtype"] == "bool" and info["source"]["dtype"] == "float32"  # as LeRobot's own
    # and LeRobot's own dataset class loads it, columns included
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/genpolicy-deploy", root=rec.dataset_dir)
    got = np.asarray([float(np.asarray(ds.hf_dataset[i]["intervention"]).reshape(-1)[0]) for i in range(len(ds))])
    src = np.asarray([float(np.asarray(ds.hf_dataset[i]["source"]).reshape(-1)[0]) for i in range(len(ds))])
    np.testing.assert_array_equal(got, flags)
    np.testing.assert_array_equal(src, flags)
    # a recorder reopened on the run keeps the columns (resumed deploys append after them)
    again = EpisodeRecorder(tmp_path / "run", RATE, "toy/bimodal")
    np.testing.assert_array_equal(np.concatenate([e["intervention"] for e in again.episodes]), flags)


@pytest.mark.parametrize("teleop", ["sim", "lerobot_sim"])
def test_deploy_with_a_simulated_teleoperator_records_its_frames(tmp_path: Path, teleop: str, monkeypatch) -> None:
    """`genpolicy deploy ... teleop=sim|lerobot_sim` end to end (real clock, fast rate): the expert takes over, the
    run reports the intervention rate, and the recorded dataset holds the flags of every frame."""
    from genpolicy.cli import compose
    from genpolicy.config import DeployConfig
    from genpolicy.dagger import run_dagger
    from genpolicy.real_robot.deploy import deploy
    from genpolicy.real_robot.recorder import EpisodeRecorder
    from tests.test_dagger import _cfg

    ckpt = run_dagger(_cfg(tmp_path / "bc", rounds=0))["final_checkpoint"]  # a barely trained toy policy
    cfg = compose("deploy", [f"ckpt={ckpt}", "robot=sim", f"teleop={teleop}", "n_episodes=2", "controller.rate_hz=100",
                             "controller.max_steps=40", "intervention.threshold=0.3", "intervention.hold_steps=5",
                             f"run.dir={tmp_path / 'deploy'}", "run.progress=false"], DeployConfig)
    events = []  # lerobot_sim goes through LeRobot's event API: count its calls
    real_events = SimLeRobotTeleop.get_teleop_events
    monkeypatch.setattr(SimLeRobotTeleop, "get_teleop_events", lambda self: events.append(1) or real_events(self))
    res = deploy(cfg)
    assert bool(events) == (teleop == "lerobot_sim")
    steps = [e["intervention_steps"] for e in res["episodes"]]
    assert res["teleop"] == teleop and sum(steps) > 0 and 0 < res["intervention_rate"] <= 1
    rec = EpisodeRecorder(tmp_path / "deploy", 100.0, "toy/bimodal")
    assert [int(e["intervention"].sum()) for e in rec.episodes] == steps
    np.testing.assert_array_equal(np.concatenate([e["source"] for e in rec.episodes]),
                                  np.concatenate([e["intervention"] for e in rec.episodes]))
