"""Typed config schemas. Hydra composes YAML presets from configs/ onto these dataclasses; construction validates.

Polymorphic parts are chosen by string registry keys (`policy.type=flow`, `policy.network=unet`), never by class
paths, so a saved config.json can be read without importing anything it names.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from numpy import bool_ as np_bool

from genpolicy.errors import ConfigError

POLICY_TYPES = ("diffusion", "flow")
SAMPLERS = {"diffusion": ("ddim", "ddpm"), "flow": ("euler", "heun", "midpoint", "shortcut", "adaptive")}
BACKENDS = ("auto", "eager", "compiled", "cuda_graph")
NETWORKS = ("mlp", "unet")
IMAGE_ENCODERS = ("resnet18", "conv")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np_bool))


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np_bool))


_TYPE_CHECKS = {"int": _is_int, "float": _is_real, "str": lambda v: isinstance(v, str),
                "bool": lambda v: isinstance(v, (bool, np_bool))}
_TYPE_NAMES = {"int": ("an integer", "integers"), "float": ("a number", "numbers"), "str": ("a string", "strings"),
               "bool": ("true or false", "booleans")}


def _check_types(obj: Any, prefix: str) -> None:
    """Every field has its declared type. OmegaConf converts CLI values, but a saved config.json is built from JSON
    directly, where `"width": "512"`, `1e9` for an int or `true` for a number must be refused, not computed with."""
    for f in dataclasses.fields(obj):
        t, v = str(f.type), getattr(obj, f.name)
        if t in _TYPE_CHECKS:
            ok = _TYPE_CHECKS[t](v)
        elif t.startswith("list[") and t[5:-1] in _TYPE_CHECKS:
            ok = isinstance(v, (list, tuple)) and all(_TYPE_CHECKS[t[5:-1]](x) for x in v)
        else:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        want = f"a list of {_TYPE_NAMES[t[5:-1]][1]}" if t.startswith("list") else _TYPE_NAMES[t][0]
        _check(ok, f"{key} must be {want}, got {v!r:.60} ({type(v).__name__})")
        if t == "float":
            _check(math.isfinite(v), f"{key} must be finite, got {v}")


def _bounded(obj: Any, prefix: str, **bounds: tuple[int, int]) -> None:
    """Size fields within [lo, hi]: every one of them sizes an allocation, a loop or a thread pool, and a value like
    1e9 from a tampered config would exhaust memory instead of failing."""
    for name, (lo, hi) in bounds.items():
        v, key = getattr(obj, name), f"{prefix}.{name}" if prefix else name
        if isinstance(v, (list, tuple)):
            _check(all(lo <= x <= hi for x in v), f"{key} entries must be in [{lo}, {hi}], got {list(v)}")
        else:
            _check(lo <= v <= hi, f"{key} must be in [{lo}, {hi}], got {v}")


@dataclass
class PolicyConfig:
    """What a policy is: its family, network, chunking and sampler. Saved with every checkpoint."""

    type: str = "diffusion"  # registry key: diffusion | flow
    n_obs_steps: int = 2  # To
    horizon: int = 16  # H, predicted actions starting at the current step
    n_action_steps: int = 8  # Ta, executed before re-planning
    network: str = "mlp"  # mlp | unet
    width: int = 512  # mlp
    depth: int = 3  # mlp residual blocks
    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])  # unet
    kernel_size: int = 5
    n_groups: int = 8
    time_dim: int = 128
    # sampling (both families)
    sampler: str = "ddim"  # diffusion: ddim | ddpm; flow: euler | heun | midpoint | shortcut | adaptive
    steps: int = 10  # K grid steps per chunk (heun/midpoint: 2 network calls each; adaptive: the most it may take)
    adaptive_tol: float = 0.2  # adaptive flow sampler: accepted local error per step (normalised action units)
    warm_start_steps: int = 0  # deployment: >0 starts each next chunk from the re-noised previous tail, this many steps
    backend: str = "auto"  # auto (CUDA graph on a GPU, eager on a CPU) | eager | compiled | cuda_graph
    # set by RL fine-tuning, saved with the checkpoint so evaluation samples exactly what was fine-tuned
    ft_steps: int = 0  # DPPO: the last ft_steps grid steps use the fine-tuned copy `net_ft`; the rest the frozen net
    init_noise_scale: float = 1.0  # deployment/eval initial noise scale (0 = FPO++'s zero-noise evaluation)
    # diffusion
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"  # squaredcos_cap_v2 | linear
    prediction: str = "sample"  # sample (predict the clean chunk; better at short CPU budgets) | epsilon (DP)
    clip_sample: float = 1.0  # clip predicted x0 to +-this; 0 disables
    eta: float = 0.0  # DDIM stochasticity
    timestep_spacing: str = "leading"  # leading (diffusers' default, DP) | trailing (starts at t=T-1; for few steps)
    # flow
    time_sampling: str = "beta"  # beta (more weight near noise, as in pi0) | uniform
    shortcut: bool = True  # also train the step-size-conditioned shortcut head (1-4 step sampling)
    shortcut_fraction: float = 0.25  # fraction of each batch spent on self-consistency targets
    shortcut_levels: int = 7  # smallest shortcut step is 2**-levels
    # observations
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
    steer_width: int = 256
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


@dataclass
class TaskConfig:
    """Which environment, and how it is observed."""

    name: str = "metaworld/drawer-open-v3"
    images: bool = False  # add camera observations (image.<cam>) for camera policies
    max_episode_steps: int = 0  # 0 = the task's own default
    image_size: int = 0  # camera frames, square pixels, when recording demos; 0 = the task's own default (84)

    def __post_init__(self) -> None:
        _check_types(self, "task")
        _bounded(self, "task", max_episode_steps=(0, 10_000_000), image_size=(0, 1024))
        _check(self.max_episode_steps >= 0, f"task.max_episode_steps must be >= 0, got {self.max_episode_steps}")
        _check(self.image_size == 0 or self.image_size >= 16, f"task.image_size must be 0 or >= 16, got {self.image_size}")


@dataclass
class DataConfig:
    """Where demonstrations live, and how the experts make them."""

    path: str = ""  # zarr store, LeRobot v3 directory, or a LeRobot repo_id in the local cache; empty = data/<task>.zarr
    n_episodes: int = 50  # for generation
    noise: float = 0.0  # expert action-noise std (quality knob)
    detour_prob: float = 0.0  # per-episode probability of a suboptimal detour (quality knob)
    val_fraction: float = 0.05
    seed: int = 0
    max_train_episodes: int = 0  # 0 = all; fewer makes a weak policy on purpose
    keep_failed: bool = False  # generation: also store episodes where the expert failed
    expert_path: str = ""  # trained (SAC) expert directory for tasks without a scripted one; empty = data/experts/<task>
    # reading (genpolicy/datasets/lazy.py): frames are decoded per batch, in worker processes
    state_keys: list[str] = field(default_factory=list)  # LeRobot keys concatenated into `state`; empty = automatic
    num_workers: int = -1  # DataLoader workers decoding frames; -1 = auto (0 without cameras, else min(4, cpus-1))
    prefetch: int = 2  # batches each worker reads ahead
    tolerance_s: float = 1e-4  # a video frame must lie this close to its timestamp (LeRobot's default)
    # pyav | torchcodec. PyAV is the default by measurement (benchmarks/data_loading.py --quick, 2 workers: 391 vs 351
    # samples/s on flat frames, 24 vs 25 on textured ones, lower peak memory, first batch 3-4x sooner) and it needs no
    # system FFmpeg libraries (torchcodec does)
    video_backend: str = "pyav"

    def __post_init__(self) -> None:
        _check_types(self, "data")
        _bounded(self, "data", n_episodes=(1, 10_000_000), max_train_episodes=(0, 10_000_000), num_workers=(-1, 64),
                 prefetch=(1, 64))
        _check(0 < self.tolerance_s < 1, f"data.tolerance_s must be in (0, 1) seconds, got {self.tolerance_s}")
        _check(self.video_backend in ("pyav", "torchcodec"),
               f"data.video_backend must be pyav or torchcodec, got {self.video_backend!r}")
        _check(0 <= self.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class OptimConfig:
    """Defaults are tuned for short CPU budgets (2-4k steps): lr 3e-4 with 200 warm-up steps. Diffusion Policy's
    long-run recipe is lr 1e-4 with 500 warm-up steps; at 2000 steps that left diffusion on pick-place at 0.38
    success against 0.88 with 3e-4 (benchmarks/results/archive/)."""

    steps: int = 4000
    batch_size: int = 256  # global: under torchrun each of the N processes trains on batch_size / N of it
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    weight_decay: float = 1e-6
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    # data-parallel training under torchrun (genpolicy/training/dist.py); ignored in a single process
    dist_backend: str = "auto"  # auto (nccl on CUDA, gloo on the CPU) | gloo | nccl
    dist_timeout_s: float = 1800.0  # bound on every collective; ranks wait at a barrier while rank 0 evaluates
    # warm start: begin from this checkpoint's weights and normaliser (EMA copy) instead of a fresh initialisation,
    # e.g. each DAgger round from the previous round's policy; the policy config must match
    init_from: str = ""

    def __post_init__(self) -> None:
        _check_types(self, "train")
        _bounded(self, "train", steps=(1, 2**62), batch_size=(1, 2**20), warmup_steps=(0, 2**62))
        _check(self.steps >= 1, f"train.steps must be >= 1, got {self.steps}")
        _check(self.dist_backend in ("auto", "gloo", "nccl"),
               f"train.dist_backend must be auto|gloo|nccl, got '{self.dist_backend}'")
        _check(self.dist_timeout_s > 0, f"train.dist_timeout_s must be > 0, got {self.dist_timeout_s}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")


@dataclass
class EvalConfig:
    n_episodes: int = 50
    n_envs: int = 10
    n_videos: int = 2
    seed: int = 100000  # evaluation seeds are disjoint from demonstration seeds
    every: int = 0  # evaluate during training every N steps; 0 = only at the end
    # custom: seeds seed, seed+1, ... | selection (<= 20 episodes) / test (>= 100): the protocol's disjoint seed
    # ranges (genpolicy/protocol.py), which then set `seed`
    split: str = "custom"

    def __post_init__(self) -> None:
        _check_types(self, "eval")
        _bounded(self, "eval", n_episodes=(1, 1_000_000), n_envs=(1, 1024), n_videos=(0, 10_000), every=(0, 2**62))
        _check(self.n_episodes >= 1, f"eval.n_episodes must be >= 1, got {self.n_episodes}")
        _check(self.n_envs >= 1, f"eval.n_envs must be >= 1, got {self.n_envs}")
        _check(self.split in ("custom", "selection", "test"),
               f"eval.split must be custom|selection|test, got '{self.split}'")
        if self.split != "custom":
            from genpolicy.protocol import SEEDS, split_seeds  # lazy: the protocol module imports this one

            start = split_seeds(self.split, self.n_episodes).start  # refuses a split size outside the protocol
            default = next(f.default for f in dataclasses.fields(self) if f.name == "seed")
            # a seed another split set (a config whose default split was overridden) is not the user's
            _check(self.seed in (default, SEEDS.selection.start, SEEDS.test.start),
                   f"eval.split={self.split} sets the seeds; drop eval.seed={self.seed}")
            self.seed = start


@dataclass
class RunConfig:
    """Common to every command."""

    name: str = ""
    dir: str = ""  # explicit run directory; empty = runs/<date>-<name>
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0 = torch default
    log_every: int = 100
    ckpt_every: int = 1000
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        _check_types(self, "run")
        _bounded(self, "run", threads=(0, 1024), log_every=(1, 2**62), ckpt_every=(1, 2**62))


@dataclass
class TrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _check_no_test_split(self.eval)


def _check_no_test_split(ev: EvalConfig) -> None:
    # evaluations during a run choose checkpoints or stop it: the protocol keeps the test episodes out of them
    from genpolicy.protocol import SEEDS

    _check(ev.split != "test" and not (ev.seed < SEEDS.test.stop and SEEDS.test.start < ev.seed + ev.n_episodes),
           f"eval.split={ev.split} eval.seed={ev.seed}: test episodes (seeds {SEEDS.test.start}..) are never seen during "
           "a run; evaluate during the run with eval.split=selection (<= 20 episodes), then the result with "
           "`genpolicy eval ... eval.split=test`")


ONPOLICY_ALGOS = ("dppo", "fpo", "reinflow")
OFFPOLICY_ALGOS = ("dsrl", "expo")


@dataclass
class PPOConfig:
    """The shared on-policy core. One transition = one executed chunk; gamma applies per chunk."""

    n_envs: int = 16
    n_steps: int = 32  # chunk steps per env per iteration
    iterations: int = 100
    gamma: float = 0.99
    gae_lambda: float = 0.95
    epochs: int = 5
    minibatch_size: int = 256
    actor_lr: float = 1e-4
    actor_lr_min: float = 1e-5  # cosine floor
    critic_lr: float = 1e-3
    warmup_iters: int = 0  # linear lr warm-up
    clip_eps: float = 0.01  # PPO clip (DPPO: the clip of the final denoising step)
    target_kl: float = 1.0  # stop actor epochs when approx KL exceeds this; 0 disables
    max_grad_norm: float = 1.0
    critic_warmup_iters: int = 0  # iterations that update only the critic
    norm_adv: bool = True  # per-minibatch advantage normalisation
    reward_scale: bool = True  # running return-std reward scaler
    reward: str = "env"  # env: the task's own reward | success: 1 for the chunk that succeeds (episodes end on success)
    reward_offset: float = 0.0  # added to every chunk reward before scaling
    critic_width: int = 256
    critic_depth: int = 3
    stop_success: float = 0.0  # stop early once `stop_patience` evaluations in a row reach this success; 0 never stops
    stop_patience: int = 2

    def __post_init__(self) -> None:
        _check_types(self, "ppo")
        _bounded(self, "ppo", n_envs=(1, 4096), n_steps=(1, 1_000_000), iterations=(1, 2**62), epochs=(1, 10_000),
                 minibatch_size=(1, 2**20), warmup_iters=(0, 2**62), critic_warmup_iters=(0, 2**62),
                 critic_width=(1, 16384), critic_depth=(1, 64))
        _check(0 <= self.stop_success <= 1 and self.stop_patience >= 1,
               f"ppo.stop_success must be in [0, 1] and ppo.stop_patience >= 1, got {self.stop_success}, {self.stop_patience}")
        for k in ("n_envs", "n_steps", "iterations", "epochs", "minibatch_size"):
            _check(getattr(self, k) >= 1, f"ppo.{k} must be >= 1, got {getattr(self, k)}")
        _check(0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "ppo.gamma must be in (0, 1] and ppo.gae_lambda in [0, 1]")
        _check(self.clip_eps > 0, f"ppo.clip_eps must be > 0, got {self.clip_eps}")
        _check(self.reward in ("env", "success"), f"ppo.reward must be env|success, got '{self.reward}'")


PPO_OVERRIDES = ("actor_lr", "actor_lr_min", "clip_eps", "minibatch_size")


@dataclass
class PPOOverrides:
    """Per-algorithm values of shared `ppo.*` settings (DPPO, FPO and ReinFlow inherit these), so that one suite preset
    holds each algorithm's own (e.g. `fpo.clip_eps`) and a benchmark passes nothing but the preset. 0 keeps the `ppo`
    section's value. `FinetuneConfig` folds the selected algorithm's into `ppo` once, at construction."""

    actor_lr: float = 0.0
    actor_lr_min: float = 0.0
    clip_eps: float = 0.0
    minibatch_size: int = 0


@dataclass
class DPPOConfig(PPOOverrides):
    sampler: str = ""  # fine-tuning grid: ddim | ddpm; empty keeps the checkpoint's
    steps: int = 0  # 0 keeps the checkpoint's
    ft_steps: int = 5  # K': the last K' grid steps are fine-tuned (a copy of the network); K' = 1 works
    eta: float = 1.0  # DDIM eta while fine-tuning (eta = 1 keeps every step stochastic)
    eval_eta: float = 0.0  # DDIM eta of the saved checkpoint (evaluation)
    min_sampling_std: float = 0.1
    min_logprob_std: float = 0.1
    randn_clip: float = 3.0
    logprob_min: float = -5.0  # per-element clamp
    logprob_max: float = 2.0
    denoise_gamma: float = 0.99  # advantage discount over denoising steps (final step weight 1)
    clip_eps_base: float = 0.001  # clip of the noisiest fine-tuned step; ppo.clip_eps is the final step's
    clip_rate: float = 3.0
    bc_coef: float = 0.0  # optional BC regulariser: likelihood of frozen-policy chains

    def __post_init__(self) -> None:
        _check_types(self, "dppo")
        _bounded(self, "dppo", steps=(0, 1000), ft_steps=(1, 1000))
        _check(self.sampler in ("", "ddim", "ddpm"), f"dppo.sampler must be ddim|ddpm, got '{self.sampler}'")
        _check(self.ft_steps >= 1, f"dppo.ft_steps must be >= 1, got {self.ft_steps}")
        _check(self.min_sampling_std > 0 and self.min_logprob_std > 0, "dppo.min_sampling_std and min_logprob_std must be > 0")


@dataclass
class FPOConfig(PPOOverrides):
    variant: str = "fpo++"  # fpo (ratio of averaged losses, PPO clip) | fpo++ (per-sample ratios, asymmetric trust region)
    n_mc: int = 8  # (eps, t) pairs per action, drawn and stored at rollout time
    loss_clamp: float = 20.0  # CFM losses are clamped at this
    log_ratio_clamp: float = 3.0
    action_noise: float = 0.0  # additive Gaussian exploration on the sampled chunk (normalised units)
    zero_noise_eval: bool = True  # the saved checkpoint samples from x0 = 0 (FPO++)

    def __post_init__(self) -> None:
        _check_types(self, "fpo")
        _bounded(self, "fpo", n_mc=(1, 1024))
        _check(self.variant in ("fpo", "fpo++"), f"fpo.variant must be fpo|fpo++, got '{self.variant}'")
        _check(self.n_mc >= 1, f"fpo.n_mc must be >= 1, got {self.n_mc}")


@dataclass
class ReinFlowConfig(PPOOverrides):
    sampler: str = ""  # euler (rectified flow) | shortcut; empty keeps the checkpoint's (euler if it is neither)
    steps: int = 4  # K noisy Euler steps, 1 to 4 (0 keeps the checkpoint's)
    sigma_min: float = 0.05
    sigma_max: float = 0.2
    noise_hidden: list[int] = field(default_factory=lambda: [128, 128])
    time_dependent: bool = True  # sigma depends on the step as well as the observation
    entropy_coef: float = 0.01
    randn_clip: float = 3.0
    bc_w2_coef: float = 0.0  # optional: MSE to the frozen BC policy's actions from the same noise
    likelihood_rows: str = "executed"  # executed (Ta rows, as the reference) | all (the whole sampled chunk)

    def __post_init__(self) -> None:
        _check_types(self, "reinflow")
        _bounded(self, "reinflow", noise_hidden=(1, 16384))
        _check(len(self.noise_hidden) <= 16, f"reinflow.noise_hidden may have at most 16 layers, got {len(self.noise_hidden)}")
        _check(self.likelihood_rows in ("executed", "all"), f"reinflow.likelihood_rows must be executed|all, got '{self.likelihood_rows}'")
        _check(self.sampler in ("", "euler", "shortcut"), f"reinflow.sampler must be euler|shortcut, got '{self.sampler}'")
        _check(0 < self.sigma_min < self.sigma_max, f"reinflow needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        _check(0 <= self.steps <= 64, f"reinflow.steps must be in [0, 64], got {self.steps}")


@dataclass
class OffPolicyConfig:
    """The shared off-policy core (finetune/offpolicy.py). One transition = one executed chunk; env steps count the
    chunk's executed steps. Widths and update ratios are chosen for a CPU: see benchmarks/results/archive/finetune_offpolicy.md."""

    n_envs: int = 4
    env_steps: int = 50_000  # budget, in environment steps
    chunk_steps_per_iter: int = 10  # chunk steps per env between logging points
    utd: float = 2.0  # gradient updates per collected transition (chunk)
    batch_size: int = 256
    gamma: float = 0.99  # per chunk
    lr: float = 3e-4
    tau: float = 0.005
    warmup_env_steps: int = 2000  # base-policy rollouts before learning starts
    offline_ratio: float = 0.5  # RLPD mixing: fraction of each batch from the demonstrations (algorithms that use them)
    offline_data: str = ""  # demonstrations (zarr); empty = the BC checkpoint's dataset; "none" = online only
    reward: str = "success"  # success: 1 for the chunk that succeeds (episodes end there) | env: the task's reward
    reward_offset: float = 0.0
    capacity: int = 200_000  # chunk transitions kept
    critic_width: int = 256
    critic_depth: int = 2
    init_temperature: float = 0.1
    # deployment corrections as offline data (finetune/interventions.py): recorded `genpolicy deploy teleop=...`
    # runs or dagger stores, comma-separated; rlif=true keeps every frame and puts -rlif_penalty on the takeover chunk
    interventions: str = ""
    rlif: bool = False
    rlif_penalty: float = 1.0

    def __post_init__(self) -> None:
        _check_types(self, "offpolicy")
        _check(self.rlif_penalty >= 0, f"offpolicy.rlif_penalty must be >= 0, got {self.rlif_penalty}")
        _check(not self.rlif or bool(self.interventions), "offpolicy.rlif=true needs offpolicy.interventions=<recording>")
        _bounded(self, "offpolicy", n_envs=(1, 4096), env_steps=(1, 2**62), chunk_steps_per_iter=(1, 1_000_000),
                 batch_size=(1, 2**20), capacity=(1, 100_000_000), warmup_env_steps=(0, 2**62),
                 critic_width=(1, 16384), critic_depth=(1, 64))
        for k in ("n_envs", "env_steps", "chunk_steps_per_iter", "batch_size", "capacity"):
            _check(getattr(self, k) >= 1, f"offpolicy.{k} must be >= 1, got {getattr(self, k)}")
        _check(self.utd > 0, f"offpolicy.utd must be > 0, got {self.utd}")
        _check(0 <= self.offline_ratio < 1, f"offpolicy.offline_ratio must be in [0, 1), got {self.offline_ratio}")
        _check(self.reward in ("env", "success"), f"offpolicy.reward must be env|success, got '{self.reward}'")
        _check(0 < self.gamma <= 1 and 0 < self.tau <= 1, "offpolicy.gamma and offpolicy.tau must be in (0, 1]")


