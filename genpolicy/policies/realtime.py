"""Real-time chunk execution on the policy side: RTC inpainting guidance and bidirectional decoding (BID).

While a chunk is being computed, the robot keeps executing the previous plan. When the new chunk arrives, its first
d actions (d = the inference delay in control steps) have already been executed from the old plan, and the rest has
to join the motion under way.

RTC (Black, Galliker, Levine 2025) samples the new chunk as inpainting of the old plan, training-free: at every
network evaluation the clean estimate x_hat (flow: x + (1-t) v; diffusion: the x0 prediction) is pulled toward the
old plan Y with a soft mask W (1 on the frozen prefix, decaying over the rest of the overlap, 0 beyond) through one
vector-Jacobian product g = (d x_hat / d x)^T W (Y - x_hat). Flow: v' = v + min(beta, w(t)) g with the paper's
w(t) = (t^2 + (1-t)^2) / (t (1-t)) (t=0 noise, t=1 data). Diffusion: x0' = x0 + min(beta, 1/sqrt(abar_t)) g, the same
Gaussian-posterior algebra on the VP path (see /work/shared/reference/next-wave.md 1.10), and the network output is
rewritten to be consistent with x0' so `grid_step` is unchanged. It is a `Denoiser` wrapper, so it runs through the
same engine (`samplers.run`, any grid method). The frozen prefix is replaced exactly in the output.

BID (Liu et al., ICLR 2025) draws N candidates in one batched sampler call and keeps the one most coherent with the
old plan (backward: weighted distance over the overlap, weights rho^i) and, when a weaker reference policy is given,
closest to the other strong candidates and farthest from the weak ones (forward contrast).

Shapes: B batch, N candidates, H horizon, Da action dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from genpolicy.errors import ConfigError
from genpolicy.policies.samplers import DIFFUSION_METHODS, TIME_SCALE, Denoiser, Grid

if TYPE_CHECKING:
    from genpolicy.policies.base import GenerativePolicy

SCHEDULES = ("exp", "linear", "ones", "zeros")


def prefix_weights(frozen: int, end: int, horizon: int, schedule: str = "exp") -> torch.Tensor:
    """The soft mask (H,): 1 for i < frozen, the schedule's decay for frozen <= i < end, 0 from end on.

    exp: W_i = c_i (e^c_i - 1) / (e - 1) with c_i = (end - i) / (end - frozen + 1) (the paper's, with end = H - s);
    `end` is clipped to [0, H] and `frozen` to [0, end] (a delay longer than the old plan freezes all of it)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"rtc.schedule must be one of {'|'.join(SCHEDULES)}, got '{schedule}'")
    end = min(max(int(end), 0), horizon)
    frozen = min(max(int(frozen), 0), end)
    i = torch.arange(horizon, dtype=torch.float32)
    c = (end - i) / (end - frozen + 1)
    if schedule == "exp":
        w = c * torch.expm1(c) / (math.e - 1)
    elif schedule == "linear":
        w = c
    elif schedule == "ones":
        w = torch.ones(horizon)
    else:  # zeros: hard masking only (the ablation)
        w = torch.zeros(horizon)
    w = torch.where(i < frozen, torch.ones(()), w)
    return torch.where(i >= end, torch.zeros(()), w)


def flow_guidance_weight(t: float, beta: float) -> float:
    """min(beta, (1-t)/(t r_t^2)) with r_t^2 = (1-t)^2/(t^2+(1-t)^2); infinite at t in {0, 1}, so beta there."""
    if t <= 0.0 or t >= 1.0:
        return beta
    return min(beta, (t * t + (1 - t) ** 2) / (t * (1 - t)))


