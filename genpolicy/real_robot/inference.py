"""Policy inference for the controller: what a policy takes and gives (PolicySpec), a local runner, and a worker
thread so that inference never blocks the control loop.

Shapes: To = n_obs_steps, H = horizon, Da = action dim, Ds = state dim.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from genpolicy.errors import GenpolicyError


@dataclass
class PolicySpec:
    """The contract between a checkpoint and a robot (checked before connect, and sent by the server)."""

    task: str
    n_obs_steps: int
    horizon: int
    n_action_steps: int
    state_dim: int
    action_dim: int
    cameras: dict[str, list[int]] = field(default_factory=dict)  # name -> [3, H, W]
    checkpoint: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> "PolicySpec":
        try:
            return cls(task=str(d["task"]), n_obs_steps=int(d["n_obs_steps"]), horizon=int(d["horizon"]),
                       n_action_steps=int(d["n_action_steps"]), state_dim=int(d["state_dim"]),
                       action_dim=int(d["action_dim"]), cameras={str(k): [int(x) for x in v] for k, v in d["cameras"].items()},
                       checkpoint=str(d.get("checkpoint", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise GenpolicyError(f"{source}: malformed policy spec ({type(e).__name__}: {e})") from None

    def check_obs(self, obs: dict[str, np.ndarray]) -> None:
        """Raise naming the key when an observation window does not fit this policy."""
        want = {"state": (self.n_obs_steps, self.state_dim)} | {
            f"image.{c}": (self.n_obs_steps, *s) for c, s in self.cameras.items()}
        for k, shape in want.items():
            if k not in obs:
                raise GenpolicyError(f"observation key '{k}' is missing (got {sorted(obs)})")
            if tuple(obs[k].shape) != tuple(shape):
                raise GenpolicyError(f"observation '{k}' has shape {tuple(obs[k].shape)}, the policy takes {tuple(shape)}")
        extra = sorted(set(obs) - set(want))
        if extra:
            raise GenpolicyError(f"observation keys {extra} are not inputs of this policy (it takes {sorted(want)})")


@dataclass
class ChunkRequest:
    """What real-time execution (rtc / bid) sends with an observation: the plan the robot will follow meanwhile."""

    prev: np.ndarray  # (n, Da) the old plan in robot units, index 0 = the step of the observation (n <= H; may be 0)
    frozen: int  # d: the estimated delay in control steps; the new chunk's first d actions must equal prev[:d]


class PolicyRunner(Protocol):
    """Observation window -> action chunk. `infer` is called from one thread at a time. Runners that take a
    ChunkRequest accept it as a second argument; others are only ever called with the observation."""

    spec: PolicySpec

    def infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """{state: (To, Ds), image.<cam>: (To, 3, H, W) uint8} -> (H, Da) float32 in the robot's action units."""
        ...


def _call(runner: Any, obs: dict[str, np.ndarray], request: "ChunkRequest | None") -> np.ndarray:
    return np.asarray(runner.infer(obs) if request is None else runner.infer(obs, request), np.float32)


class LocalPolicy:
    """A checkpoint loaded strictly, sampled with the settings it was saved with."""

    def __init__(self, ckpt: str | Path, use_ema: bool = True, threads: int = 0, realtime: Any = None,
                 weak_ckpt: str | Path = "") -> None:
        """`realtime` (policies.realtime.RealtimeSettings): how a ChunkRequest is honoured (rtc or bid); `weak_ckpt`:
        BID's weaker reference policy."""
        from genpolicy.training.checkpoint import load_policy, read_config

        # inference only: without parameter grads RTC's VJP records the x path alone (about a third cheaper)
        self.policy = load_policy(ckpt, use_ema=use_ema).requires_grad_(False)
        self.weak = load_policy(weak_ckpt, use_ema=use_ema).requires_grad_(False) if weak_ckpt else None
        self.realtime = realtime
        self.threads = threads
        cfg, shape = self.policy.cfg, self.policy.shape
        task = read_config(ckpt).get("task", {}).get("name", "")
        s = shape.image_size
        self.spec = PolicySpec(task=task, n_obs_steps=cfg.n_obs_steps, horizon=cfg.horizon,
                               n_action_steps=cfg.n_action_steps, state_dim=shape.state_dim, action_dim=shape.action_dim,
                               cameras={c: [3, s, s] for c in shape.cameras}, checkpoint=str(ckpt))
        self._gen = torch.Generator().manual_seed(0)

    def infer(self, obs: dict[str, np.ndarray], request: ChunkRequest | None = None,
              realtime: Any = None) -> np.ndarray:
        """`request` is honoured with `realtime` (a server passes the client's settings) or this runner's own."""
        self.spec.check_obs(obs)
        batch = {k: torch.as_tensor(np.ascontiguousarray(v)).unsqueeze(0) for k, v in obs.items()}
        batch["state"] = batch["state"].float()
        settings = realtime if realtime is not None else self.realtime
        if request is not None and settings is not None:
            from genpolicy.policies.realtime import realtime_chunk

            # no inference_mode here: RTC's guidance records a small autograd graph on x (see realtime.py)
            chunk = realtime_chunk(self.policy, batch, request.prev, request.frozen, settings,
                                   generator=self._gen, weak=self.weak)
            return chunk[0].float().numpy()
        with torch.inference_mode():
            chunk = self.policy.predict_chunk(batch, generator=self._gen)  # (1, H, Da)
        return chunk[0].float().numpy()