DSRL_FLOW_SAMPLERS = ("euler", "shortcut", "heun", "midpoint")  # deterministic noise -> chunk maps of a flow
DSRL_SAMPLERS = ("ddim",) + DSRL_FLOW_SAMPLERS  # ... and of a diffusion policy (DDIM, eta = 0)


@dataclass
class DSRLConfig:
    variant: str = "na"  # sac: SAC over the noise w | na: noise-aliased (Q^A on chunks, Q^W distilled, actor on Q^W)
    action_magnitude: float = 1.5  # the noise actor's bound, respected by both variants
    n_q: int = 2
    width: int = 256  # noise actor
    depth: int = 2
    qw_steps: int = 1  # NA: Q^W distillation steps per update
    backup_entropy: bool = False  # the entropy term in the TD backup; off: with sparse 0/1 rewards it swamps them
    # the temperature's target, per noise dimension, on the actor's tanh-space density (before the scaling by m, as
    # upstream measures it; upstream's is 0). -1.405 kept by measurement: see the DSRL module docstring
    target_entropy: float = -1.405
    # the base map's sampler (acting, NA's backups and distillation), saved with the steered policy; empty/0 keeps the
    # checkpoint's (diffusion: DDIM eta=0). NA decodes 2 x B chunks per update: `sampler=shortcut steps=1` (flow
    # policies trained with the shortcut head) cuts that by the step count
    sampler: str = ""
    steps: int = 0

    def __post_init__(self) -> None:
        _check_types(self, "dsrl")
        _bounded(self, "dsrl", n_q=(1, 64), width=(1, 16384), depth=(1, 64), qw_steps=(0, 1000), steps=(0, 1000))
        _check(self.variant in ("sac", "na"), f"dsrl.variant must be sac|na, got '{self.variant}'")
        _check(self.action_magnitude > 0, f"dsrl.action_magnitude must be > 0, got {self.action_magnitude}")
        _check(self.sampler in ("",) + DSRL_SAMPLERS,
               f"dsrl.sampler must be a deterministic map ({'|'.join(DSRL_SAMPLERS)}), got '{self.sampler}'")
        _check(self.steps >= 0, f"dsrl.steps must be >= 0, got {self.steps}")


