"""Fine-tuning schemas: `genpolicy finetune` (`FinetuneConfig`), the shared on-policy (`PPOConfig`) and
off-policy (`OffPolicyConfig`) cores, one section per algorithm (DPPO, FPO, ReinFlow, DSRL, EXPO), rollouts
(`RolloutConfig`) and held-out tests (`TestConfig`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from genpolicy.configbase import _bounded, _check, _check_types
from genpolicy.training.config import EvalConfig, RunConfig, TaskConfig, _check_no_test_split


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
