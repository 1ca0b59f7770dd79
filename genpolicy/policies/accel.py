"""Accelerated sampling paths: CUDA-graph replay on a GPU, torch.compile on a CPU, one cache in front of both.

A `BucketedSampler` keeps one built sampler per key (batch bucket, grid, device, dtype). Batches are padded up to the
next power of two, so a rollout whose live env count shrinks does not rebuild for every size. Each built sampler owns
static input and output buffers; a call copies its inputs in, replays, and returns a *copy* of the output, so a later
call never overwrites an earlier result (the classic CUDA-graph aliasing bug).

Three kinds share this front end:
- `cuda_graph`: the whole K-step loop captured once per key (after warm-up on a side stream) and replayed;
  optional fp16/bf16 autocast inside the graph.
- `compiled`: the same loop through torch.compile (inductor, static shapes); the CPU path.
- `static`: the CPU twin of `cuda_graph` with the same static buffers and build/replay protocol, running the eager
  loop. Tests use it to check the bucketing, buffer reuse and re-capture logic without a GPU.

Weights are read at replay time (captured graphs point at the parameter storage), so in-place optimiser updates
are seen; replacing a parameter tensor object requires `reset()`.

Shapes: B batch, Bp padded batch, K steps, H horizon, Da action dim, Dc conditioning dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch._dynamo

from genpolicy.policies.samplers import Grid, next_pow2, run

KINDS = ("compiled", "cuda_graph", "static")


def _loop(policy: Any, grid: Grid, cond: torch.Tensor, noise: torch.Tensor,
          step_noise: Optional[torch.Tensor]) -> torch.Tensor:
    return run(grid, policy.make_denoiser(cond), noise, step_noise)  # type: ignore[return-value]


@dataclass
class _Built:
    fn: Callable[[], torch.Tensor]  # runs the loop on the static buffers and returns the static output
    cond: torch.Tensor  # (Bp, Dc) static input
    noise: torch.Tensor  # (Bp, H, Da)
    step_noise: Optional[torch.Tensor]  # (K, Bp, H, Da)
    out: Optional[torch.Tensor] = None  # static output (cuda_graph: written by every replay)


class BucketedSampler:
    """Callable (cond (B,Dc), noise (B,H,Da), step_noise (K,B,H,Da)|None) -> actions (B,H,Da) on the policy's grid."""

    def __init__(self, policy: Any, kind: str, dtype: Optional[torch.dtype] = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown accelerated sampler kind '{kind}'; use one of {KINDS}")
        if kind == "cuda_graph" and policy.device.type != "cuda":
            raise RuntimeError("backend=cuda_graph needs the policy on a CUDA device; use backend=compiled or eager")
        self.policy, self.kind, self.dtype = policy, kind, dtype
        self.builds = 0  # how many samplers were built (captured / compiled); tests read it
        self._cache: dict[tuple, _Built] = {}

    def reset(self) -> None:
        self._cache.clear()

    def key(self, batch: int, device: torch.device) -> tuple:
        g = self.policy.grid
        return (next_pow2(batch), g.method, g.n_steps, tuple(g.eval_t), tuple(g.std), str(device), self.dtype)

    def __call__(self, cond: torch.Tensor, noise: torch.Tensor, step_noise: Optional[torch.Tensor]) -> torch.Tensor:
        b = cond.shape[0]
        key = self.key(b, cond.device)
        built = self._cache.get(key)
        if built is None:
            built = self._build(key[0], cond, noise, step_noise)
            self._cache[key] = built
            self.builds += 1
        with torch.inference_mode():
            built.cond[:b].copy_(cond)
            built.noise[:b].copy_(noise)
            if step_noise is not None:
                assert built.step_noise is not None
                built.step_noise[:, :b].copy_(step_noise)
            out = built.fn()
        return out[:b].clone()

    def _build(self, bp: int, cond: torch.Tensor, noise: torch.Tensor, step_noise: Optional[torch.Tensor]) -> _Built:
        def padded(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
            # pad rows repeat row 0: valid inputs, so padded rows cannot produce inf/NaN that would trip anything
            reps = [1] * x.ndim
            reps[dim] = bp - x.shape[dim]
            first = x.narrow(dim, 0, 1).repeat(*reps)
            return torch.cat([x, first], dim=dim).clone() if reps[dim] > 0 else x.clone()

        with torch.inference_mode():
            built = _Built(fn=lambda: torch.empty(0), cond=padded(cond), noise=padded(noise),
                           step_noise=padded(step_noise, 1) if step_noise is not None else None)
        policy, grid = self.policy, self.policy.grid
        for name in ("eval_t", "eval_d"):  # materialise the grid tables outside any trace or capture
            if name == "eval_t" or grid.eval_d is not None:
                grid.tensor(name, cond.device)

        def body() -> torch.Tensor:
            return _loop(policy, grid, built.cond, built.noise, built.step_noise)

        if self.kind == "static":
            def fn_static() -> torch.Tensor:
                out = body()
                if built.out is None:
                    built.out = torch.empty_like(out)
                built.out.copy_(out)  # the static output buffer, as a captured graph would write it
                return built.out
            built.fn = fn_static
        elif self.kind == "compiled":
            # one compiled variant per key; the default limit (8) would silently fall back to eager
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            compiled = torch.compile(_loop, dynamic=False)
            built.fn = lambda: compiled(policy, grid, built.cond, built.noise, built.step_noise)
        else:
            built.fn = self._capture(body, built)
        return built

    def _capture(self, body: Callable[[], torch.Tensor], built: _Built) -> Callable[[], torch.Tensor]:
        dtype = self.dtype

        def cast_body() -> torch.Tensor:
            if dtype is None or dtype == torch.float32:
                return body()
            with torch.autocast("cuda", dtype=dtype, cache_enabled=False):  # required inside graph capture
                return body().float()

        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: lazy inits and allocator pools happen outside the capture
                for _ in range(3):
                    cast_body()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                built.out = cast_body()

        def replay() -> torch.Tensor:
            graph.replay()
            assert built.out is not None
            return built.out

        return replay
