"""`genpolicy dagger`: learning from corrections. Rounds of roll out -> label -> aggregate -> retrain.

Round 0 trains BC on `init_demos` teacher demonstrations. Each later round r:
  1. rolls out the previous round's policy for `episodes_per_round` episodes:
       mode=dagger:    a beta-mixture per chunk: at every chunk boundary (every Ta steps) the teacher executes the
                       next Ta steps with probability beta_r = beta * beta_decay**(r-1), the student otherwise;
       mode=hg_dagger: the student drives; the simulated teleoperator (real_robot/teleop.SimTeleop: the teacher
                       with a deviation/stall rule) takes over and hands back after `intervention.hold_steps`;
  2. labels: dagger labels every visited state with the teacher's action there; hg_dagger keeps only the
     intervention segments (each segment is one episode of the round's data, so training windows never span a gap);
  3. aggregates the round's data with every earlier round's (rounds/<r>/aggregate.zarr = rounds 0..r, in order);
  4. retrains with `genpolicy train`'s loop on the aggregate, warm-started from the previous round (train.init_from).

Labels are per step (the teacher is asked at every visited state) and a training window's action chunk is the
teacher's actions at H consecutive visited states: the student's executed trajectory, teacher-labelled. (An
open-loop teacher chunk from each state would need the simulator's state cloned per step; DESIGN.md keeps one env.)

Labelled steps (the budget axis): every stored frame is one teacher label (demos + dagger rollouts + hg_dagger
intervention frames). The simulated hg_dagger teacher also looks at every student step to apply its rule, as a
person watching the robot does; those looks are not labels and are not counted.

Episode seeds: every episode of the run, demonstrations first, takes the next seed from data.seed on (all in the
protocol's demonstration range, disjoint from selection and test seeds). So with beta=1 every round's data is
exactly the teacher's own demonstrations on the next seeds.

Resume: rounds/<r>/data.zarr (atomic) is kept once collected; training resumes from its latest checkpoint;
dagger.json (written atomically after each round) records finished rounds. `run.resume=true` continues at the first
unfinished round; a finished round is never redone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from genpolicy.config import (DataConfig, EvalConfig, InterventionConfig, OptimConfig, PolicyConfig, RunConfig,
                              TaskConfig, TrainConfig, _bounded, _check, _check_types)
from genpolicy.datasets.replay_buffer import ReplayBuffer
from genpolicy.errors import ConfigError, DataError

MODES = ("dagger", "hg_dagger")
STATE_FILE = "dagger.json"


@dataclass
class DaggerConfig:
    """`genpolicy dagger task=... mode=dagger|hg_dagger`. `train` is the BC recipe of every round."""

    task: TaskConfig = field(default_factory=TaskConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n_episodes=5, n_videos=0))  # after each round
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)  # seed: first episode seed; val_fraction, noise of demos
    mode: str = "dagger"
    rounds: int = 5  # rounds after round 0 (BC on the demonstrations)
    init_demos: int = 10  # teacher demonstrations for round 0
    episodes_per_round: int = 10
    beta: float = 1.0  # dagger: teacher probability per chunk in round 1 ...
    beta_decay: float = 0.5  # ... times this per round (beta_r = beta * beta_decay**(r-1))
    warm_start: bool = True  # retrain from the previous round's weights (false: from scratch, plain BC each round)
    intervention: InterventionConfig = field(default_factory=lambda: InterventionConfig(threshold=0.5, hold_steps=20))
    expert_path: str = ""  # SAC expert directory for gym/dmc tasks

    def __post_init__(self) -> None:
        _check_types(self, "")
        _bounded(self, "", rounds=(0, 10_000), init_demos=(1, 100_000), episodes_per_round=(1, 100_000))
        _check(self.mode in MODES, f"mode must be dagger|hg_dagger, got '{self.mode}'")
        _check(0.0 <= self.beta <= 1.0, f"beta must be in [0, 1], got {self.beta}")
        _check(0.0 <= self.beta_decay <= 1.0, f"beta_decay must be in [0, 1], got {self.beta_decay}")
        last_seed = self.data.seed + self.init_demos + self.rounds * self.episodes_per_round
        from genpolicy.protocol import SEEDS

        _check(self.data.seed >= 0 and last_seed <= SEEDS.demos.stop,
               f"data.seed={self.data.seed}: the run's episode seeds (up to {last_seed}) must stay in the "
               f"demonstration range [0, {SEEDS.demos.stop})")
        _check(self.eval.split != "test", "eval.split=test: test episodes are never seen during a run; evaluate "
                                          "each round's checkpoint with `genpolicy eval ... eval.split=test`")

    def beta_at(self, r: int) -> float:
        """Teacher probability per chunk in round r >= 1 (round 0 is the teacher's demonstrations: 1)."""
        return 1.0 if r == 0 else self.beta * self.beta_decay ** (r - 1)


# ----------------------------------------------------------------------------------------------------------------------
# state
# ----------------------------------------------------------------------------------------------------------------------
def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old or the new file, never a torn one


def read_state(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / STATE_FILE
    if not p.exists():
        return {"rounds": []}
    try:
        st = json.loads(p.read_text())
        assert isinstance(st, dict) and isinstance(st.get("rounds"), list)
        return st
    except (ValueError, AssertionError):
        raise DataError(f"{p}: not a dagger state file") from None


def _round_dir(run_dir: Path, r: int) -> Path:
    return Path(run_dir) / "rounds" / f"{r:03d}"


# ----------------------------------------------------------------------------------------------------------------------
# rollouts
# ----------------------------------------------------------------------------------------------------------------------
class _Student:
    """The policy stepped one action at a time from its own chunks; `replan()` drops the rest of the chunk."""

    def __init__(self, policy: Any, seed: int) -> None:
        self.policy, self.queue = policy, deque()
        self.hist: deque = deque(maxlen=policy.cfg.n_obs_steps)
        self.gen = torch.Generator().manual_seed(seed)

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        if not self.hist:
            self.hist.extend([obs] * self.hist.maxlen)
        else:
            self.hist.append(obs)

    def replan(self) -> None:
        self.queue.clear()

    @torch.no_grad()
    def action(self) -> np.ndarray:
        if not self.queue:
            window = {k: torch.as_tensor(np.stack([o[k] for o in self.hist]))[None] for k in self.hist[0]}
            chunk = self.policy.predict_chunk(window, generator=self.gen)[0, : self.policy.cfg.n_action_steps]
            self.queue.extend(chunk.cpu().numpy().astype(np.float32))
        return self.queue.popleft()


def rollout_round(cfg: DaggerConfig, policy: Any | None, r: int, first_seed: int, n_episodes: int,
                  progress: bool = True) -> tuple[ReplayBuffer | None, dict[str, Any]]:
    """Collect round r's labelled data. policy=None means the teacher alone (round 0, or beta=1).

    Returns (buffer of labelled episodes or None when nothing was labelled, stats)."""
    from genpolicy.envs.registry import make_env
    from genpolicy.experts.registry import make_expert
    from genpolicy.real_robot.teleop import SimTeleop
    from genpolicy.training.runs import progress_bar

    task = cfg.task.name
    env = make_env(task, seed=first_seed, max_episode_steps=cfg.task.max_episode_steps)
    teacher = make_expert(task, noise=cfg.data.noise, seed=first_seed, expert_path=cfg.expert_path)
    beta = cfg.beta_at(r)
    hg = cfg.mode == "hg_dagger" and r > 0
    iv = cfg.intervention
    last_reward = [0.0]
    gate = SimTeleop(teacher, env, iv.rule, iv.threshold, iv.hold_steps, iv.stall_steps, iv.stall_tol,
                     progress=lambda: last_reward[0]) if hg else None
    ta = policy.cfg.n_action_steps if policy is not None else 1
    episodes: list[dict[str, np.ndarray]] = []
    stats = {"round": r, "beta": beta if not hg else None, "episodes": n_episodes, "env_steps": 0, "labels": 0,
             "interventions": 0, "intervention_steps": 0, "teacher_steps": 0, "rollout_successes": 0,
             "first_seed": first_seed}
    bar = progress_bar(n_episodes, f"round {r} {cfg.mode}", "ep", progress)
    for i in range(n_episodes):
        seed = first_seed + i
        obs = env.reset(seed=seed)
        if gate is not None:
            gate.reset()  # resets the teacher too
        else:
            teacher.reset()
        student = _Student(policy, seed) if policy is not None else None
        # who drives each chunk is drawn from its own stream, so labels do not shift the draws
        mix = np.random.default_rng([cfg.run.seed, r, seed])
        frames: dict[str, list] = {k: [] for k in obs} | {"action": []}
        segments: list[dict[str, np.ndarray]] = []
        done, success, t, teacher_chunk, was_on = False, False, 0, True, False
        takeovers0 = gate.takeovers if gate is not None else 0
        while not done:
            if student is not None:
                student.observe(obs)
            if gate is not None:  # hg_dagger: the student proposes; the gate decides who acts
                proposal = None
                if not gate.in_takeover:  # mid-takeover the proposal is not looked at: no inference
                    if was_on:
                        student.replan()  # after a hand-back it plans afresh from where the teacher left it
                    proposal = student.action()
                on = gate.is_intervening(obs, proposal)
                label = gate.get_action(obs) if on else None
                if on:
                    for k, v in obs.items():
                        frames[k].append(v)
                    frames["action"].append(np.asarray(label, np.float32))
                elif was_on:  # a segment ended: it becomes one episode of the round's data
                    segments.append(_stack(frames))
                    frames = {k: [] for k in frames}
                was_on = on
                act = label if on else proposal
                stats["intervention_steps"] += int(on)
            else:
                label = np.asarray(teacher.act(env, obs), np.float32)  # every visited state gets the teacher's label
                if t % ta == 0:
                    teacher_chunk = student is None or mix.random() < beta
                    if student is not None and not teacher_chunk:
                        student.replan()
                act = label if teacher_chunk else student.action()
                stats["teacher_steps"] += int(teacher_chunk)
                for k, v in obs.items():
                    frames[k].append(v)
                frames["action"].append(label)
            obs, rew, term, trunc, info = env.step(np.asarray(act, np.float32))
            last_reward[0] = float(rew)
            success = success or bool(info.get("success", False))
            done = bool(term or trunc)
            t += 1
        stats["env_steps"] += t
        stats["rollout_successes"] += int(success)
        if gate is not None:
            stats["interventions"] += gate.takeovers - takeovers0
            if frames["action"]:
                segments.append(_stack(frames))
            episodes += segments
        else:
            episodes.append(_stack(frames))
        bar.update(1)
        bar.set_postfix(success=f"{stats['rollout_successes'] / (i + 1):.2f}")
    bar.close()
    env.close()
    stats["labels"] = int(sum(len(e["action"]) for e in episodes))
    stats["rollout_success"] = stats["rollout_successes"] / n_episodes
    stats["intervention_rate"] = stats["intervention_steps"] / max(1, stats["env_steps"]) if hg else None
    if not episodes:
        return None, stats
    rb = ReplayBuffer.from_episodes(episodes, attrs={"task": task, "source": f"genpolicy dagger round {r}",
                                                     "round": r, "mode": cfg.mode, "first_seed": first_seed})
    return rb, stats


def _stack(frames: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.stack(v).astype(np.float32 if k in ("state", "action") else np.asarray(v[0]).dtype)
            for k, v in frames.items()}


def aggregate(run_dir: Path, upto: int) -> ReplayBuffer:
    """Rounds 0..upto in order (earlier rounds first, never dropped): the training set of round `upto`."""
    eps: list[dict[str, np.ndarray]] = []
    per_round = []
    for r in range(upto + 1):
        p = _round_dir(run_dir, r) / "data.zarr"
        if not p.exists():
            per_round.append(0)  # an hg_dagger round without interventions adds nothing
            continue
        rb = ReplayBuffer.load(p)
        eps += [rb.episode(i) for i in range(rb.n_episodes)]
        per_round.append(rb.n_episodes)
    return ReplayBuffer.from_episodes(eps, attrs={"source": "genpolicy dagger aggregate", "rounds": upto + 1,
                                                  "episodes_per_round": per_round})


# ----------------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------------
def _train_cfg(cfg: DaggerConfig, r: int, data: Path, init_from: str, resume: bool) -> TrainConfig:
    return TrainConfig(task=cfg.task, policy=cfg.policy, data=dataclasses.replace(cfg.data, path=str(data)),
                       train=dataclasses.replace(cfg.train, init_from=init_from), eval=cfg.eval,
                       run=dataclasses.replace(cfg.run, dir=str(_round_dir(Path(cfg.run.dir), r) / "train"),
                                               resume=resume, progress=cfg.run.progress, name=""))


def run_dagger(cfg: DaggerConfig, after_round: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or continue) rounds 0..cfg.rounds; returns {run_dir, rounds: [row per round], final_checkpoint}."""
    from genpolicy.training.bc import train
    from genpolicy.training.checkpoint import load_policy
    from genpolicy.training.runs import make_run_dir

    from genpolicy.experts.registry import make_expert

    # a task without a teacher is refused before the run directory exists
    make_expert(cfg.task.name, seed=cfg.data.seed, expert_path=cfg.expert_path)
    run_dir = make_run_dir(cfg.run, f"dagger-{cfg.task.name}-{cfg.mode}")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=str(run_dir)))
    state = read_state(run_dir)
    if state["rounds"] and not cfg.run.resume:
        raise ConfigError(f"{run_dir}: already holds {len(state['rounds'])} dagger round(s); continue with "
                          "run.resume=true or choose a new run.dir")
    saved = state.get("config")
    if saved is not None:  # a resumed run must be the same experiment; more rounds are allowed
        now = json.loads(json.dumps(asdict(cfg), default=str))
        diff = sorted(k for k in now if k not in ("rounds", "run") and saved.get(k) != now[k])
        if diff:
            raise ConfigError(f"{run_dir / STATE_FILE}: cannot resume with a different config (changed: {', '.join(diff)})")
    state["config"] = json.loads(json.dumps(asdict(cfg), default=str))
    rows: list[dict[str, Any]] = state["rounds"]
    for r in range(len(rows), cfg.rounds + 1):
        rdir = _round_dir(run_dir, r)
        rdir.mkdir(parents=True, exist_ok=True)
        first_seed = cfg.data.seed + (0 if r == 0 else cfg.init_demos + (r - 1) * cfg.episodes_per_round)
        n_eps = cfg.init_demos if r == 0 else cfg.episodes_per_round
        prev_ckpt = rows[-1]["checkpoint"] if rows else ""
        stats_path = rdir / "rollout.json"
        if stats_path.exists():  # collected before an interruption: the same data (collection is deterministic)
            stats = json.loads(stats_path.read_text())
        else:
            student = None
            if r > 0 and not (cfg.mode == "dagger" and cfg.beta_at(r) >= 1.0):
                student = load_policy(prev_ckpt, use_ema=True).eval()
            rb, stats = rollout_round(cfg, student, r, first_seed, n_eps, progress=cfg.run.progress)
            if rb is not None:
                rb.save(rdir / "data.zarr")
            _write_json_atomic(stats_path, stats)  # after the data: its presence means the data is complete
        agg = aggregate(run_dir, r)
        if agg.n_episodes == 0:
            raise DataError(f"{run_dir}: round {r} has no labelled data at all")
        agg.save(rdir / "aggregate.zarr")
        tdir = rdir / "train" / "checkpoints"
        resume = tdir.exists() and any(p.name.isdigit() for p in tdir.iterdir())
        init = prev_ckpt if (cfg.warm_start and r > 0) else ""
        res = train(_train_cfg(cfg, r, rdir / "aggregate.zarr", init, resume))
        labelled = (rows[-1]["labelled_steps"] if rows else 0) + int(stats["labels"])
        row = {"round": r, "mode": cfg.mode, "task": cfg.task.name, "seed": cfg.run.seed, **stats,
               "labelled_steps": labelled, "aggregate_episodes": agg.n_episodes, "aggregate_steps": agg.n_steps,
               "checkpoint": res["final_checkpoint"], "eval_success": res["eval"]["success_rate"]}
        rows.append(row)
        _write_json_atomic(run_dir / STATE_FILE, state)  # the round is finished only once this lands
        if after_round is not None:
            after_round(r, row)
    return {"run_dir": str(run_dir), "rounds": rows, "final_checkpoint": rows[-1]["checkpoint"]}