@dataclass
class EXPOConfig:
    beta: float = 0.05  # edit scale (edit_action_scale)
    n_base: int = 8  # N base samples
    n_edit: int = 8  # M edited samples
    n_q: int = 10
    n_min_q: int = 2
    width: int = 256  # edit policy
    depth: int = 2
    base_lr: float = 1e-4  # BC on the mixed replay
    target_entropy: float = -0.5  # per chunk dimension, on the edit's density in delta units (EXPO: -d/2; <= log 2)
    base_ema: float = 0.001  # the acting base is an EMA of the BC-trained one (the paper's tau)
    # the base policy's sampler for every candidate chunk (acting and backups), saved with the tuned policy; empty/0
    # keeps the checkpoint's. Each update decodes B x N chunks twice, so `sampler=shortcut steps=1` (flow policies
    # trained with the shortcut head) cuts that cost by the step count.
    sampler: str = ""
    steps: int = 0

    def __post_init__(self) -> None:
        _check_types(self, "expo")
        _bounded(self, "expo", n_base=(1, 1024), n_edit=(1, 1024), n_q=(1, 64), n_min_q=(1, 64), width=(1, 16384),
                 depth=(1, 64), steps=(0, 1000))
        _check(self.beta > 0 and 1 <= self.n_edit <= self.n_base and 1 <= self.n_min_q <= self.n_q,
               "expo needs beta > 0, 1 <= n_edit <= n_base, 1 <= n_min_q <= n_q")
        _check(self.steps >= 0, f"expo.steps must be >= 0, got {self.steps}")
        _check(0 < self.base_ema <= 1, f"expo.base_ema must be in (0, 1], got {self.base_ema}")
        _check(self.target_entropy < math.log(2), f"expo.target_entropy must be < log 2 per dimension (the most a "
               f"tanh-Gaussian edit can have), got {self.target_entropy}")


