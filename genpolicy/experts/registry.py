"""make_expert by task name: the demonstrator for `genpolicy data generate`, DAgger's teacher and the simulated
teleoperator. Scripted experts live beside their env adapters (genpolicy/envs/<suite>.py), trained SAC experts
in genpolicy/experts/sac.py. This module depends on the env registry, never the reverse: genpolicy/envs imports
nothing from genpolicy.experts (nor the fine-tuning code SAC uses).
"""

from __future__ import annotations

from genpolicy.envs.base import Expert
from genpolicy.envs.registry import split_task
from genpolicy.errors import ConfigError


def make_expert(name: str, noise: float = 0.0, detour_prob: float = 0.0, seed: int = 0,
                expert_path: str = "") -> Expert:
    """The demonstrator for a task: scripted, or a trained SAC expert (gym/*, dmc/*, from `genpolicy data expert`)."""
    suite, task = split_task(name)
    if suite == "toy":
        from genpolicy.envs.toy import ToyExpert

        return ToyExpert(noise=noise, detour_prob=detour_prob, seed=seed)
    if suite == "metaworld":
        from genpolicy.envs.metaworld import MetaWorldExpert

        return MetaWorldExpert(task, noise=noise, detour_prob=detour_prob, seed=seed)
    if suite == "robosuite":
        from genpolicy.envs.robosuite import make_robosuite_expert

        return make_robosuite_expert(task, noise=noise, detour_prob=detour_prob, seed=seed)
    if suite in ("gym", "dmc"):
        from genpolicy.experts.sac import load_default_expert

        return load_default_expert(name, noise=noise, seed=seed, path=expert_path or None)
    if suite == "pusht":
        raise ConfigError(f"'{name}' has no scripted expert; train from a LeRobot PushT dataset (observation.state, "
                          "observation.image, action in pixels): `genpolicy data convert <lerobot pusht dir> "
                          "data/pusht.zarr` then `genpolicy train task=pusht/pusht task.images=true`")
    if suite != "kitchen":
        raise ConfigError(f"'{name}' has no expert; bring demonstrations as a LeRobot, robomimic or zarr dataset")
    raise ConfigError(f"'{name}' has no scripted expert; convert recorded Franka Kitchen demonstrations "
                      "(59-d state, 9-d joint-velocity actions, see genpolicy/envs/kitchen.py) with "
                      "`genpolicy data convert`")
