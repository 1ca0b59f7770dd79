"""`genpolicy dagger` on the toy task with tiny budgets: beta=1 is BC on the teacher's own data, aggregation keeps
every earlier round, hg_dagger stores exactly the intervention segments, and a run killed mid-round resumes at
that round and ends where an uninterrupted run ends."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from genpolicy.config import (DataConfig, EvalConfig, InterventionConfig, OptimConfig, PolicyConfig, RunConfig,
                              TaskConfig, TrainConfig)
from genpolicy.dagger import DaggerConfig, aggregate, read_state, run_dagger
from genpolicy.datasets.replay_buffer import ReplayBuffer
from genpolicy.errors import ConfigError


def _cfg(run_dir: Path, **kw) -> DaggerConfig:
    base = dict(task=TaskConfig(name="toy/bimodal"),
                policy=PolicyConfig(type="flow", n_obs_steps=1, horizon=8, n_action_steps=4, width=64, depth=2,
                                    time_dim=16, shortcut=False, sampler="euler", steps=3),
                train=OptimConfig(steps=40, batch_size=32, lr=1e-3, warmup_steps=5),
                eval=EvalConfig(n_episodes=1, n_envs=1, n_videos=0),
                run=RunConfig(dir=str(run_dir), log_every=1000, ckpt_every=20, progress=False, seed=0),
                data=DataConfig(seed=7, val_fraction=0.0), rounds=2, init_demos=3, episodes_per_round=2)
    base.update(kw)
    return DaggerConfig(**base)


def _weights(ckpt: str | Path) -> dict[str, np.ndarray]:
    return load_file(str(Path(ckpt) / "model.safetensors"))


def test_beta_one_is_bc_on_the_teachers_own_data(tmp_path: Path) -> None:
    from genpolicy.datasets.collect import generate
    from genpolicy.training.bc import train

    cfg = _cfg(tmp_path / "dagger", beta=1.0, beta_decay=1.0, warm_start=False, rounds=1)
    res = run_dagger(cfg)
    # every round's data is the teacher's demonstrations on that round's seeds: demos 7..9, round 1 10..11
    truth = [generate("toy/bimodal", 3, seed=7, progress=False), generate("toy/bimodal", 2, seed=10, progress=False)]
    for r, rb in enumerate(truth):
        got = ReplayBuffer.load(tmp_path / "dagger" / "rounds" / f"{r:03d}" / "data.zarr")
        np.testing.assert_array_equal(got.episode_ends, rb.episode_ends)
        for k in ("state", "action"):
            np.testing.assert_array_equal(got.data[k], rb.data[k])
    assert res["rounds"][1]["teacher_steps"] == res["rounds"][1]["env_steps"] == truth[1].n_steps
    # and round 1's policy is exactly BC trained on those demonstrations
    both = ReplayBuffer.from_episodes([rb.episode(i) for rb in truth for i in range(rb.n_episodes)])
    both.save(tmp_path / "demos.zarr")
    bc = train(TrainConfig(task=cfg.task, policy=cfg.policy, data=DataConfig(path=str(tmp_path / "demos.zarr"),
                                                                             seed=7, val_fraction=0.0),
                           train=cfg.train, eval=cfg.eval, run=RunConfig(dir=str(tmp_path / "bc"), log_every=1000,
                                                                        ckpt_every=20, progress=False, seed=0)))
    a, b = _weights(res["final_checkpoint"]), _weights(bc["final_checkpoint"])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_aggregation_keeps_every_round_and_hg_dagger_stores_only_interventions(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "hg", mode="hg_dagger", intervention=InterventionConfig(threshold=0.6, hold_steps=6))
    res = run_dagger(cfg)
    rows = res["rounds"]
    run = tmp_path / "hg"
    sizes = []
    for r in range(cfg.rounds + 1):
        rdir = run / "rounds" / f"{r:03d}"
        agg = ReplayBuffer.load(rdir / "aggregate.zarr")
        parts = [ReplayBuffer.load(run / "rounds" / f"{q:03d}" / "data.zarr") for q in range(r + 1)
                 if (run / "rounds" / f"{q:03d}" / "data.zarr").exists()]
        # the aggregate of round r is rounds 0..r, in order, nothing dropped
        for k in ("state", "action"):
            np.testing.assert_array_equal(agg.data[k], np.concatenate([p.data[k] for p in parts]))
        assert agg.n_episodes == sum(p.n_episodes for p in parts)
        sizes.append(agg.n_steps)
        assert rows[r]["labelled_steps"] == agg.n_steps == rows[r]["aggregate_steps"]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    for row in rows[1:]:
        # hg_dagger labels exactly the takeover ticks, in segments of hold_steps (the last may be cut by the end)
        assert row["labels"] == row["intervention_steps"] > 0 and row["interventions"] >= 1
        assert row["interventions"] * 6 >= row["intervention_steps"] > (row["interventions"] - 2) * 6
        assert 0 < row["intervention_rate"] <= 1
    data1 = ReplayBuffer.load(run / "rounds" / "001" / "data.zarr")
    # every stored episode is one contiguous stretch the teacher drove: its states follow the toy dynamics under
    # its stored (teacher) actions, s' = s + SPEED * a (the expert keeps off the obstacle, the walls are far)
    from genpolicy.envs.toy import SPEED

    for i in range(data1.n_episodes):
        ep = data1.episode(i)
        np.testing.assert_allclose(ep["state"][1:], ep["state"][:-1] + SPEED * ep["action"][:-1], atol=1e-5)
    # each contiguous run of takeover ticks is one stored episode (back-to-back takeovers make one run)
    assert rows[1]["episodes"] <= data1.n_episodes <= rows[1]["interventions"]
    assert aggregate(run, 1).n_steps == sizes[1]


# the run both kill tests must end like: dagger, beta 0.5 halved per round, rounds 0..2 (also as CLI overrides)
KILL_KW = dict(mode="dagger", beta=0.5, beta_decay=0.5)
KILL_ARGS = ["task=toy/bimodal", "policy=flow", "policy.n_obs_steps=1", "policy.horizon=8", "policy.n_action_steps=4",
             "policy.width=64", "policy.depth=2", "policy.time_dim=16", "policy.shortcut=false", "policy.steps=3",
             "train.steps=40", "train.batch_size=32", "train.lr=1e-3", "train.warmup_steps=5", "eval.n_episodes=1",
             "eval.n_envs=1", "run.ckpt_every=20", "run.log_every=1000", "run.progress=false", "run.seed=0",
             "data.seed=7", "data.val_fraction=0.0", "rounds=2", "init_demos=3", "episodes_per_round=2", "mode=dagger",
             "beta=0.5", "beta_decay=0.5"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[DaggerConfig, dict]:
    cfg = _cfg(tmp_path_factory.mktemp("full"), **KILL_KW)
    return cfg, run_dagger(cfg)


def test_a_run_killed_mid_round_resumes_at_that_round_and_matches(full_run, tmp_path: Path, monkeypatch) -> None:
    import genpolicy.dagger as dg
    import genpolicy.training.bc as bc

    cfg, full = full_run

    real_train, real_rollout, real_batch = bc.train, dg.rollout_round, bc.step_indices_batch
    calls: dict[str, list[int]] = {"train": [], "rollout": []}
    killed, inits = [], []

    def train(tc):
        calls["train"].append(int(Path(tc.run.dir).parent.name))
        inits.append(tc.train.init_from)
        return real_train(tc)

    def step_indices_batch(train_set, tc, step, *a, **k):  # what the BC loop draws each step's batch with
        # SIGINT during round 2's training, at step 25 (after its checkpoint at 20): the loop finishes the step,
        # saves, and raises KeyboardInterrupt, as Ctrl-C or a SIGTERM from a scheduler would
        if calls["train"][-1] == 2 and step == 25 and not killed:
            killed.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        return real_batch(train_set, tc, step, *a, **k)

    def rollout(c, policy, r, *a, **k):
        calls["rollout"].append(r)
        return real_rollout(c, policy, r, *a, **k)

    monkeypatch.setattr(bc, "train", train)
    monkeypatch.setattr(bc, "step_indices_batch", step_indices_batch)
    monkeypatch.setattr(dg, "rollout_round", rollout)
    cut = _cfg(tmp_path / "cut", **KILL_KW)
    with pytest.raises(KeyboardInterrupt):
        run_dagger(cut)
    assert killed == [25] and calls["rollout"] == [0, 1, 2]
    rows = read_state(tmp_path / "cut")["rounds"]
    assert inits == ["", rows[0]["checkpoint"], rows[1]["checkpoint"]]  # each round starts from the one before
    assert [r["round"] for r in read_state(tmp_path / "cut")["rounds"]] == [0, 1]
    with pytest.raises(ConfigError, match="run.resume=true"):
        run_dagger(cut)
    calls["train"], calls["rollout"] = [], []
    resumed = run_dagger(dataclasses.replace(cut, run=dataclasses.replace(cut.run, resume=True)))
    # round 2 continues: its data was complete before the kill, so nothing is rolled out again, and rounds 0-1
    # are neither collected nor trained again
    assert calls["rollout"] == [] and calls["train"] == [2]
    # and it ends where the uninterrupted run ends: the same rows and the same final weights
    want = [{k: v for k, v in r.items() if k not in ("checkpoint",)} for r in full["rounds"]]
    got = [{k: v for k, v in r.items() if k not in ("checkpoint",)} for r in resumed["rounds"]]
    assert got == want
    # the beta-mixture: chunk k of episode i is the teacher's when the i-th stream's k-th draw is < beta_r
    for r in (1, 2):
        data = ReplayBuffer.load(Path(cfg.run.dir) / "rounds" / f"{r:03d}" / "data.zarr")
        row, ta, expected = full["rounds"][r], cfg.policy.n_action_steps, 0
        for i, n in enumerate(data.episode_lengths):
            mix = np.random.default_rng([cfg.run.seed, r, row["first_seed"] + i])
            expected += sum(min(ta, n - c) for c in range(0, n, ta) if mix.random() < cfg.beta_at(r))
        assert row["teacher_steps"] == expected and 0 < expected < row["env_steps"]
        # every visited state, student-driven or not, carries the teacher's action there (replayed in order)
        from genpolicy.experts.registry import make_expert

        teacher, labels = make_expert("toy/bimodal", seed=row["first_seed"]), []
        for i in range(data.n_episodes):
            teacher.reset()
            labels += [teacher.act(None, {"state": s}) for s in data.episode(i)["state"]]
        np.testing.assert_array_equal(np.asarray(labels), data.data["action"])
    a, b = _weights(full["final_checkpoint"]), _weights(resumed["final_checkpoint"])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with pytest.raises(ConfigError, match="changed: mode"):
        run_dagger(dataclasses.replace(cut, mode="hg_dagger", run=dataclasses.replace(cut.run, resume=True)))


def test_train_init_from_warm_starts_the_weights(tmp_path: Path) -> None:
    from genpolicy.training.bc import train

    round0 = run_dagger(_cfg(tmp_path / "d", rounds=0))["final_checkpoint"]  # 40 steps at lr 1e-3: far from init
    trained = _weights(round0)
    data = tmp_path / "d" / "rounds" / "000" / "aggregate.zarr"
    cfg = _cfg(tmp_path / "unused")
    for init in (round0, ""):
        # a vanishing learning rate: the run ends where it started
        tc = TrainConfig(task=cfg.task, policy=cfg.policy, data=DataConfig(path=str(data), val_fraction=0.0),
                         train=OptimConfig(steps=2, batch_size=8, lr=1e-12, warmup_steps=1, init_from=init),
                         eval=cfg.eval, run=RunConfig(dir=str(tmp_path / f"bc{bool(init)}"), progress=False))
        w = _weights(train(tc)["final_checkpoint"])
        # both copies start from the checkpoint's EMA weights (what a round deploys)
        same = all(np.allclose(w[k], trained["ema." + k.split(".", 1)[1]], atol=1e-6) for k in w)
        assert same == bool(init)


def test_config_is_validated_on_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mode must be dagger\\|hg_dagger"):
        _cfg(tmp_path, mode="dagr")
    with pytest.raises(ConfigError, match="beta must be in"):
        _cfg(tmp_path, beta=1.5)
    with pytest.raises(ConfigError, match="demonstration range"):
        _cfg(tmp_path, data=DataConfig(seed=99_999))
    assert _cfg(tmp_path, beta=0.8, beta_decay=0.5).beta_at(3) == pytest.approx(0.2)
    # a task without a teacher is refused before the run directory exists
    from genpolicy.errors import GenpolicyError

    with pytest.raises(GenpolicyError, match="no trained expert"):
        run_dagger(_cfg(tmp_path / "hopper", task=TaskConfig(name="gym/hopper-v5"), expert_path=str(tmp_path / "no")))
    assert not (tmp_path / "hopper").exists()


def test_hg_rollout_replans_at_every_hand_back_and_skips_inference_mid_takeover(tmp_path: Path) -> None:
    from genpolicy.dagger import rollout_round
    import torch

    from genpolicy.envs.toy import SPEED

    class Up:
        """A student that always heads straight up, logging the state it planned from."""

        cfg = PolicyConfig(n_obs_steps=1, horizon=8, n_action_steps=4)

        def __init__(self) -> None:
            self.planned = []

        def predict_chunk(self, window, generator=None):
            self.planned.append(window["state"][0, -1].numpy().copy())
            return torch.tensor([[0.0, 1.0]] * 8)[None]

    cfg = _cfg(tmp_path, mode="hg_dagger", intervention=InterventionConfig(threshold=1.0, hold_steps=7))
    student = Up()
    rb, stats = rollout_round(cfg, student, 1, 7, 1, progress=False)
    assert rb.n_episodes >= 2  # several takeovers, separated by student stretches
    planned = np.asarray(student.planned)
    for i in range(rb.n_episodes - 1):  # the state right after each segment is where the student planned afresh
        ep = rb.episode(i)
        after = ep["state"][-1] + SPEED * ep["action"][-1]
        assert np.min(np.abs(planned - after).max(axis=1)) < 1e-5, i
    # a chunk per Ta student ticks plus one per hand-back at most: nothing is planned during takeovers
    student_ticks = stats["env_steps"] - stats["intervention_steps"]
    assert len(planned) <= -(-student_ticks // 4) + stats["interventions"] + 1


def test_cli_runs_dagger_and_refuses_bad_values_in_one_line(tmp_path: Path, capsys) -> None:
    from genpolicy.cli import main

    tiny = ["task=toy/bimodal", "policy=flow", "policy.n_obs_steps=1", "policy.horizon=8", "policy.n_action_steps=4",
            "policy.width=32", "policy.depth=1", "policy.shortcut=false", "policy.steps=2", "train.steps=5",
            "train.batch_size=8", "train.warmup_steps=1", "eval.n_episodes=1", "eval.n_envs=1", "rounds=1",
            "init_demos=1", "episodes_per_round=1", "mode=hg_dagger", f"run.dir={tmp_path / 'r'}", "run.progress=false"]
    assert main(["dagger", *tiny]) == 0
    out = capsys.readouterr().out
    assert "round 1:" in out and "intervention rate" in out and "final checkpoint:" in out
    assert main(["dagger", *tiny, "mode=dag"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mode must be dagger|hg_dagger" in err


def test_sigkill_mid_round_then_resume_ends_like_an_uninterrupted_run(full_run, tmp_path: Path) -> None:
    """A real kill -9 of `genpolicy dagger` once round 1's training has written a checkpoint (nothing runs after it:
    no handler, no save), then `run.resume=true`: rounds 0..2 end with the weights of an uninterrupted run."""
    import subprocess
    import sys
    import time

    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "genpolicy.cli", "dagger", *KILL_ARGS, f"run.dir={cut}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = cut / "rounds" / "001" / "train" / "checkpoints"
    t0 = time.time()
    try:
        while not (ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())):
            assert proc.poll() is None and time.time() - t0 < 120, "the run ended before it could be killed"
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    assert [r["round"] for r in read_state(cut)["rounds"]] == [0]  # round 1 was in progress
    from genpolicy.cli import main

    assert main(["dagger", *KILL_ARGS, f"run.dir={cut}", "run.resume=true"]) == 0
    a, b = read_state(cut)["rounds"], full_run[1]["rounds"]
    assert [r["labelled_steps"] for r in a] == [r["labelled_steps"] for r in b]
    wa, wb = _weights(a[-1]["checkpoint"]), _weights(b[-1]["checkpoint"])
    # round 0 was trained in the killed subprocess: same data and generators, but its CPU kernels may reduce in
    # another order (seen: 3e-8 apart under load), so equal to float tolerance; a re-rolled round differs by far more
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6, err_msg=k)