ROLLOUT_BACKENDS = ("local", "ray")


@dataclass
class RolloutConfig:
    """Where fine-tuning rollouts run (finetune/ray_rollout.py). Batched torch-native tasks (isaaclab*) always step
    in the learner's process; this switch applies to gym-style tasks. Same seeds give the same rollouts either way."""

    backend: str = "local"  # local: envs in this process | ray: envs split over `workers` Ray actors (pip install .[ray])
    workers: int = 2  # ray: actors, each owning about n_envs / workers envs
    address: str = ""  # ray: ray.init(address=...) of a running cluster ("auto" = the local one); empty = start one here

    def __post_init__(self) -> None:
        _check_types(self, "rollout")
        _bounded(self, "rollout", workers=(1, 1024))
        _check(self.backend in ROLLOUT_BACKENDS, f"rollout.backend must be one of {ROLLOUT_BACKENDS}, got '{self.backend}'")
        _check(self.workers >= 1, f"rollout.workers must be >= 1, got {self.workers}")


@dataclass
class TestConfig:
    """Held-out test evaluations during fine-tuning (genpolicy/protocol.py): `episodes` episodes on the protocol's test
    seeds at each fraction of the budget (the first iteration boundary at or past it), the same fractions for on- and
    off-policy runs. Nothing in the run reads them: evaluations that decide (early stopping) use eval.split=selection.
    0 episodes = off; the protocol's tables need >= 100."""

    episodes: int = 0
    fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])

    def __post_init__(self) -> None:
        _check_types(self, "test")
        _check(self.episodes == 0 or self.episodes >= 100,
               f"test.episodes must be 0 (off) or >= 100 (the protocol's test set), got {self.episodes}")
        fr = list(self.fractions)
        _check(bool(fr) and fr == sorted(set(fr)) and 0 < fr[0] and fr[-1] == 1.0,
               f"test.fractions must increase within (0, 1] and end at 1.0, got {fr}")


