"""make_env / make_expert by task name ("toy/bimodal", "metaworld/drawer-open-v3", "robosuite/lift", "gym/hopper-v5").

Simulator modules import lazily, so listing tasks or training on the toy task needs no simulator installed.
"""

from __future__ import annotations

import os
from typing import Any

from genpolicy.envs.base import Env, Expert
from genpolicy.errors import ConfigError

# Meta-World tasks with shipped scripted experts that the toolkit exercises; any other v3 name also works.
METAWORLD_TASKS = (
    "drawer-open-v3", "pick-place-v3", "push-v3", "door-open-v3", "button-press-topdown-v3", "assembly-v3",
    "peg-insert-side-v3", "shelf-place-v3", "reach-v3", "window-open-v3", "drawer-close-v3", "basketball-v3",
)
ROBOSUITE_TASKS = ("lift", "can")


def _setup_rendering() -> None:
    # MuJoCo picks its GL backend at import time; headless machines need EGL.
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


GYM_TASKS = ("hopper-v5", "walker2d-v5", "halfcheetah-v5", "ant-v5")


# Batched torch-native simulators: `isaaclab/<Isaac-Task-Id>` needs IsaacLab installed (untested here);
# `isaaclab_standin/<gym task>` is N MuJoCo envs behind IsaacLab's API, used only when named.
BATCHED_SUITES = ("isaaclab", "isaaclab_standin")


def list_tasks() -> list[str]:
    """Every task name the registry knows (isaaclab/<Isaac-Task-Id> also works where IsaacLab is installed)."""
    return (["toy/bimodal", "toy/bimodal-right"] + [f"metaworld/{t}" for t in METAWORLD_TASKS]
            + [f"robosuite/{t}" for t in ROBOSUITE_TASKS] + [f"gym/{t}" for t in GYM_TASKS]
            + [f"isaaclab_standin/{t}" for t in GYM_TASKS])


def is_batched_task(name: str) -> bool:
    """True for tasks whose simulator steps all its envs in one batched, torch-native call (IsaacLab's API)."""
    return _split(name)[0] in BATCHED_SUITES


def make_batched_env(name: str, n_envs: int, seed: int, device: Any = "cpu", max_episode_steps: int = 0) -> Any:
    """Build an IsaacLab-style batched env (see envs/isaaclab.py). IsaacLab is never replaced by the stand-in silently:
    `isaaclab/...` fails with a ConfigError when IsaacLab is missing."""
    suite, task = _split(name)
    if suite == "isaaclab":
        from genpolicy.envs.isaaclab import make_isaaclab_env

        return make_isaaclab_env(task, n_envs, seed, device, max_episode_steps)
    if suite == "isaaclab_standin":
        from genpolicy.envs.isaaclab_standin import StandInEnv

        if task not in GYM_TASKS:
            raise ConfigError(f"unknown stand-in task '{name}'; known: {', '.join('isaaclab_standin/' + t for t in GYM_TASKS)}")
        return StandInEnv(task, n_envs, seed=seed, device=device, max_episode_steps=max_episode_steps)
    raise ConfigError(f"'{name}' is not a batched task; batched suites: {', '.join(BATCHED_SUITES)}")


def _split(name: str) -> tuple[str, str]:
    if "/" not in name:
        raise ConfigError(f"task name '{name}' must look like 'suite/task'; known: {', '.join(list_tasks())}")
    suite, task = name.split("/", 1)
    return suite, task


def make_env(name: str, seed: int = 0, images: bool = False, max_episode_steps: int = 0, image_size: int = 0,
             **kw: Any) -> Env:
    """Build one environment instance. `image_size` (square, pixels; 0 = the task's default) applies with images."""
    suite, task = _split(name)
    if images and image_size > 0:
        kw["image_size"] = image_size
    if suite == "toy":
        from genpolicy.envs.toy import ToyEnv

        if task not in ("bimodal", "bimodal-right"):
            raise ConfigError(f"unknown toy task '{name}'; known: toy/bimodal, toy/bimodal-right")
        return ToyEnv(seed=seed, images=images, max_episode_steps=max_episode_steps, rewarded_side=task == "bimodal-right",
                      **kw)
    if suite == "metaworld":
        _setup_rendering()
        from genpolicy.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv(task, seed=seed, images=images, max_episode_steps=max_episode_steps or None, **kw)
    if suite == "robosuite":
        _setup_rendering()
        from genpolicy.envs.robosuite import RobosuiteEnv

        if task not in ROBOSUITE_TASKS:
            raise ConfigError(f"unknown robosuite task '{name}'; known: {', '.join('robosuite/' + t for t in ROBOSUITE_TASKS)}")
        return RobosuiteEnv(task, seed=seed, images=images, max_episode_steps=max_episode_steps or None, **kw)
    if suite == "gym":
        from genpolicy.envs.gym_mujoco import GymMujocoEnv

        if task not in GYM_TASKS:
            raise ConfigError(f"unknown gym task '{name}'; known: {', '.join('gym/' + t for t in GYM_TASKS)}")
        return GymMujocoEnv(task, seed=seed, images=images, max_episode_steps=max_episode_steps or None, **kw)
    if suite in BATCHED_SUITES:  # one env at a time (evaluation): a 1-env instance behind the numpy Env protocol
        from genpolicy.envs.isaaclab import IsaacLabSingleEnv

        if images:
            raise ConfigError(f"'{name}': camera observations are not supported for batched tasks")
        return IsaacLabSingleEnv(make_batched_env(name, 1, seed, "cpu", max_episode_steps), name)
    raise ConfigError(f"unknown task suite '{suite}' in '{name}'; known tasks: {', '.join(list_tasks())}")


def make_expert(name: str, noise: float = 0.0, detour_prob: float = 0.0, seed: int = 0,
                expert_path: str = "") -> Expert:
    """The demonstrator for a task: scripted, or a trained SAC expert (gym/*, from `genpolicy data expert`)."""
    suite, task = _split(name)
    if suite == "toy":
        from genpolicy.envs.toy import ToyExpert

        return ToyExpert(noise=noise, detour_prob=detour_prob, seed=seed)
    if suite == "metaworld":
        from genpolicy.envs.metaworld import MetaWorldExpert

        return MetaWorldExpert(task, noise=noise, detour_prob=detour_prob, seed=seed)
    if suite == "robosuite":
        from genpolicy.envs.robosuite import make_robosuite_expert

        return make_robosuite_expert(task, noise=noise, detour_prob=detour_prob, seed=seed)
    if suite == "gym":
        from genpolicy.experts.sac import load_default_expert

        return load_default_expert(name, noise=noise, seed=seed, path=expert_path or None)
    raise ConfigError(f"no scripted expert for '{name}'")
