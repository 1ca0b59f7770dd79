"""Deployment schemas: `genpolicy serve` (`ServeCommandConfig`) and `genpolicy deploy` (`DeployConfig`) with their
sections: safety filter, controller, real-time execution (RTC, BID), robot, policy server and interventions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from genpolicy.configbase import _bounded, _check, _check_types
from genpolicy.training.config import RunConfig


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