ENCODER_MODES = ("frozen", "finetuned")


@dataclass
class FinetuneConfig:
    """`genpolicy finetune algo=dppo|fpo|reinflow|dsrl|expo ckpt=<BC checkpoint> task=...`."""

    algo: str = "reinflow"
    ckpt: str = ""
    use_ema: bool = True
    task: TaskConfig = field(default_factory=lambda: TaskConfig(name=""))  # empty name: the checkpoint's task
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dppo: DPPOConfig = field(default_factory=DPPOConfig)
    fpo: FPOConfig = field(default_factory=FPOConfig)
    reinflow: ReinFlowConfig = field(default_factory=ReinFlowConfig)
    offpolicy: OffPolicyConfig = field(default_factory=OffPolicyConfig)
    dsrl: DSRLConfig = field(default_factory=DSRLConfig)
    expo: EXPOConfig = field(default_factory=EXPOConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    # camera checkpoints: "frozen" keeps the BC image encoder; "finetuned" trains a copy of it for the critics with
    # random-shift augmentation (DrQ), see finetune/pixels.py. Recorded in the fine-tuned checkpoint's config.
    encoder_mode: str = "frozen"
    # evaluations during the run decide early stopping: the protocol's selection seeds (<= 20 episodes)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n_episodes=20, n_videos=1, every=10, split="selection"))
    test: TestConfig = field(default_factory=TestConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=1, ckpt_every=10))

    def __post_init__(self) -> None:
        _check(self.algo in ONPOLICY_ALGOS + OFFPOLICY_ALGOS,
               f"algo must be one of {ONPOLICY_ALGOS + OFFPOLICY_ALGOS}, got '{self.algo}'")
        if self.algo in ONPOLICY_ALGOS:  # this algorithm's own ppo values (its preset section) win over the shared ones
            own = getattr(self, self.algo)
            changes = {k: getattr(own, k) for k in PPO_OVERRIDES if getattr(own, k)}
            for k, v in changes.items():
                _check(v > 0, f"{self.algo}.{k} must be > 0 (0 keeps ppo.{k}), got {v}")
            if changes:
                self.ppo = dataclasses.replace(self.ppo, **changes)  # validated again by PPOConfig
        _check(self.encoder_mode in ENCODER_MODES,
               f"encoder_mode must be one of {ENCODER_MODES}, got '{self.encoder_mode}'")
        _check_no_test_split(self.eval)


