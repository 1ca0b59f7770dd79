"""Policy schemas: `PolicyConfig` (what a policy is, saved with every checkpoint as the flat `policy.config`
object of config.json) and the string registries its keys choose from.

The fields stay flat on purpose: saved checkpoints store them as one flat JSON object and `policy_config_from_dict`
refuses unknown keys, so grouping them into nested sections would stop existing checkpoints from loading. They are
grouped by part with comments instead (chunking, network, sampling, diffusion, flow, observations, steering).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from genpolicy.configbase import _bounded, _check, _check_types
from genpolicy.errors import ConfigError

POLICY_TYPES = ("diffusion", "flow")
SAMPLERS = {"diffusion": ("ddim", "ddpm"), "flow": ("euler", "heun", "midpoint", "shortcut", "adaptive")}
BACKENDS = ("auto", "eager", "compiled", "cuda_graph")
NETWORKS = ("mlp", "unet")
IMAGE_ENCODERS = ("resnet18", "conv")


@dataclass
class PolicyConfig:
    """What a policy is: its family, network, chunking and sampler. Saved with every checkpoint."""

    type: str = "diffusion"  # registry key: diffusion | flow
    # chunking (policies/chunking.py)
    n_obs_steps: int = 2  # To
    horizon: int = 16  # H, predicted actions starting at the current step
    n_action_steps: int = 8  # Ta, executed before re-planning
    # network (policies/networks/): `network` picks one; each reads only its own knobs
    network: str = "mlp"  # mlp | unet
    width: int = 512  # mlp
    depth: int = 3  # mlp residual blocks
    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])  # unet: channels per level
    kernel_size: int = 5  # unet
    n_groups: int = 8  # unet: GroupNorm groups
    time_dim: int = 128  # both: the timestep embedding
    # sampling, both families (policies/samplers.py)
    sampler: str = "ddim"  # diffusion: ddim | ddpm; flow: euler | heun | midpoint | shortcut | adaptive
    steps: int = 10  # K grid steps per chunk (heun/midpoint: 2 network calls each; adaptive: the most it may take)
    adaptive_tol: float = 0.2  # adaptive flow sampler: accepted local error per step (normalised action units)
    warm_start_steps: int = 0  # deployment: >0 starts each next chunk from the re-noised previous tail, this many steps
    backend: str = "auto"  # auto (CUDA graph on a GPU, eager on a CPU) | eager | compiled | cuda_graph
    # set by RL fine-tuning, saved with the checkpoint so evaluation samples exactly what was fine-tuned
    ft_steps: int = 0  # DPPO: the last ft_steps grid steps use the fine-tuned copy `net_ft`; the rest the frozen net
    init_noise_scale: float = 1.0  # deployment/eval initial noise scale (0 = FPO++'s zero-noise evaluation)
    # diffusion only (policies/diffusion.py)
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"  # squaredcos_cap_v2 | linear
    prediction: str = "sample"  # sample (predict the clean chunk; better at short CPU budgets) | epsilon (DP)
    clip_sample: float = 1.0  # clip predicted x0 to +-this; 0 disables
    eta: float = 0.0  # DDIM stochasticity
    timestep_spacing: str = "leading"  # leading (diffusers' default, DP) | trailing (starts at t=T-1; for few steps)
    # flow only (policies/flow.py)
    time_sampling: str = "beta"  # beta (more weight near noise, as in pi0) | uniform
    shortcut: bool = True  # also train the step-size-conditioned shortcut head (1-4 step sampling)
    shortcut_fraction: float = 0.25  # fraction of each batch spent on self-consistency targets
    shortcut_levels: int = 7  # smallest shortcut step is 2**-levels
    # observations (policies/normalizer.py, networks/encoders.py)
    normalizer: str = "minmax"  # minmax | meanstd (state); actions are always minmax to [-1, 1]
    image_size: int = 84
    crop_ratio: float = 0.9
    image_feature_dim: int = 64
    image_encoder: str = "resnet18"  # resnet18 (GroupNorm, Diffusion Policy's) | conv (4 small convolutions; CPU-friendly)
    # which state dims the policy sees (empty = all). Camera policies use proprioception only, e.g. Meta-World
    # [0,1,2,3,18,19,20,21] (hand xyz + gripper, now and one frame back), so objects are seen through the cameras.
    state_indices: list[int] = field(default_factory=list)
    mask_padded_actions: bool = False  # Diffusion Policy does not mask; kept as an option
    # steering, set by off-policy fine-tuning (genpolicy/policies/steering.py); saved so a checkpoint deploys as tuned
    steer: str = "none"  # none | dsrl (a latent-noise policy picks the initial noise) | expo (edit + Q-argmax)
    steer_scale: float = 1.0  # dsrl: the noise bound (action_magnitude); expo: the edit scale beta
    steer_width: int = 256  # the steering networks (dsrl: noise actor; expo: edit policy)
    steer_depth: int = 2
    expo_n_base: int = 8  # N base samples per decision
    expo_n_edit: int = 8  # M of them also edited
    expo_n_q: int = 10  # critic ensemble size
    expo_min_q: int = 2  # heads in the subsampled minimum

    def __post_init__(self) -> None:
        _check_types(self, "policy")
        _bounded(self, "policy", n_obs_steps=(1, 64), horizon=(1, 1024), width=(1, 16384), depth=(1, 64),
                 down_dims=(1, 8192), kernel_size=(1, 31), n_groups=(1, 512), time_dim=(2, 4096), steps=(1, 1000),
                 num_train_timesteps=(1, 10_000), shortcut_levels=(1, 16), image_size=(8, 1024),
                 image_feature_dim=(1, 4096), state_indices=(0, 65_535), steer_width=(1, 16384), steer_depth=(1, 64),
                 expo_n_base=(1, 1024), expo_n_edit=(1, 1024), expo_n_q=(1, 64), expo_min_q=(1, 64),
                 warm_start_steps=(0, 1000), ft_steps=(0, 1000))
        _check(1 <= len(self.down_dims) <= 6 and len(self.state_indices) <= 65_536,
               f"policy.down_dims must have 1 to 6 levels, got {len(self.down_dims)}")
        # each bound alone still allows a net that no machine holds: 2 * depth * width^2 weights in the MLP's blocks
        _check(2 * self.depth * self.width ** 2 <= 2**30,
               f"policy.width={self.width} with policy.depth={self.depth} makes an MLP of about "
               f"{2 * self.depth * self.width ** 2:.2e} weights; the limit is {2**30:.2e}")
        _check(self.steer in ("none", "dsrl", "expo"), f"policy.steer must be none|dsrl|expo, got '{self.steer}'")
        _check(self.steer_scale > 0, f"policy.steer_scale must be > 0, got {self.steer_scale}")
        _check(self.type in POLICY_TYPES, f"policy.type must be one of {POLICY_TYPES}, got '{self.type}'")
        _check(self.sampler in SAMPLERS[self.type],
               f"policy.sampler='{self.sampler}' is not valid for policy.type='{self.type}'; use one of {SAMPLERS[self.type]}")
        _check(self.image_encoder in IMAGE_ENCODERS,
               f"policy.image_encoder must be {'|'.join(IMAGE_ENCODERS)}, got '{self.image_encoder}'")
        _check(self.network in NETWORKS, f"policy.network must be one of {NETWORKS}, got '{self.network}'")
        _check(self.n_obs_steps >= 1, f"policy.n_obs_steps must be >= 1, got {self.n_obs_steps}")
        _check(1 <= self.n_action_steps <= self.horizon,
               f"policy.n_action_steps ({self.n_action_steps}) must be in [1, policy.horizon={self.horizon}]")
        _check(self.steps >= 1, f"policy.steps must be >= 1, got {self.steps}")
        _check(self.backend in BACKENDS, f"policy.backend must be one of {BACKENDS}, got '{self.backend}'")
        _check(0 <= self.warm_start_steps < self.steps or self.warm_start_steps == 0,
               f"policy.warm_start_steps ({self.warm_start_steps}) must be in [0, policy.steps={self.steps})")
        _check(self.adaptive_tol > 0, f"policy.adaptive_tol must be > 0, got {self.adaptive_tol}")
        _check(0 <= self.ft_steps <= self.steps, f"policy.ft_steps ({self.ft_steps}) must be in [0, policy.steps={self.steps}]")
        _check(self.init_noise_scale >= 0, f"policy.init_noise_scale must be >= 0, got {self.init_noise_scale}")
        _check(not (self.warm_start_steps and self.sampler == "adaptive"),
               "policy.warm_start_steps needs a fixed grid; it does not combine with policy.sampler=adaptive")
        if self.type == "diffusion":
            _check(self.steps <= self.num_train_timesteps,
                   f"policy.steps ({self.steps}) must be <= policy.num_train_timesteps ({self.num_train_timesteps})")
            _check(self.prediction in ("epsilon", "sample"), f"policy.prediction must be epsilon|sample, got '{self.prediction}'")
            _check(self.beta_schedule in ("squaredcos_cap_v2", "linear"),
                   f"policy.beta_schedule must be squaredcos_cap_v2|linear, got '{self.beta_schedule}'")
            _check(self.eta >= 0.0, f"policy.eta must be >= 0, got {self.eta}")
            _check(self.timestep_spacing in ("leading", "trailing"),
                   f"policy.timestep_spacing must be leading|trailing, got '{self.timestep_spacing}'")
            # "leading" starts at t=(K-1)*T/K: with few steps the first step would assume x_K still holds signal
            _check(self.timestep_spacing == "trailing" or self.steps >= 5,
                   f"policy.steps={self.steps} with timestep_spacing=leading starts far from pure noise; "
                   f"use policy.timestep_spacing=trailing for fewer than 5 steps")
        if self.sampler == "shortcut":
            _check(self.shortcut, "policy.sampler=shortcut needs a policy trained with policy.shortcut=true")
            # the finest trained step is 2**-(levels-1); the level below it is trained as plain flow (d = 0)
            top = 2 ** (self.shortcut_levels - 1)
            _check(self.steps & (self.steps - 1) == 0 and self.steps <= top,
                   f"policy.sampler=shortcut needs policy.steps a power of two <= {top}, got {self.steps}")
        _check(0.0 <= self.shortcut_fraction < 1.0, f"policy.shortcut_fraction must be in [0, 1), got {self.shortcut_fraction}")
        _check(self.shortcut_levels >= 1, f"policy.shortcut_levels must be >= 1, got {self.shortcut_levels}")
        _check(self.time_sampling in ("beta", "uniform"), f"policy.time_sampling must be beta|uniform, got '{self.time_sampling}'")
        _check(self.normalizer in ("minmax", "meanstd"), f"policy.normalizer must be minmax|meanstd, got '{self.normalizer}'")
        if self.network == "unet":
            m = 2 ** (len(self.down_dims) - 1)
            _check(self.horizon % m == 0,
                   f"policy.network=unet with {len(self.down_dims)} levels needs policy.horizon divisible by {m}, got {self.horizon}")
        _check(all(i >= 0 for i in self.state_indices) and len(set(self.state_indices)) == len(self.state_indices),
               f"policy.state_indices must be distinct non-negative indices, got {list(self.state_indices)}")
        _check(0.0 < self.crop_ratio <= 1.0, f"policy.crop_ratio must be in (0, 1], got {self.crop_ratio}")


def policy_config_from_dict(d: dict[str, Any], source: str) -> PolicyConfig:
    """Rebuild a PolicyConfig from saved JSON; unknown keys are an error naming the file."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: 'policy.config' must be an object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(PolicyConfig)}
    extra = sorted(set(d) - known)
    if extra:
        raise ConfigError(f"{source}: unknown policy keys {extra}")
    try:
        return PolicyConfig(**d)
    except ConfigError as e:  # the message names the key; add the file it came from
        raise ConfigError(f"{source}: {e}") from None
    except TypeError as e:  # e.g. a list where a number belongs, caught by a comparison before the type check
        raise ConfigError(f"{source}: invalid policy config ({e})") from None