@dataclass
class Guide:
    """What RTC pulls the new chunk toward, in the policy's normalised space, on the new chunk's time axis."""

    target: torch.Tensor  # (B, H, Da) the old plan; rows past its end are padding (weight 0)
    weights: torch.Tensor  # (H,) soft mask
    frozen: int  # d: these first actions are replaced by the old plan exactly
    beta: float  # the guidance weight cap; 0 = no guidance (hard prefix replacement only)

    @property
    def guided(self) -> bool:
        return self.beta > 0 and bool((self.weights > 0).any())

    @property
    def active(self) -> bool:
        """False when sampling must equal the plain sampler: nothing frozen and no guidance."""
        return self.frozen > 0 or self.guided

    def replace_prefix(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen <= 0:
            return x
        x = x.clone()
        x[:, : self.frozen] = self.target[:, : self.frozen]
        return x


class GuidedDenoiser:
    """Wraps a denoiser so that its output carries the RTC correction. Integer evaluations only (one grid for all)."""

    def __init__(self, inner: Denoiser, grid: Grid, guide: Guide) -> None:
        self.inner, self.grid, self.guide = inner, grid, guide
        self.diffusion = grid.method in DIFFUSION_METHODS
        self.w = guide.weights.to(guide.target.device).view(1, -1, 1)  # (1, H, 1)

    def clean_estimate(self, x: torch.Tensor, out: torch.Tensor, e: int) -> torch.Tensor:
        """x_hat of evaluation e: the flow's data-end point, or diffusion's x0 prediction (unclipped)."""
        g = self.grid
        if self.diffusion:
            return g.coef["p_x"][e] * x + g.coef["p_o"][e] * out
        t = g.eval_t[e] / TIME_SCALE
        return x + (1.0 - t) * out

    def vjp(self, x: torch.Tensor, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(network output, x_hat, g = J^T W (Y - x_hat)) at x, evaluation e. One forward and one backward pass."""
        with torch.enable_grad():  # the sampler runs under no_grad; guidance needs this one local graph
            xg = x.detach().requires_grad_(True)
            out = self.inner(xg, e)
            x_hat = self.clean_estimate(xg, out, e)
            err = self.w * (self.guide.target - x_hat)
            (g,) = torch.autograd.grad(x_hat, xg, err.detach())
        return out.detach(), x_hat.detach(), g

    def __call__(self, x: torch.Tensor, e: Any) -> torch.Tensor:
        if not isinstance(e, int):
            raise ConfigError("RTC guidance runs one grid step for the whole batch (no per-row steps)")
        out, x_hat, g = self.vjp(x, e)
        beta, grid = self.guide.beta, self.grid
        if not self.diffusion:
            return out + flow_guidance_weight(grid.eval_t[e] / TIME_SCALE, beta) * g
        sa, sb = grid.renoise[0][e], grid.renoise[1][e]
        x0 = x_hat + min(beta, 1.0 / sa) * g
        # return what the network "would have said" for x0, so grid_step's x0 and eps follow the guided x0
        return x0 if grid.prediction == "sample" else (x - sa * x0) / sb


def make_guide(policy: "GenerativePolicy", prev: Optional[np.ndarray], frozen: int, beta: float,
               schedule: str) -> Optional[Guide]:
    """The guide for one chunk from the old plan `prev` (n, Da) in env units on the new chunk's time axis (index 0 =
    the new chunk's first step). None when there is no old plan."""
    if prev is None or len(prev) == 0:
        return None
    h, dev = policy.cfg.horizon, policy.device
    p = torch.as_tensor(np.asarray(prev, np.float32)[:h], device=dev).unsqueeze(0)  # (1, n, Da)
    n = p.shape[1]
    normed = policy.normalize_actions(p)
    if n < h:  # pad by repeating the last action (weight 0 there; zero-padding would decode to the data mean)
        normed = torch.cat([normed, normed[:, -1:].expand(-1, h - n, -1)], 1)
    return Guide(target=normed, weights=prefix_weights(frozen, n, h, schedule).to(dev), frozen=min(max(frozen, 0), n),
                 beta=float(beta))


def bid_scores(cands: torch.Tensor, prev: Optional[torch.Tensor], rho: float, weak: Optional[torch.Tensor] = None,
               k: int = 3, start: int = 0) -> torch.Tensor:
    """Score (N,) of each candidate (N, H, Da); lower is better.

    backward = sum_i rho^(i-start) |c_i - prev_i|_2 / sum_i rho^(i-start) over start <= i < n, the overlap with the
    old plan `prev` (n, Da) from `start` on: under a delay d the first d actions are replaced by the old plan anyway,
    so coherence counts from the first action the candidate will actually execute (start = d; all of the overlap
    when d >= n);
    forward (with `weak` (M, H, Da)) = mean distance to the k nearest other candidates minus mean distance to the k
    nearest weak samples (distance = mean per-step Euclidean distance over the chunk)."""
    n_c = cands.shape[0]
    score = cands.new_zeros(n_c)
    if prev is not None and len(prev) > 0:
        n = min(prev.shape[0], cands.shape[1])
        s0 = start if 0 <= start < n else 0
        w = rho ** torch.arange(n - s0, dtype=cands.dtype, device=cands.device)
        dist = (cands[:, s0:n] - prev[None, s0:n]).norm(dim=-1)  # (N, n - s0)
        score = score + (dist * w).sum(1) / w.sum()
    if weak is not None and n_c > 1:
        def mean_nearest(a: torch.Tensor, b: torch.Tensor, kk: int, exclude_self: bool) -> torch.Tensor:
            d = (a[:, None] - b[None]).norm(dim=-1).mean(-1)  # (N, M)
            if exclude_self:
                d = d + torch.eye(d.shape[0], dtype=d.dtype, device=d.device) * 1e9
            kk = max(1, min(kk, d.shape[1] - int(exclude_self)))
            return d.topk(kk, dim=1, largest=False).values.mean(1)

        score = score + mean_nearest(cands, cands, k, True) - mean_nearest(cands, weak, k, False)
    return score


def bid_select(policy: "GenerativePolicy", cond: torch.Tensor, prev: Optional[torch.Tensor], n: int, rho: float,
               noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
               weak: Optional["GenerativePolicy"] = None, weak_cond: Optional[torch.Tensor] = None,
               k: int = 3, start: int = 0) -> dict[str, torch.Tensor]:
    """N candidates for one observation (cond (1, Dc)) in one batched sampler call; returns the chosen normalised
    chunk (1, H, Da), its index, all candidates and their scores. `prev` (n, Da) normalised, or None."""
    if noise is None:
        noise = policy.initial_noise(n, generator)
    cands = policy.sample(cond.expand(n, -1).contiguous(), noise=noise, generator=generator).clamp(-1.0, 1.0)
    weak_s = None
    if weak is not None:
        wc = weak_cond if weak_cond is not None else cond
        weak_s = weak.sample(wc.expand(n, -1).contiguous(), generator=generator).clamp(-1.0, 1.0)
    scores = bid_scores(cands, prev, rho, weak_s, k, start)
    i = int(torch.argmin(scores))
    return {"actions": cands[i: i + 1], "index": torch.tensor(i), "candidates": cands, "scores": scores}


@dataclass
class RealtimeSettings:
    """Policy-side settings of deploy.execution=rtc|bid (validated by config.RTCConfig / BIDConfig)."""

    mode: str = "rtc"  # rtc | bid
    beta: float = 10.0
    schedule: str = "ones"
    bid_samples: int = 8
    bid_rho: float = 0.5
    bid_k: int = 3


@torch.no_grad()
def realtime_chunk(policy: "GenerativePolicy", obs: dict[str, torch.Tensor], prev: Optional[np.ndarray], frozen: int,
                   settings: RealtimeSettings, generator: Optional[torch.Generator] = None,
                   noise: Optional[torch.Tensor] = None, weak: Optional["GenerativePolicy"] = None) -> torch.Tensor:
    """One chunk (1, H, Da) in env units that joins the old plan `prev` ((n, Da) env units, index 0 = this chunk's
    first step; None or empty = no old plan). rtc: guided inpainting with the first `frozen` actions equal to `prev`;
    bid: the most coherent of N candidates (the same exact prefix replacement, so both modes honour the delay)."""
    if policy.steer is not None:  # its noise actor / edit policy would be bypassed silently
        raise ConfigError(f"execution={settings.mode} does not combine with a steered ({policy.cfg.steer}) policy; "
                          "use execution=latest|blend|ensemble")
    cond = policy.encode(obs)
    if noise is None and policy.cfg.init_noise_scale != 1.0:  # as predict_chunk (e.g. FPO++'s zero-noise evaluation)
        n = settings.bid_samples if settings.mode == "bid" else 1
        noise = policy.initial_noise(n, generator) * policy.cfg.init_noise_scale
    if settings.mode == "bid":
        p = None if prev is None or len(prev) == 0 else policy.normalize_actions(
            torch.as_tensor(np.asarray(prev, np.float32), device=cond.device))
        wc = weak.encode(obs) if weak is not None else None
        x = bid_select(policy, cond, p, settings.bid_samples, settings.bid_rho, noise=noise, generator=generator,
                       weak=weak, weak_cond=wc, k=settings.bid_k, start=max(int(frozen), 0))["actions"]
        guide = None
    else:
        guide = make_guide(policy, prev, frozen, settings.beta, settings.schedule)
        x = policy.sample(cond, noise=noise, generator=generator, guide=guide).clamp(-1.0, 1.0)
    out = policy.unnormalize_actions(x)
    d = 0 if prev is None else min(max(int(frozen), 0), len(prev), out.shape[1])
    if d > 0:  # exact in env units: what will execute from the new chunk during the delay is the old plan itself
        out = out.clone()
        out[0, :d] = torch.as_tensor(np.asarray(prev[:d], np.float32), device=out.device)
    return out
