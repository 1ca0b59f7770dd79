"""Training, data and evaluation schemas: `genpolicy train` / `demo` (`TrainConfig`), `genpolicy eval`
(`EvalCommandConfig`), `genpolicy data ...` (`DataCommandConfig`) and the sections other commands share
(`TaskConfig`, `EvalConfig`, `RunConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from genpolicy.configbase import _bounded, _check, _check_types
from genpolicy.experts.config import SACExpertConfig
from genpolicy.policies.config import PolicyConfig


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
