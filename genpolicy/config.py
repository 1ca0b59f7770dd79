"""Typed config schemas. Hydra composes YAML presets from configs/ onto these dataclasses; construction validates.

Polymorphic parts are chosen by string registry keys (`policy.type=flow`, `policy.network=unet`), never by class
paths, so a saved config.json can be read without importing anything it names.

Each part's schemas live beside its code; this module re-exports all of them, so `from genpolicy.config import X`
works for every schema:

    genpolicy/configbase.py           the shared validation helpers (`_check`, `_check_types`, `_bounded`)
    genpolicy/policies/config.py      PolicyConfig, policy_config_from_dict, the policy/sampler/network registries
    genpolicy/training/config.py      Task, Data, Optim, Eval, Run, Train, EvalCommand, DataCommand
    genpolicy/experts/config.py       SACExpertConfig
    genpolicy/finetune/config.py      PPO, DPPO, FPO, ReinFlow, OffPolicy, DSRL, EXPO, Rollout, Test, Finetune
    genpolicy/real_robot/config.py    Safety, Controller, RTC, BID, Robot, Serve, ServeCommand, Intervention,
                                      Deploy, parse_address, EXECUTION_MODES

None of them imports torch or a simulator.
"""

from __future__ import annotations

# the validation helpers and _check_no_test_split stay importable from here, as before the split
from genpolicy.configbase import _bounded, _check, _check_types, _is_int, _is_real  # noqa: F401
from genpolicy.experts.config import SACExpertConfig
from genpolicy.finetune.config import (DSRL_FLOW_SAMPLERS, DSRL_SAMPLERS, ENCODER_MODES, OFFPOLICY_ALGOS,
                                       ONPOLICY_ALGOS, PPO_OVERRIDES, ROLLOUT_BACKENDS, DPPOConfig, DSRLConfig,
                                       EXPOConfig, FinetuneConfig, FPOConfig, OffPolicyConfig, PPOConfig,
                                       PPOOverrides, ReinFlowConfig, RolloutConfig, TestConfig)
from genpolicy.policies.config import (BACKENDS, IMAGE_ENCODERS, NETWORKS, POLICY_TYPES, SAMPLERS, PolicyConfig,
                                       policy_config_from_dict)
from genpolicy.real_robot.config import (EXECUTION_MODES, BIDConfig, ControllerConfig, DeployConfig,
                                         InterventionConfig, RobotConfig, RTCConfig, SafetyConfig,
                                         ServeCommandConfig, ServeConfig, parse_address)
from genpolicy.training.config import (DataCommandConfig, DataConfig, EvalCommandConfig, EvalConfig, OptimConfig,
                                       RunConfig, TaskConfig, TrainConfig, _check_no_test_split)  # noqa: F401

__all__ = [
    # policies/config.py
    "POLICY_TYPES", "SAMPLERS", "BACKENDS", "NETWORKS", "IMAGE_ENCODERS", "PolicyConfig",
    "policy_config_from_dict",
    # training/config.py
    "TaskConfig", "DataConfig", "OptimConfig", "EvalConfig", "RunConfig", "TrainConfig", "EvalCommandConfig",
    "DataCommandConfig",
    # experts/config.py
    "SACExpertConfig",
    # finetune/config.py
    "ONPOLICY_ALGOS", "OFFPOLICY_ALGOS", "PPOConfig", "PPO_OVERRIDES", "PPOOverrides", "DPPOConfig", "FPOConfig",
    "ReinFlowConfig", "OffPolicyConfig", "DSRL_FLOW_SAMPLERS", "DSRL_SAMPLERS", "DSRLConfig", "EXPOConfig",
    "ROLLOUT_BACKENDS", "RolloutConfig", "TestConfig", "ENCODER_MODES", "FinetuneConfig",
    # real_robot/config.py
    "SafetyConfig", "EXECUTION_MODES", "ControllerConfig", "RTCConfig", "BIDConfig", "RobotConfig", "ServeConfig",
    "ServeCommandConfig", "parse_address", "InterventionConfig", "DeployConfig",
]
