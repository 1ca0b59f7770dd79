"""make_env / make_batched_env / task_spec by task name ("metaworld/drawer-open-v3", "dmc/cheetah-run").

Simulator modules import lazily, so listing tasks or training on the toy task needs no simulator installed; a
task whose simulator is missing raises a ConfigError naming the package it needs. The demonstrators for these
tasks come from `make_expert` in experts/registry.py: experts depend on envs, never the reverse.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

from genpolicy.envs.base import Env, EnvSpec
from genpolicy.errors import ConfigError
from genpolicy.quiet import quiet_third_party

quiet_third_party()  # before any simulator is imported through this registry

# Meta-World MT50, in metaworld.env_dict.MT50_V3 order (a test keeps this equal to the installed package's list).
METAWORLD_TASKS = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3",
    "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3", "door-open-v3",
    "door-unlock-v3", "hand-insert-v3", "drawer-close-v3", "drawer-open-v3", "faucet-open-v3", "faucet-close-v3",
    "hammer-v3", "handle-press-side-v3", "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3",
    "pick-place-wall-v3", "pick-out-of-hole-v3", "pick-place-v3", "plate-slide-v3", "plate-slide-side-v3",
    "plate-slide-back-v3", "plate-slide-back-side-v3", "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3",
    "stick-push-v3", "stick-pull-v3", "push-v3", "push-wall-v3", "push-back-v3", "reach-v3", "reach-wall-v3",
    "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3", "window-close-v3",
)
ROBOSUITE_TASKS = ("lift", "can", "square", "transport")
GYM_TASKS = ("hopper-v5", "walker2d-v5", "halfcheetah-v5", "ant-v5")
DMC_TASKS = (
    "cheetah-run", "walker-walk", "walker-run", "walker-stand", "cartpole-swingup", "cartpole-balance",
    "reacher-easy", "reacher-hard", "finger-spin", "finger-turn_easy", "ball_in_cup-catch", "hopper-hop",
    "hopper-stand", "quadruped-walk", "quadruped-run", "pendulum-swingup", "acrobot-swingup", "humanoid-walk",
)


@dataclass(frozen=True)
class Suite:
    """What the registry knows about a suite without importing its simulator."""

    tasks: tuple[str, ...]  # listed by `genpolicy envs list` and registered as `task=<suite>/<name>`
    requires: tuple[str, ...]  # import names of the packages the adapter needs
    representative: str  # the task `genpolicy envs measure` times for the suite
    images: bool = True  # camera observations supported
    closed: bool = True  # only the listed names are valid (else the adapter also accepts unlisted ones)


SUITES: dict[str, Suite] = {
    "toy": Suite(("bimodal", "bimodal-right"), (), "bimodal"),
    "metaworld": Suite(METAWORLD_TASKS, ("metaworld", "mujoco"), "drawer-open-v3", closed=False),
    "robosuite": Suite(ROBOSUITE_TASKS, ("robosuite", "mujoco"), "lift"),
    "gym": Suite(GYM_TASKS, ("gymnasium", "mujoco"), "hopper-v5", images=False),
    "pusht": Suite(("pusht",), ("gym_pusht", "pymunk", "pygame", "shapely", "cv2"), "pusht"),
    "kitchen": Suite(("microwave-kettle-switch-slide",), ("gymnasium_robotics", "mujoco"),
                     "microwave-kettle-switch-slide"),
    "dmc": Suite(DMC_TASKS, ("dm_control", "mujoco"), "cheetah-run", closed=False),
    # Batched torch-native simulators (envs/isaaclab.py). `isaaclab/<Isaac-Task-Id>` needs IsaacLab (untested here:
    # not installable); `isaaclab_standin/<gym task>` is N MuJoCo envs behind IsaacLab's API, used only when named.
    "isaaclab": Suite((), ("isaaclab",), "", images=False, closed=False),
    "isaaclab_standin": Suite(GYM_TASKS, ("gymnasium", "mujoco"), "hopper-v5", images=False),
}
BATCHED_SUITES = ("isaaclab", "isaaclab_standin")


def _setup_rendering() -> None:
    # MuJoCo picks its GL backend at import time; headless machines need EGL.
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    # Software EGL (Mesa llvmpipe) and triton (torch.compile, torchvision -> torch._dynamo) each bring an LLVM;
    # importing triton once an EGL display exists (dm_control does that on import, MuJoCo on the first render)
    # segfaults here (torch 2.14.1). Loaded first (0.2 s), both work.
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def list_tasks() -> list[str]:
    """Every task name the registry lists, suite by suite."""
    return [f"{suite}/{task}" for suite, s in SUITES.items() for task in s.tasks]


def missing_packages(suite: str) -> list[str]:
    """Import names of the packages `suite` needs that are not installed (empty: the suite can run)."""
    return [p for p in SUITES[suite].requires if importlib.util.find_spec(p) is None]


def is_batched_task(name: str) -> bool:
    """True for tasks whose simulator steps all its envs in one batched, torch-native call (IsaacLab's API)."""
    return name.split("/", 1)[0] in BATCHED_SUITES  # by name only: a missing IsaacLab is make_batched_env's error


def make_batched_env(name: str, n_envs: int, seed: int, device: Any = "cpu", max_episode_steps: int = 0) -> Any:
    """Build an IsaacLab-style batched env (see envs/isaaclab.py). IsaacLab is never replaced by the stand-in silently:
    `isaaclab/...` fails with a ConfigError when IsaacLab is missing."""
    suite, task = split_task(name)
    if suite == "isaaclab":
        from genpolicy.envs.isaaclab import make_isaaclab_env

        return make_isaaclab_env(task, n_envs, seed, device, max_episode_steps)
    if suite == "isaaclab_standin":
        from genpolicy.envs.isaaclab_standin import StandInEnv

        return StandInEnv(task, n_envs, seed=seed, device=device, max_episode_steps=max_episode_steps)
    raise ConfigError(f"'{name}' is not a batched task; batched suites: {', '.join(BATCHED_SUITES)}")


def split_task(name: str) -> tuple[str, str]:
    """Validate a task name against the registry; unlisted names pass only for open suites (metaworld, dmc)."""
    if "/" not in name:
        raise ConfigError(f"task name '{name}' must look like 'suite/task'; known: {', '.join(list_tasks())}")
    suite, task = name.split("/", 1)
    if suite not in SUITES:
        raise ConfigError(f"unknown task suite '{suite}' in '{name}'; known suites: {', '.join(SUITES)} "
                          f"(tasks: `genpolicy envs list`)")
    s = SUITES[suite]
    if s.closed and task not in s.tasks:
        raise ConfigError(f"unknown {suite} task '{name}'; known: {', '.join(f'{suite}/{t}' for t in s.tasks)}")
    missing = missing_packages(suite)
    if missing:
        raise ConfigError(f"task '{name}' needs the package(s) {', '.join(missing)}, which are not installed")
    if suite != "toy":
        _setup_rendering()
    return suite, task


def make_env(name: str, seed: int = 0, images: bool = False, max_episode_steps: int = 0, image_size: int = 0,
             **kw: Any) -> Env:
    """Build one environment instance. `image_size` (square, pixels; 0 = the task's default) applies with images."""
    suite, task = split_task(name)
    if images and image_size > 0:
        kw["image_size"] = image_size
    steps = max_episode_steps or None
    if suite == "toy":
        from genpolicy.envs.toy import ToyEnv

        return ToyEnv(seed=seed, images=images, max_episode_steps=max_episode_steps, rewarded_side=task == "bimodal-right",
                      **kw)
    if suite == "metaworld":
        from genpolicy.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv(task, seed=seed, images=images, max_episode_steps=steps, **kw)
    if suite == "robosuite":
        from genpolicy.envs.robosuite import RobosuiteEnv

        return RobosuiteEnv(task, seed=seed, images=images, max_episode_steps=steps, **kw)
    if suite == "gym":
        from genpolicy.envs.gym_mujoco import GymMujocoEnv

        return GymMujocoEnv(task, seed=seed, images=images, max_episode_steps=steps, **kw)
    if suite == "pusht":
        from genpolicy.envs.pusht import PushTEnv

        return PushTEnv(task, seed=seed, images=images, max_episode_steps=steps, **kw)
    if suite == "kitchen":
        from genpolicy.envs.kitchen import KitchenEnv

        return KitchenEnv(task, seed=seed, images=images, max_episode_steps=steps, **kw)
    if suite in BATCHED_SUITES:  # one env at a time (evaluation): a 1-env instance behind the numpy Env protocol
        from genpolicy.envs.isaaclab import IsaacLabSingleEnv

        if images:
            raise ConfigError(f"'{name}': camera observations are not supported for batched tasks")
        return IsaacLabSingleEnv(make_batched_env(name, 1, seed, "cpu", max_episode_steps), name)
    from genpolicy.envs.dmc import DMCEnv  # the only suite left

    return DMCEnv(task, seed=seed, images=images, max_episode_steps=steps, **kw)


def task_spec(name: str, images: bool = False) -> EnvSpec:
    """The EnvSpec `make_env(name, images=images)` has; slow simulators (robosuite, Meta-World) are not built."""
    suite, task = split_task(name)
    if suite == "metaworld":
        from genpolicy.envs.metaworld import describe as describe_metaworld

        return describe_metaworld(task, images)
    if suite == "robosuite":
        from genpolicy.envs.robosuite import describe as describe_robosuite

        return describe_robosuite(task, images)
    if suite == "pusht":
        from genpolicy.envs.pusht import describe as describe_pusht

        return describe_pusht(task, images)
    if suite == "kitchen":
        from genpolicy.envs.kitchen import describe as describe_kitchen

        return describe_kitchen(task, images)
    # toy, gym and dmc build in milliseconds and render only on reset
    env = make_env(name, images=images and SUITES[suite].images)
    spec = env.spec
    env.close()
    return spec