@dataclass
class EvalCommandConfig:
    ckpt: str = ""
    task: str = ""  # empty = the checkpoint's task
    sampler: str = ""  # override the checkpoint's sampler, e.g. shortcut
    steps: int = 0  # override the number of sampling steps
    warm_start_steps: int = -1  # override policy.warm_start_steps (-1 keeps the checkpoint's)
    backend: str = ""  # override policy.backend (eager | compiled | cuda_graph)
    adaptive_tol: float = 0.0  # override policy.adaptive_tol (sampler=adaptive)
    use_ema: bool = True
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class SACExpertConfig:
    """`genpolicy data expert`: SAC until the deterministic return reaches stop_return (a medium expert)."""

    steps: int = 300_000  # env steps at most
    stop_return: float = 0.0  # stop once the deterministic eval return reaches this (0 = run all steps)
    start_steps: int = 5_000  # uniform random actions first
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    width: int = 256
    eval_every: int = 10_000
    eval_episodes: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        _check_types(self, "expert")
        _bounded(self, "expert", steps=(1, 2**62), batch_size=(1, 2**20), width=(1, 16384), eval_every=(1, 2**62),
                 eval_episodes=(1, 10_000), start_steps=(0, 2**62))
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("expert.steps and expert.batch_size must be >= 1")


@dataclass
class DataCommandConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    input: str = ""  # convert: source path (.zarr, .hdf5, or a LeRobot dataset directory)
    output: str = ""  # convert/generate: destination
    format: str = ""  # convert: zarr | lerobot (destination format); empty = from the output name
    fps: float = 0.0  # convert: frames per second when the source does not say
    state_keys: list[str] = field(default_factory=list)  # convert: source keys concatenated into `state`
    expert: SACExpertConfig = field(default_factory=SACExpertConfig)  # data expert: SAC settings
    progress: bool = True
    # data view: a Rerun recording of one dataset episode (input=<dataset>) or one rollout of a checkpoint (ckpt=)
    episode: int = 0
    ckpt: str = ""
    rollout_seed: int = 100000  # the rollout's env seed (the protocol's test seeds start here)
    serve: bool = False  # also serve it: gRPC + Rerun's web viewer, for a browser on another machine
    grpc_port: int = 9876
    web_port: int = 9090
    view_host: str = "localhost"  # the address the browser page uses to reach the gRPC port (ssh tunnel: localhost)


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


# ----------------------------------------------------------------------------------------------------------------------
# deployment: genpolicy serve / genpolicy deploy
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class SafetyConfig:
    """The safety filter (genpolicy/real_robot/safety.py). On by default. Limits are fractions of each action dim's
    declared range, so one config is meaningful across robots; 0 turns a stage off (the finite check never is)."""

    enabled: bool = True
    margin: float = 0.02  # position limits = declared range shrunk by this fraction at each end
    max_delta: Any = 0.25  # per-step clamp against the measured position (robots that report one)
    max_velocity: Any = 12.0  # range fractions per second against the last sent action (12/s = 0.4 per step at 30 Hz)
    workspace_dims: list[int] = field(default_factory=list)  # optional box on these action dims (robot units)
    workspace_low: list[float] = field(default_factory=list)
    workspace_high: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_types(self, "safety")
        _check(0 <= self.margin < 0.5, f"safety.margin must be in [0, 0.5), got {self.margin}")


EXECUTION_MODES = ("sync", "latest", "blend", "ensemble", "rtc", "bid")