@dataclass
class InferenceResult:
    obs_step: int  # control step of the observation the chunk was predicted from
    actions: np.ndarray | None  # (H, Da), None on error
    latency_s: float  # submit -> result ready
    error: str = ""


class InferenceWorker:
    """Runs `runner.infer` on a background thread. `submit` and `poll` never block; one request is in flight at most.

    `inject_latency_s` holds each result back that long after submission (latency studies on the simulated robot).
    """

    def __init__(self, runner: PolicyRunner, inject_latency_s: float = 0.0) -> None:
        self.runner = runner
        self.inject_latency_s = float(inject_latency_s)
        self._requests: queue.Queue = queue.Queue(maxsize=1)
        self._results: queue.Queue = queue.Queue()
        self._busy = threading.Event()
        self._stop = threading.Event()
        self.errors = 0
        self.latencies: list[float] = []
        self.compute_s: list[float] = []  # time spent in runner.infer per chunk (without injected latency)
        self._thread = threading.Thread(target=self._loop, name="genpolicy-inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def submit(self, obs_step: int, obs: dict[str, np.ndarray], request: ChunkRequest | None = None) -> bool:
        """Queue one request; returns False (and drops it) when a request is already in flight."""
        if self._busy.is_set():
            return False
        self._busy.set()
        self._requests.put_nowait((obs_step, obs, request, time.monotonic()))
        return True

    def poll(self) -> list[InferenceResult]:
        out = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                obs_step, obs, request, t0 = self._requests.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                actions, err = _call(self.runner, obs, request), ""
            except Exception as e:  # the loop must survive any inference failure; the watchdog handles the gap
                actions, err = None, f"{type(e).__name__}: {e}"
                self.errors += 1
            t_done = time.monotonic()
            wait = t0 + self.inject_latency_s - t_done
            if wait > 0:
                self._stop.wait(wait)
            latency = time.monotonic() - t0
            if actions is not None:
                self.latencies.append(latency)
                self.compute_s.append(t_done - t0)
            self._results.put(InferenceResult(obs_step, actions, latency, err))
            self._busy.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


class SimulatedInference:
    """The worker interface on simulated time, for fake-clock tests and studies: `infer` runs at submit (costing no
    simulated time) and its result is released once `clock.now()` reaches submit time + the latency: `latency_s`,
    plus uniform [0, jitter_s) drawn from `seed`, plus (with `add_compute`) the measured wall time of `infer` itself,
    so a slower sampler (RTC's VJPs, BID's candidates) arrives later exactly as it would on a robot."""

    def __init__(self, runner: PolicyRunner, clock: Any, latency_s: float = 0.0, jitter_s: float = 0.0,
                 add_compute: bool = False, seed: int = 0) -> None:
        self.runner, self.clock, self.latency_s = runner, clock, float(latency_s)
        self.jitter_s, self.add_compute = float(jitter_s), add_compute
        self._rng = np.random.default_rng(seed)
        self._pending: list[tuple[float, InferenceResult]] = []
        self.errors = 0
        self.latencies: list[float] = []
        self.compute_s: list[float] = []

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def submit(self, obs_step: int, obs: dict[str, np.ndarray], request: ChunkRequest | None = None) -> bool:
        if self._pending:
            return False
        t0 = time.perf_counter()
        try:
            actions, err = _call(self.runner, obs, request), ""
        except Exception as e:  # same contract as the thread worker: failures become error results
            actions, err = None, f"{type(e).__name__}: {e}"
            self.errors += 1
        compute = time.perf_counter() - t0
        if actions is not None:
            self.compute_s.append(compute)
        latency = self.latency_s + (self._rng.random() * self.jitter_s if self.jitter_s > 0 else 0.0) + \
            (compute if self.add_compute else 0.0)
        self._pending.append((self.clock.now() + latency, InferenceResult(obs_step, actions, latency, err)))
        return True

    def poll(self) -> list[InferenceResult]:
        now = self.clock.now()
        ready = [r for t, r in self._pending if t <= now]
        self._pending = [(t, r) for t, r in self._pending if t > now]
        self.latencies += [r.latency_s for r in ready if r.actions is not None]
        return ready

    def close(self) -> None:
        self._pending.clear()
