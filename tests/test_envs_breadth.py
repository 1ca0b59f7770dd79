"""The breadth suites (PushT, Franka Kitchen, DM Control, robosuite square/transport, Meta-World MT50) against the
real simulators, plus `genpolicy envs list` / `measure`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from genpolicy.envs.base import EnvSpec
from genpolicy.envs.registry import SUITES, Suite, list_tasks, make_env, task_spec
from genpolicy.errors import ConfigError, DataError
from genpolicy.experts.registry import make_expert


def _check_obs(obs: dict[str, np.ndarray], spec: EnvSpec, images: bool) -> None:
    assert obs["state"].shape == (spec.state_dim,) and obs["state"].dtype == np.float32
    assert set(obs) == {"state", *(f"image.{c}" for c in spec.cameras)}
    assert bool(spec.cameras) == images
    for cam in spec.cameras:
        img = obs[f"image.{cam}"]
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[0] == 3
        assert img.std() > 5  # a real picture, not a blank buffer


def _same_spec(a: EnvSpec, b: EnvSpec) -> bool:
    da, db = asdict(a), asdict(b)
    return all(np.array_equal(da[k], db[k]) for k in da)


# ---------------------------------------------------------------- registry

def test_registry_lists_mt50_and_every_new_suite_and_keeps_old_names() -> None:
    from metaworld.env_dict import MT50_V3

    tasks = list_tasks()
    assert len(tasks) == len(set(tasks))
    assert {t.split("/", 1)[1] for t in tasks if t.startswith("metaworld/")} == set(MT50_V3)
    for name in ("pusht/pusht", "kitchen/microwave-kettle-switch-slide", "dmc/cheetah-run", "dmc/walker-walk",
                 "dmc/cartpole-swingup", "dmc/reacher-easy", "dmc/finger-spin", "dmc/ball_in_cup-catch",
                 "robosuite/square", "robosuite/transport",
                 # names that existed before stay valid
                 "toy/bimodal", "metaworld/drawer-open-v3", "robosuite/lift", "robosuite/can", "gym/hopper-v5"):
        assert name in tasks, name


@pytest.mark.parametrize("name,valid", [
    ("pusht/pushx", "pusht/pusht"),
    ("kitchen/microwave", "kitchen/microwave-kettle-switch-slide"),
    ("dmc/cheetah-fly", "dmc/cheetah-run"),
    ("robosuite/tool_hang", "robosuite/square"),
    ("metaworld/open-the-fridge-v3", "drawer-open-v3"),
    ("nosuite/x", "pusht"),
])
def test_unknown_task_names_are_config_errors_naming_valid_ones(name: str, valid: str) -> None:
    with pytest.raises(ConfigError, match=valid):
        make_env(name)


def test_missing_simulator_says_which_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from genpolicy.envs.catalog import describe_all

    monkeypatch.setitem(SUITES, "fakesim", Suite(("task-a",), ("genpolicy_no_such_pkg",), "task-a"))
    with pytest.raises(ConfigError, match="genpolicy_no_such_pkg"):
        make_env("fakesim/task-a")
    text = describe_all(Path("/nonexistent/envs.json"))
    assert "[fakesim] needs genpolicy_no_such_pkg" in text and "fakesim/task-a" in text


@pytest.mark.parametrize("name", ["pusht/pusht", "kitchen/microwave-kettle-switch-slide", "robosuite/square",
                                  "robosuite/transport"])
def test_new_tasks_without_expert_say_what_to_use(name: str) -> None:
    with pytest.raises(ConfigError, match="no scripted expert") as e:
        make_expert(name)
    assert {"pusht": "LeRobot", "kitchen": "convert", "robosuite": "robomimic"}[name.split("/")[0]] in str(e.value)


# ---------------------------------------------------------------- the Env contract, per suite

CONTRACT = [  # (task, images)
    ("pusht/pusht", False), ("pusht/pusht", True), ("kitchen/microwave-kettle-switch-slide", False),
    ("kitchen/microwave-kettle-switch-slide", True), ("dmc/cheetah-run", False), ("dmc/walker-walk", True),
    ("dmc/ball_in_cup-catch", False), ("metaworld/sweep-into-v3", False),
]


@pytest.mark.parametrize("name,images", CONTRACT)
def test_env_contract(name: str, images: bool) -> None:
    env = make_env(name, seed=0, images=images)
    spec = env.spec
    assert _same_spec(spec, task_spec(name, images=images))  # what `envs list` and training checks see
    low, high = spec.action_low.astype(np.float64), spec.action_high.astype(np.float64)
    obs = env.reset(seed=7)
    _check_obs(obs, spec, images)
    again = env.reset(seed=7)
    assert all(np.array_equal(obs[k], again[k]) for k in obs)  # same seed, same start
    assert not np.array_equal(env.reset(seed=8)["state"], obs["state"])
    # actions outside the spec's box act exactly like the box edge
    rng = np.random.default_rng(0)
    inside = rng.uniform(low, high)
    outside = np.where(rng.random(spec.action_dim) < 0.5, low - 0.5 * (high - low), high + 0.5 * (high - low))
    results = []
    for a in (np.clip(outside, low, high), outside):
        env.reset(seed=7)
        env.step(inside.astype(np.float32))
        nxt, r, term, trunc, info = env.step(a)
        _check_obs(nxt, spec, images)
        assert isinstance(r, float) and isinstance(term, bool) and isinstance(trunc, bool)
        assert isinstance(info["success"], bool)
        results.append(nxt["state"])
    assert np.array_equal(results[0], results[1])
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    env.close()


# ---------------------------------------------------------------- PushT

def test_pusht_coverage_and_success_follow_gym_pusht() -> None:
    env = make_env("pusht/pusht", seed=0)
    raw = env.unwrapped
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for _ in range(20):  # random pushes: the reward is gym-pusht's clip(coverage / threshold)
        _, r, term, _, info = env.step(rng.uniform(0, 512, 2))
        assert 0.0 <= info["coverage"] <= 1.0
        assert r == pytest.approx(min(info["coverage"] / raw.success_threshold, 1.0))
        assert info["success"] == (info["coverage"] > 0.95) == term
    # put the T on its goal pose (angle first: pymunk rotates about the centre of gravity)
    raw.block.angle = raw.goal_pose[2]
    raw.block.position = tuple(raw.goal_pose[:2])
    raw.block.velocity, raw.block.angular_velocity = (0.0, 0.0), 0.0
    raw.agent.position, raw.agent.velocity = (40.0, 40.0), (0.0, 0.0)  # out of the way
    _, r, term, trunc, info = env.step(np.array([40.0, 40.0]))
    assert info["coverage"] > 0.99 and info["success"] and term and not trunc and r == 1.0
    assert raw.success_threshold == 0.95 and "0.95" in env.spec.success_definition
    env.close()


def _record_pusht(n_episodes: int, steps: int) -> list[dict[str, np.ndarray]]:
    """Short PushT episodes in the LeRobot layout, actions = pixel targets near the agent."""
    env = make_env("pusht/pusht", images=True)
    rng = np.random.default_rng(0)
    episodes = []
    for ep in range(n_episodes):
        obs = env.reset(seed=100 + ep)
        frames: dict[str, list[np.ndarray]] = {"state": [], "image": [], "action": []}
        for _ in range(steps):
            action = np.clip(obs["state"] + rng.normal(0, 40, 2), 0, 512).astype(np.float32)
            frames["state"].append(obs["state"])
            frames["image"].append(obs["image.image"])
            frames["action"].append(action)
            obs, *_ = env.step(action)
        episodes.append({k: np.stack(v) for k, v in frames.items()})
    env.close()
    return episodes


def test_lerobot_pusht_dataset_trains_directly(tmp_path: Path) -> None:
    """A dataset in lerobot/pusht's layout, written by lerobot-dataset itself, imports with the dims of the
    images-mode PushT spec, passes the training data check, and its pixel actions replay in the env.
    It runs after other envs have rendered: lerobot-dataset imports torchvision -> triton, which segfaulted after
    an EGL context existed until the registry loaded triton first."""
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    from genpolicy.config import DataConfig, TaskConfig, TrainConfig
    from genpolicy.datasets.lerobot import import_lerobot
    from genpolicy.training.bc import load_demos

    episodes = _record_pusht(n_episodes=2, steps=6)
    features = {"observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
                "observation.image": {"dtype": "image", "shape": (96, 96, 3), "names": ["height", "width", "channels"]},
                "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]}}
    root = tmp_path / "pusht_lerobot"
    ds = LeRobotDataset.create(repo_id="local/pusht", fps=10, features=features, root=root, use_videos=False,
                               image_writer_threads=0)
    for ep in episodes:
        for t in range(len(ep["action"])):
            ds.add_frame({"observation.state": ep["state"][t], "observation.image": ep["image"][t].transpose(1, 2, 0),
                          "action": ep["action"][t], "task": "Push the T-shaped block onto the T-shaped target."})
        ds.save_episode()
    ds.finalize()

    rb = import_lerobot(root)
    spec = task_spec("pusht/pusht", images=True)
    assert rb.data["state"].shape[1] == spec.state_dim == 2
    assert rb.data["action"].shape[1] == spec.action_dim == 2
    assert rb.image_keys == [f"image.{c}" for c in spec.cameras] == ["image.image"]
    assert rb.data["image.image"].shape[1:] == (3, 96, 96)
    np.testing.assert_array_equal(rb.data["image.image"][:6], episodes[0]["image"])  # PNG: lossless

    zarr_path = tmp_path / "pusht.zarr"
    rb.save(zarr_path)
    cfg = TrainConfig(task=TaskConfig(name="pusht/pusht", images=True), data=DataConfig(path=str(zarr_path)))
    assert load_demos(cfg).n_episodes == 2
    with pytest.raises(DataError, match="expects 5"):  # state mode is the 5-d state, not LeRobot's 2-d one
        load_demos(TrainConfig(task=TaskConfig(name="pusht/pusht", images=False),
                               data=DataConfig(path=str(zarr_path))))

    env = make_env("pusht/pusht", images=True)  # the stored pixel actions drive the env unchanged
    env.reset(seed=100)
    for t in range(5):
        obs, *_ = env.step(rb.data["action"][t])
        np.testing.assert_allclose(obs["state"], rb.data["state"][t + 1], atol=1e-4)
    env.close()


# ---------------------------------------------------------------- Franka Kitchen

def test_kitchen_counts_subtasks_from_the_envs_own_list() -> None:
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

    env = make_env("kitchen/microwave-kettle-switch-slide")
    raw = env.unwrapped
    env.reset(seed=0)
    _, r, term, _, info = env.step(np.zeros(9))
    assert info["subtasks_completed"] == 0 and not info["success"] and not term and r == 0.0

    def check(info: dict[str, Any]) -> None:
        assert info["completed_subtasks"] == tuple(raw.episode_task_completions)
        assert info["subtasks_completed"] == len(raw.episode_task_completions)
        assert info["success"] == (info["subtasks_completed"] == 4)

    raw.data.qpos[OBS_ELEMENT_INDICES["microwave"]] = OBS_ELEMENT_GOALS["microwave"]  # microwave door open
    _, r, term, _, info = env.step(np.zeros(9))
    check(info)
    assert info["completed_subtasks"] == ("microwave",) and r == 1.0 and not term
    raw.data.qpos[OBS_ELEMENT_INDICES["microwave"]] = 0.0  # closed again: upstream keeps counting it
    _, r, _, _, info = env.step(np.zeros(9))
    check(info)
    assert info["subtasks_completed"] == 1 and r == 0.0
    for task in ("kettle", "light switch", "slide cabinet"):
        raw.data.qpos[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
    _, r, term, _, info = env.step(np.zeros(9))
    check(info)
    assert info["success"] and info["subtasks_completed"] == 4 and term and r == 3.0
    assert "all 4 subtasks" in env.spec.success_definition and "subtasks_completed" in env.spec.success_definition
    env.close()


# ---------------------------------------------------------------- DM Control

def test_dmc_flatten_order_is_the_tasks_own_and_fixed() -> None:
    from dm_control import suite

    env = make_env("dmc/walker-walk", seed=0)
    assert env.obs_layout == (("orientations", 0, 14), ("height", 14, 15), ("velocity", 15, 24))
    obs = env.reset(seed=3)
    ref = suite.load("walker", "walk", task_kwargs={"random": 0})
    ref.task._random = np.random.RandomState(3)
    ts = ref.reset()
    expected = np.concatenate([np.ravel(ts.observation[k]) for k, _, _ in env.obs_layout]).astype(np.float32)
    np.testing.assert_array_equal(obs["state"], expected)
    assert make_env("dmc/walker-walk", seed=5).obs_layout == env.obs_layout  # stable across builds
    env.close()


def test_dmc_is_return_based_and_time_limit_truncates() -> None:
    env = make_env("dmc/cartpole-swingup", max_episode_steps=5)
    env.reset(seed=0)
    ends, total = [], 0.0
    for _ in range(5):
        _, r, term, trunc, info = env.step(np.ones(1, np.float32))
        ends.append((term, trunc))
        total += r
        assert info["success"] is False
    assert ends[-1] == (False, True) and all(e == (False, False) for e in ends[:-1]) and total > 0.0
    assert "return" in env.spec.success_definition
    assert task_spec("dmc/cartpole-swingup").max_episode_steps == 1000
    env.close()


# ---------------------------------------------------------------- robosuite

def test_robosuite_square_matches_robomimic_keys_with_cameras(tmp_path: Path) -> None:
    """`state` is the concatenation of robomimic's low-dim keys: a robomimic-layout HDF5 built from the raw
    robosuite observations imports (with ROBOMIMIC_STATE_KEYS) to exactly our states."""
    import h5py

    from genpolicy.datasets.robomimic import import_robomimic
    from genpolicy.envs.robosuite import ROBOMIMIC_STATE_KEYS

    env = make_env("robosuite/square", images=True)
    assert _same_spec(env.spec, task_spec("robosuite/square", images=True))
    obs = env.reset(seed=3)
    _check_obs(obs, env.spec, images=True)
    assert env.spec.state_dim == 23 and env.spec.action_dim == 7
    raws, states = [env.raw_obs], [obs["state"]]
    assert np.abs(obs["state"][9:16]).sum() > 0  # nut->eef pose is filled in at reset (robosuite leaves zeros)
    for a in (np.full(7, 3.0), np.full(7, 1.0)):  # the first is outside the box
        obs, _, _, _, info = env.step(a)
        raws.append(env.raw_obs)
        states.append(obs["state"])
        assert info["success"] is False
    env.reset(seed=3)
    assert np.array_equal(env.reset(seed=3)["state"], states[0])
    env.close()

    path = tmp_path / "square.hdf5"
    with h5py.File(path, "w") as f:
        g = f.create_group("data/demo_0")
        g["actions"] = np.zeros((len(raws), 7), np.float32)
        for key in ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "robot0_joint_pos"):
            g[f"obs/{key}"] = np.stack([r[key] for r in raws])
        g["obs/object"] = np.stack([r["object-state"] for r in raws])  # what robomimic stores as "object"
    rb = import_robomimic(path, state_keys=list(ROBOMIMIC_STATE_KEYS["square"]))
    np.testing.assert_array_equal(rb.data["state"], np.stack(states))


def test_robosuite_transport_two_arms() -> None:
    env = make_env("robosuite/transport")
    spec = env.spec
    assert _same_spec(spec, task_spec("robosuite/transport"))
    assert spec.state_dim == 59 and spec.action_dim == 14 and spec.max_episode_steps == 700
    assert task_spec("robosuite/transport", images=True).cameras == (
        "shouldercamera0", "shouldercamera1", "robot0_eye_in_hand", "robot1_eye_in_hand")
    obs = env.reset(seed=0)
    _check_obs(obs, spec, images=False)
    for _ in range(2):
        obs, r, term, trunc, info = env.step(np.full(14, 2.0, np.float32))
        _check_obs(obs, spec, images=False)
        assert r == 0.0 and not term and not trunc and info["success"] is False
    env.close()


def test_robosuite_lift_state_is_the_robomimic_concatenation() -> None:
    from genpolicy.envs.robosuite import ROBOMIMIC_STATE_KEYS

    env = make_env("robosuite/lift")
    env.reset(seed=0)
    obs, *_ = env.step(np.zeros(7))
    raw = env.raw_obs
    parts = [raw["object-state" if k == "object" else k] for k in ROBOMIMIC_STATE_KEYS["lift"]]
    np.testing.assert_allclose(obs["state"], np.concatenate(parts), atol=1e-6)
    env.close()


# ---------------------------------------------------------------- Meta-World MT50

def test_every_mt50_task_has_a_spec_and_metaworld_spec_matches_the_env() -> None:
    for name in list_tasks():
        if name.startswith("metaworld/"):
            spec = task_spec(name)
            assert spec.name == name and spec.state_dim == 39 and spec.action_dim == 4
    env = make_env("metaworld/drawer-open-v3", images=True)
    assert _same_spec(env.spec, task_spec("metaworld/drawer-open-v3", images=True))
    env.close()


# ---------------------------------------------------------------- envs list / measure

def test_envs_measure_then_list_shows_every_suite(tmp_path: Path) -> None:
    from genpolicy.envs.catalog import EnvsMeasureConfig, describe_all, measure

    res = measure(EnvsMeasureConfig(out=str(tmp_path), budget_s=0.2, suites=["toy", "pusht"]), command="test")
    saved = json.loads((tmp_path / "envs.json").read_text())
    assert saved["rows"] == res["rows"] and saved["machine"]["versions"]["gym-pusht"] == "0.1.8"
    measured = {(r["task"], r["images"]): r["steps_per_s"] for r in saved["rows"]}
    assert set(measured) == {("toy/bimodal", False), ("toy/bimodal", True), ("pusht/pusht", False),
                             ("pusht/pusht", True)}
    assert all(v > 0 for v in measured.values())
    assert "| pusht/pusht | images |" in (tmp_path / "envs.md").read_text()

    text = describe_all(tmp_path / "envs.json")
    for suite in SUITES:
        assert f"[{suite}]" in text
    words = text.split()
    assert all(t in words for t in list_tasks())
    pusht_row = next(line for line in text.splitlines() if line.strip().startswith("pusht/pusht"))
    assert "5/2" in pusht_row and f"{measured[('pusht/pusht', False)]:.0f}" in pusht_row
    assert "not measured" in next(line for line in text.splitlines() if "dmc/cheetah-run" in line)
    assert "success (every kitchen task): all 4 subtasks" in text


def test_dmc_fast_rendering_shows_the_same_scene() -> None:
    frames = {}
    for quality in ("full", "fast"):  # full = physics.render (DMC benchmarks); fast = no shadows / MSAA
        env = make_env("dmc/cheetah-run", images=True, render_quality=quality)
        frames[quality] = env.reset(seed=0)["image.side"].astype(np.float64)
        env.close()
    assert frames["full"].shape == frames["fast"].shape == (3, 84, 84)
    assert np.corrcoef(frames["full"].ravel(), frames["fast"].ravel())[0, 1] > 0.8
    with pytest.raises(ConfigError, match="render_quality"):
        make_env("dmc/cheetah-run", render_quality="ultra")


def test_torchvision_imports_after_an_env_has_rendered() -> None:
    """In a fresh process: render a dm_control frame, then import torchvision (-> triton). Without the registry
    loading triton before EGL this segfaults (two LLVMs: Mesa llvmpipe and triton)."""
    import os
    import subprocess
    import sys

    code = ("from genpolicy.envs.registry import make_env\n"
            "env = make_env('dmc/cartpole-swingup', images=True); env.reset(seed=0); env.close()\n"
            "import torchvision.models, torch._dynamo\nprint('ok')\n")
    env = dict(os.environ, MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]