@dataclass
class ControllerConfig:
    """The fixed-rate control loop (genpolicy/real_robot/controller.py)."""

    rate_hz: float = 30.0
    # how a new chunk joins the motion under way (deploy.execution sets it):
    #   sync     - the robot holds while each chunk is computed, then executes Ta actions of it (no overlap)
    #   latest   - the newest chunk takes over at arrival (a jump where it does)
    #   blend    - cross-fade from the older plan over the blend window after a new chunk takes over
    #   ensemble - ACT's temporal ensembling of every chunk covering the step
    #   rtc      - real-time chunking: the new chunk is sampled as inpainting of the old plan (frozen prefix of the
    #              measured delay, guided overlap), then takes over at arrival
    #   bid      - bidirectional decoding: N candidates, the most coherent with the old plan takes over at arrival
    blending: str = "blend"
    blend_s: float = 4 / 30  # the blend window in seconds (rate-aware: the same duration at every rate); 0 = blend_steps
    blend_steps: int = 4  # the blend window in control steps when blend_s = 0
    ensemble_k: float = 0.01  # ACT temporal-ensembling weight exp(-k * i), i = 0 for the oldest chunk
    latency_handling: bool = True  # drop actions whose time has passed (chunks are stamped with their observation step)
    request_every: int = 0  # ask for a new chunk every this many steps; 0 = the policy's n_action_steps
    delay_window: int = 10  # rtc/bid: the frozen prefix d is the largest delay (steps) of the last this many chunks
    delay_margin: int = 0  # rtc/bid: steps added to that estimate (a cushion for jitter)
    hold_after: int = 2  # periods without a valid action before the hold command is sent
    stop_after_s: float = 1.0  # without a valid action this long, the episode ends in the safe state
    max_steps: int = 0  # per episode; 0 = the task's max_episode_steps

    def __post_init__(self) -> None:
        _check_types(self, "controller")
        _bounded(self, "controller", blend_steps=(1, 1000), hold_after=(1, 1_000_000), request_every=(0, 1_000_000),
                 max_steps=(0, 2**62), delay_window=(1, 10_000), delay_margin=(0, 10_000))
        _check(0 < self.rate_hz <= 1000, f"controller.rate_hz must be in (0, 1000], got {self.rate_hz}")
        _check(self.blending in EXECUTION_MODES,
               f"controller.blending must be {'|'.join(EXECUTION_MODES)}, got '{self.blending}'")
        _check(0 <= self.blend_s <= 10, f"controller.blend_s must be in [0, 10] seconds, got {self.blend_s}")
        # rtc/bid align the old plan to the observation's step, which is where latency handling puts the new chunk
        _check(self.latency_handling or self.blending not in ("rtc", "bid"),
               f"controller.blending={self.blending} needs controller.latency_handling=true")
        _check(self.blend_steps >= 1 and self.hold_after >= 1 and self.stop_after_s > 0,
               "controller.blend_steps and hold_after must be >= 1 and stop_after_s > 0")

    @property
    def blend_window(self) -> int:
        """The blend window in control steps at this rate (>= 1)."""
        return max(1, round(self.blend_s * self.rate_hz)) if self.blend_s > 0 else self.blend_steps


@dataclass
class RTCConfig:
    """deploy.execution=rtc: guided inpainting of the old plan (genpolicy/policies/realtime.py)."""

    # cap on the guidance weight (the paper's beta; 0 = hard prefix replacement only). About the number of sampling
    # steps: the cap binds at the last steps, where (1 - t) * beta is the share of the error corrected in one step
    # (10 for Euler 10, as LeRobot's default; the paper used 5 with 5 steps)
    beta: float = 10.0
    # mask over the overlap after the frozen prefix: exp | linear | ones | zeros. The paper's exp decays from the
    # seam; with this toolkit's short overlaps (H - Ta = 8 steps) its weight at the seam is 0.2-0.7 and the seam
    # jump fell only 1.2-2x vs latest on the toy task; ones (full weight over the old plan's remaining steps)
    # cut it 5-7x at the same success (quick probe, toy/bimodal, 10 episodes) -- to be confirmed by realtime.py
    schedule: str = "ones"

    def __post_init__(self) -> None:
        _check_types(self, "rtc")
        _check(0 <= self.beta <= 1000, f"rtc.beta must be in [0, 1000], got {self.beta}")
        _check(self.schedule in ("exp", "linear", "ones", "zeros"),
               f"rtc.schedule must be exp|linear|ones|zeros, got '{self.schedule}'")


@dataclass
class BIDConfig:
    """deploy.execution=bid: bidirectional decoding (genpolicy/policies/realtime.py)."""

    samples: int = 8  # N candidates per chunk, drawn in one batched sampler call
    rho: float = 0.5  # backward-coherence weight rho^i over the overlap with the old plan
    k: int = 3  # forward contrast: mean distance to the k nearest strong / weak samples
    weak_ckpt: str = ""  # a weaker reference policy (e.g. an early checkpoint) for forward contrast; empty = none

    def __post_init__(self) -> None:
        _check_types(self, "bid")
        _bounded(self, "bid", samples=(1, 1024), k=(1, 1024))
        _check(0 < self.rho <= 1, f"bid.rho must be in (0, 1], got {self.rho}")


@dataclass
class RobotConfig:
    """Which robot. `sim`: a toolkit task advanced in real time at the control rate, with injectable faults."""

    type: str = "sim"  # sim | lerobot_sim (the sim robot behind LeRobot's Robot API, through our adapter)
    task: str = ""  # sim: the task; empty = the checkpoint's
    obs_latency_ms: float = 0.0  # sim: observations are this old
    obs_jitter_ms: float = 0.0  # sim: + uniform [0, jitter) extra age
    drop_prob: float = 0.0  # sim: probability that get_observation returns the previous (stale) observation
    max_action_rate: float = 0.0  # sim actuator: max change of the applied command per control period (0 = none)

    def __post_init__(self) -> None:
        _check_types(self, "robot")
        _check(self.type in ("sim", "lerobot_sim"), f"robot.type must be sim|lerobot_sim, got '{self.type}'")
        _check(0 <= self.drop_prob < 1, f"robot.drop_prob must be in [0, 1), got {self.drop_prob}")


@dataclass
class ServeConfig:
    """The policy server (genpolicy/real_robot/server.py). Loopback by default; no pickle on the wire."""

    host: str = "127.0.0.1"
    port: int = 8765  # 0 = any free port (printed at start)
    token: str = ""  # required from clients when set; required when host is not loopback
    codec: str = "msgpack"  # msgpack | safetensors (responses use the codec of the request)
    max_bytes: int = 64 * 2**20  # frame size cap, both directions
    deadline_ms: float = 1000.0  # client: every call; server: time allowed to receive one frame
    warmup: bool = True  # run one inference before accepting connections
    # server limits against hostile or leaky clients: connections beyond the cap are refused with an error reply,
    # a connection silent this long is closed (clients reconnect on their next call), and frames being received
    # may hold at most max_buffered_bytes together (a frame that would exceed it is refused)
    max_connections: int = 16
    idle_timeout_s: float = 30.0
    max_buffered_bytes: int = 128 * 2**20

    def __post_init__(self) -> None:
        _check_types(self, "serve")
        _bounded(self, "serve", max_connections=(1, 4096))
        _check(0 < self.idle_timeout_s <= 86_400, f"serve.idle_timeout_s must be in (0, 86400], got {self.idle_timeout_s}")
        _check(self.max_bytes <= self.max_buffered_bytes <= 2**40,
               f"serve.max_buffered_bytes must be in [serve.max_bytes={self.max_bytes}, 1 TiB], got {self.max_buffered_bytes}")
        _check(self.codec in ("msgpack", "safetensors"), f"serve.codec must be msgpack|safetensors, got '{self.codec}'")
        _check(0 <= self.port < 65536, f"serve.port must be in [0, 65536), got {self.port}")
        _check(1024 <= self.max_bytes <= 2**31 - 1, f"serve.max_bytes must be in [1 KiB, 2 GiB), got {self.max_bytes}")
        _check(self.deadline_ms > 0, f"serve.deadline_ms must be > 0, got {self.deadline_ms}")


@dataclass
class ServeCommandConfig:
    """`genpolicy serve ckpt=...`."""

    ckpt: str = ""
    use_ema: bool = True
    serve: ServeConfig = field(default_factory=lambda: ServeConfig(port=8765))


def parse_address(addr: str, key: str) -> tuple[str, int]:
    """'host:port' -> (host, port), refused in one line naming the key: a port outside 1-65535 or not a number
    would otherwise surface as a ValueError or OverflowError from the socket layer."""
    host, sep, port = str(addr).rpartition(":")
    _check(bool(sep and host and port), f"{key}={addr!r}: expected <host>:<port>")
    _check(port.isdigit() and 1 <= int(port) <= 65535, f"{key}={addr!r}: port must be a number in 1-65535, got {port!r}")
    return host, int(port)


@dataclass
class InterventionConfig:
    """Who may take over during `genpolicy deploy teleop=...` (genpolicy/real_robot/teleop.py). The simulated
    teleoperator is the task's expert: it takes over by `rule` and hands back after `hold_steps` control ticks."""

    rule: str = "deviation"  # deviation | stall | deviation_or_stall
    threshold: float = 0.5  # deviation: max |policy - expert| over action dims (robot units)
    hold_steps: int = 20  # ticks per takeover, including the one that triggered it
    stall_steps: int = 20  # stall: window of policy ticks over which the task's progress (shaped reward) must rise
    stall_tol: float = 1e-3  # ... by more than this
    expert_path: str = ""  # SAC expert directory for gym/dmc tasks; empty = data/experts/<task>
    lerobot_type: str = ""  # teleop=lerobot: the LeRobot teleoperator config type (so101_leader, gamepad, ...)
    lerobot_port: str = ""  # teleop=lerobot: its port, when it has one

    def __post_init__(self) -> None:
        _check_types(self, "intervention")
        _bounded(self, "intervention", hold_steps=(1, 1_000_000), stall_steps=(1, 1_000_000))
        _check(self.rule in ("deviation", "stall", "deviation_or_stall"),
               f"intervention.rule must be deviation|stall|deviation_or_stall, got '{self.rule}'")
        _check(self.threshold >= 0, f"intervention.threshold must be >= 0, got {self.threshold}")


@dataclass
class DeployConfig:
    """`genpolicy deploy ckpt=... robot=sim`: run episodes end to end, record them as a LeRobot v3 dataset."""

    ckpt: str = ""
    use_ema: bool = True
    robot: RobotConfig = field(default_factory=RobotConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    inference: str = "thread"  # thread (in this process, off the loop) | process (a local `genpolicy serve`) | remote
    server: str = ""  # inference=remote: host:port of a running `genpolicy serve`
    serve: ServeConfig = field(default_factory=lambda: ServeConfig(port=0))  # client settings (token, codec, deadline)
    inject_latency_ms: float = 0.0  # extra delay before each chunk is handed to the controller (latency studies)
    execution: str = "blend"  # sync | latest | blend | ensemble | rtc | bid (see ControllerConfig.blending)
    rtc: RTCConfig = field(default_factory=RTCConfig)
    bid: BIDConfig = field(default_factory=BIDConfig)
    n_episodes: int = 5
    seed: int = 100_000  # episode seeds seed, seed+1, ... (held out from training seeds)
    record: bool = True  # write every episode to run_dir/dataset (LeRobot v3) after it ends
    run: RunConfig = field(default_factory=RunConfig)
    teleop: str = "none"  # none | sim (the task's expert, by intervention.rule) | lerobot_sim | lerobot (needs lerobot)
    intervention: InterventionConfig = field(default_factory=InterventionConfig)

    def __post_init__(self) -> None:
        _check_types(self, "")
        _bounded(self, "", n_episodes=(1, 1_000_000))
        _check(self.inference in ("thread", "process", "remote"),
               f"inference must be thread|process|remote, got '{self.inference}'")
        _check(self.execution in EXECUTION_MODES, f"execution must be {'|'.join(EXECUTION_MODES)}, got '{self.execution}'")
        if self.execution == "blend" and self.controller.blending != "blend":
            self.execution = self.controller.blending  # the older key controller.blending=<mode> still selects it
        self.controller = dataclasses.replace(self.controller, blending=self.execution)  # one source of truth
        _check(not (self.execution == "bid" and self.bid.weak_ckpt) or self.inference == "thread",
               f"bid.weak_ckpt is loaded next to the controller; use inference=thread, got inference={self.inference}")
        if self.inference == "remote":
            parse_address(self.server, "server")
        _check(self.n_episodes >= 1, f"n_episodes must be >= 1, got {self.n_episodes}")
        _check(self.teleop in ("none", "sim", "lerobot_sim", "lerobot"),
               f"teleop must be none|sim|lerobot_sim|lerobot, got '{self.teleop}'")
        _check(self.teleop != "lerobot" or bool(self.intervention.lerobot_type),
               "teleop=lerobot needs intervention.lerobot_type=<LeRobot teleoperator type, e.g. so101_leader>")
