"""The sampling engine: one K-step loop from noise x_K to an action chunk x_0, for every policy family.

Every method is a chain x_{k+1} = mean_k(x_k) + std_k * z_k (k = 0 is the first step from noise). A family turns its
schedule into a `Grid` once (`diffusion_grid`, `flow_grid`): the network inputs of every evaluation and the per-step
update coefficients, as Python floats (eager arithmetic with no tensor allocation for constants) and as tensors (for
per-row steps, as DPPO needs). `grid_step` is the only update arithmetic; the slow differentiable path
(`step_log_prob`), the fast path (`run`) and the compiled / CUDA-graph paths (`accel.py`) all call it.

The fast path also precomputes the network's conditioning once per call (`net.condition`): the time embeddings of all
K grid points and the FiLM terms of the observation, so each step runs only the parts of the network that see x.

Shapes: B batch, K sampling steps, E network evaluations (K or 2K), H horizon, Da action dim, Dc conditioning dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Union

import torch

Step = Union[int, torch.Tensor]  # a grid step: one int for the batch, or (B,) long for per-row steps

DIFFUSION_METHODS = ("ddim", "ddpm")
FLOW_METHODS = ("euler", "heun", "midpoint", "shortcut", "adaptive")
TIME_SCALE = 1000.0  # flow networks see t*1000, the range their sinusoidal embedding was designed for


@dataclass
class Grid:
    """A sampler's precomputed schedule. Built once per (method, K); never changes during sampling."""

    method: str
    n_steps: int  # K
    evals_per_step: int  # 1, or 2 for heun / midpoint
    eval_t: list[float]  # (E,) network time input of each evaluation
    eval_d: Optional[list[float]]  # (E,) shortcut step-size input, None when the network has none
    coef: dict[str, list[float]]  # per-step update coefficients, (K,) each
    std: list[float]  # (K,) per-step noise std (0 for a deterministic step)
    renoise: tuple[list[float], list[float]]  # x_k = a[k] * data + b[k] * noise: the marginal at step k's input
    clip: float = 0.0  # clamp x0 predictions (diffusion)
    prediction: str = "epsilon"
    _tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def stochastic(self) -> bool:
        return any(s > 0 for s in self.std)

    def tensor(self, name: str, device: torch.device) -> torch.Tensor:
        """A per-step table as a float32 tensor on `device` (cached)."""
        key = f"{name}@{device}"
        if key not in self._tensors:
            tables = {"std": self.std, "eval_t": self.eval_t, "eval_d": self.eval_d, **self.coef}
            vals = tables.get(name)
            if vals is None:
                raise KeyError(f"grid '{self.method}' has no table '{name}'")
            self._tensors[key] = torch.tensor(vals, dtype=torch.float32, device=device)
        return self._tensors[key]

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "steps": self.n_steps}


# --- grids ---------------------------------------------------------------------------------------------------------
def diffusion_grid(alphas_cumprod: torch.Tensor, method: str, steps: int, spacing: str, eta: float,
                   prediction: str, clip: float) -> Grid:
    """DDPM / DDIM(eta) grid as diffusers builds it (set_alpha_to_one, fixed_small variance, x0 clipping)."""
    T, K = alphas_cumprod.shape[0], steps
    if spacing == "leading":
        ts = (torch.arange(K) * (T // K)).flip(0)  # (K,) descending, as diffusers
    else:  # trailing: the first step starts from pure noise at t = T-1
        ts = torch.round(torch.arange(T, 0, -T / K, dtype=torch.float64)).long() - 1
    prev = torch.cat([ts[1:], torch.tensor([-1])])  # -1 means "to data"
    ac = alphas_cumprod.double().cpu()
    a_t = ac[ts]
    a_prev = torch.where(prev >= 0, ac[prev.clamp_min(0)], torch.ones(()).double())
    sa, sb = a_t.sqrt(), (1 - a_t).sqrt()
    if prediction == "epsilon":  # x0 = (x - sb*out)/sa ; eps = out
        p_x, p_o, e_x, e_o = 1 / sa, -sb / sa, torch.zeros(K).double(), torch.ones(K).double()
    else:  # x0 = out ; eps = (x - sa*x0)/sb, from the unclipped x0 (as diffusers)
        p_x, p_o, e_x, e_o = torch.zeros(K).double(), torch.ones(K).double(), 1 / sb, -sa / sb
    if method == "ddim":
        var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = eta * var.sqrt()
        m_x0, m_eps, m_x = a_prev.sqrt(), (1 - a_prev - std**2).clamp_min(0).sqrt(), torch.zeros(K).double()
    elif method == "ddpm":  # posterior mean; no noise on the step to t=0
        beta = 1 - a_t / a_prev
        var = ((1 - a_prev) / (1 - a_t) * beta).clamp_min(1e-20)
        std = torch.where(ts > 0, var.sqrt(), torch.zeros(()).double())
        m_x0, m_eps, m_x = a_prev.sqrt() * beta / (1 - a_t), torch.zeros(K).double(), (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)
    else:
        raise ValueError(f"unknown diffusion sampler '{method}'; use one of {DIFFUSION_METHODS}")
    f = lambda v: v.to(torch.float32).tolist()  # noqa: E731  (the float32 values the network-side math uses)
    coef = {"p_x": f(p_x), "p_o": f(p_o), "e_x": f(e_x), "e_o": f(e_o), "m_x0": f(m_x0), "m_eps": f(m_eps), "m_x": f(m_x),
            "t": [float(t) for t in ts.tolist()]}
    return Grid(method, K, 1, [float(t) for t in ts.tolist()], None, coef, f(std), (f(sa), f(sb)), clip, prediction)


def flow_grid(method: str, steps: int, step_size_input: bool) -> Grid:
    """Uniform flow-time grid t_k = k/K (t=0 noise, t=1 data). `step_size_input`: the net takes a shortcut step d."""
    K = steps
    dt = 1.0 / K
    times = [k * dt for k in range(K)]
    if method in ("euler", "shortcut"):
        evals, eval_t = 1, [t * TIME_SCALE for t in times]
    elif method == "heun":  # second evaluation at the Euler end point
        evals, eval_t = 2, [v * TIME_SCALE for t in times for v in (t, t + dt)]
    elif method == "midpoint":
        evals, eval_t = 2, [v * TIME_SCALE for t in times for v in (t, t + dt / 2)]
    else:
        raise ValueError(f"unknown flow sampler '{method}'; use one of {FLOW_METHODS}")
    d = dt if method == "shortcut" else 0.0
    eval_d = [d * TIME_SCALE] * (K * evals) if step_size_input else None
    coef = {"dt": [dt] * K, "t": times}
    return Grid(method, K, evals, eval_t, eval_d, coef, [0.0] * K, (times, [1.0 - t for t in times]))


# --- denoisers: x -> network output at evaluation e of the grid -------------------------------------------------
class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, e: Step) -> torch.Tensor: ...


class NetDenoiser:
    """Calls the network as a whole at each evaluation (differentiable; any e, including per-row tensors)."""

    def __init__(self, net: torch.nn.Module, grid: Grid, cond: torch.Tensor) -> None:
        self.net, self.grid, self.cond = net, grid, cond

    def __call__(self, x: torch.Tensor, e: Step) -> torch.Tensor:
        b, g = x.shape[0], self.grid
        if isinstance(e, int):
            t = torch.full((b,), g.eval_t[e], device=x.device)
            d = torch.full((b,), g.eval_d[e], device=x.device) if g.eval_d is not None else None
        else:
            t = g.tensor("eval_t", x.device)[e]
            d = g.tensor("eval_d", x.device)[e] if g.eval_d is not None else None
        return self.net(x, t, self.cond) if d is None else self.net(x, t, self.cond, d)


class CachedDenoiser:
    """Precomputes the network's per-call conditioning (`net.condition`) and runs only the x path per step."""

    def __init__(self, net: torch.nn.Module, grid: Grid, cond: torch.Tensor) -> None:
        dev = cond.device
        t = grid.tensor("eval_t", dev)
        d = grid.tensor("eval_d", dev) if grid.eval_d is not None else None
        self.net, self.ctx = net, net.condition(t, d, cond)  # type: ignore[operator]

    def __call__(self, x: torch.Tensor, e: Step) -> torch.Tensor:
        return self.net.denoise(x, e, self.ctx)  # type: ignore[operator]


class SplitDenoiser:
    """Evaluations before `first` go to one network, the rest to another (DPPO's frozen / fine-tuned steps)."""

    def __init__(self, before: Denoiser, after: Denoiser, first: int) -> None:
        self.before, self.after, self.first = before, after, first

    def __call__(self, x: torch.Tensor, e: Step) -> torch.Tensor:
        if isinstance(e, int):
            return self.after(x, e) if e >= self.first else self.before(x, e)
        late = e >= self.first  # (B,)
        if bool(late.all()):
            return self.after(x, e)
        if not bool(late.any()):
            return self.before(x, e)
        return torch.where(late.view(-1, 1, 1), self.after(x, e), self.before(x, e))


def make_denoiser(net: torch.nn.Module, grid: Grid, cond: torch.Tensor, cached: bool = True) -> Denoiser:
    """The fast denoiser when the network supports it and the grid evaluates it more than once."""
    if cached and hasattr(net, "condition") and len(grid.eval_t) > 1:
        return CachedDenoiser(net, grid, cond)
    return NetDenoiser(net, grid, cond)


# --- the update arithmetic ----------------------------------------------------------------------------------------
def _c(grid: Grid, name: str, k: Step, x: torch.Tensor) -> Any:
    """Coefficient of step k: a float, or (B,1,1) for per-row steps."""
    if isinstance(k, int):
        return grid.coef[name][k]
    return grid.tensor(name, x.device)[k].view(-1, *([1] * (x.ndim - 1)))


def _lin(*terms: tuple[Any, Optional[torch.Tensor]]) -> torch.Tensor:
    """sum(c * v) skipping exact-zero float coefficients; one fused op per term where possible."""
    out: Optional[torch.Tensor] = None
    for c, v in terms:
        if v is None or (isinstance(c, float) and c == 0.0):
            continue
        if out is None:
            out = v if (isinstance(c, float) and c == 1.0) else v * c
        elif isinstance(c, float):
            out = torch.add(out, v, alpha=c)
        else:
            out = out + c * v
    assert out is not None
    return out


def grid_step(grid: Grid, k: Step, x: torch.Tensor, denoise: Denoiser) -> tuple[torch.Tensor, Any]:
    """One deterministic update of step k: x_k (B,H,Da) -> (mean (B,H,Da), std float or (B,1,1))."""
    m = grid.method
    std = grid.std[k] if isinstance(k, int) else grid.tensor("std", x.device)[k].view(-1, 1, 1)
    if m in DIFFUSION_METHODS:
        out = denoise(x, k)
        x0_raw = _lin((_c(grid, "p_x", k, x), x), (_c(grid, "p_o", k, x), out))
        eps = _lin((_c(grid, "e_x", k, x), x), (_c(grid, "e_o", k, x), out))
        x0 = x0_raw.clamp(-grid.clip, grid.clip) if grid.clip > 0 else x0_raw
        mean = _lin((_c(grid, "m_x0", k, x), x0), (_c(grid, "m_eps", k, x), eps), (_c(grid, "m_x", k, x), x))
        return mean, std
    dt = _c(grid, "dt", k, x)
    if m in ("euler", "shortcut"):
        return _lin((1.0, x), (dt, denoise(x, k))), std
    e = 2 * k
    v1 = denoise(x, e)
    if m == "heun":
        v2 = denoise(_lin((1.0, x), (dt, v1)), e + 1)
        half = dt * 0.5
        return _lin((1.0, x), (half, v1), (half, v2)), std
    v2 = denoise(_lin((1.0, x), (dt * 0.5, v1)), e + 1)  # midpoint
    return _lin((1.0, x), (dt, v2)), std


# --- the loop ------------------------------------------------------------------------------------------------------
@dataclass
class Chain:
    """A sampled chain. chain[:, 0] is the chain's start and chain[:, -1] the action chunk (normalised)."""

    chain: torch.Tensor  # (B, K'+1, H, Da), K' = K - start
    means: torch.Tensor  # (B, K', H, Da)
    stds: torch.Tensor  # (B, K', H, Da)
    grid: dict[str, Any] = field(default_factory=dict)  # method, steps, start, min_std: how to recompute log-probs
    steps: Optional[torch.Tensor] = None  # (K',) the grid index of each transition

    @property
    def actions(self) -> torch.Tensor:
        return self.chain[:, -1]


def draw_step_noise(grid: Grid, x: torch.Tensor, generator: Optional[torch.Generator], start: int = 0,
                    min_std: float = 0.0) -> Optional[torch.Tensor]:
    """All per-step draws (K,B,H,Da) in one call, so eager and compiled paths consume a generator identically."""
    if not (grid.stochastic or min_std > 0):
        return None
    return torch.randn((grid.n_steps - start, *x.shape), generator=generator, device=x.device, dtype=x.dtype)


def run(grid: Grid, denoise: Denoiser, x: torch.Tensor, step_noise: Optional[torch.Tensor] = None,
        keep_chain: bool = False, start: int = 0, min_std: float = 0.0) -> Union[torch.Tensor, Chain]:
    """Run steps start..K-1 from x (B,H,Da). `step_noise` (K-start,B,H,Da) holds the draws of the noisy steps.

    `min_std` floors every step's std for sampling (DPPO explores with it); log-probs must use the same floor.
    Returns the final sample, or a Chain when keep_chain is set.
    """
    xs, means, stds = [x], [], []
    for k in range(start, grid.n_steps):
        mean, std = grid_step(grid, k, x, denoise)
        if min_std > 0:
            std = max(std, min_std)
        if std > 0:
            assert step_noise is not None, "a stochastic step needs step_noise (see draw_step_noise)"
            x = torch.add(mean, step_noise[k - start], alpha=std)
        else:
            x = mean
        if keep_chain:
            xs.append(x)
            means.append(mean)
            stds.append(std)
    if not keep_chain:
        return x
    n = len(means)
    std_t = torch.tensor(stds, dtype=x.dtype, device=x.device).view(1, n, *([1] * (x.ndim - 1)))
    return Chain(chain=torch.stack(xs, 1), means=torch.stack(means, 1),
                 stds=std_t.expand(x.shape[0], n, *x.shape[1:]).clone(),
                 grid={**grid.describe(), "start": start, "min_std": min_std},
                 steps=torch.arange(start, grid.n_steps, device=x.device))


def run_adaptive(velocity: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, tol: float,
                 max_steps: int) -> dict[str, torch.Tensor]:
    """Error-controlled Euler integration of a flow from t=0 to 1, per row (in the spirit of AdaFlow).

    Each attempt from (x, t) with step h evaluates v at the Euler end point; the local error estimate is
    h/2 * rms(v_end - v_start) (Euler against Heun). A row accepts when it is below `tol` (or h is already the
    smallest step, 1/max_steps); either way the next h is the step that would just meet `tol`, within [h/5, 2h]. Rows whose action distribution is narrow have straight flows and
    finish in one step (two evaluations). FSAL: an accepted end velocity is the next start velocity.
    `velocity(x (b,H,Da), t (b,), rows (b,)) -> (b,H,Da)` for the subset `rows` of the batch still integrating. Returns {'x': (B,H,Da), 'nfe': (B,) evaluations per row}.
    """
    b, dev = x.shape[0], x.device
    h_min = 1.0 / max_steps
    t = torch.zeros(b, device=dev)
    h = torch.ones(b, device=dev)
    nfe = torch.ones(b, dtype=torch.long, device=dev)
    v = velocity(x, t, torch.arange(b, device=dev))
    active = torch.ones(b, dtype=torch.bool, device=dev)
    # each accept advances >= h_min (or ends the row); between accepts at most log2(max_steps)+1 rejects
    for _ in range(max_steps * (math.ceil(math.log2(max_steps)) + 2) + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa, ta, ha, va = x[idx], t[idx], torch.minimum(h[idx], 1.0 - t[idx]), v[idx]
        x_end = xa + ha.view(-1, 1, 1) * va
        t_end = torch.where(ha >= 1.0 - ta - 1e-6, torch.ones_like(ta), ta + ha)
        v_end = velocity(x_end, t_end, idx)
        nfe[idx] += 1
        err = 0.5 * ha * (v_end - va).pow(2).flatten(1).mean(1).sqrt()
        ok = (err <= tol) | (ha <= h_min + 1e-9)
        x[idx] = torch.where(ok.view(-1, 1, 1), x_end, xa)
        v[idx] = torch.where(ok.view(-1, 1, 1), v_end, va)
        t[idx] = torch.where(ok, t_end, ta)
        # first-order error ~ h^2: the step that would just meet tol, with a safety factor and growth limits
        factor = (0.9 * (tol / err.clamp_min(1e-12)).sqrt()).clamp(0.2, 2.0)
        factor = torch.where(ok, factor, factor.clamp_max(0.5))  # a reject at least halves h: bounded retries
        h[idx] = (ha * factor).clamp_min(h_min)
        active[idx] = t[idx] < 1.0 - 1e-6
    if bool(active.any()):  # unreachable by the bound above; never return a half-integrated chunk silently
        raise RuntimeError("adaptive sampler did not reach t=1")
    return {"x": x, "nfe": nfe}


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2)."""
    var = std * std
    return -0.5 * ((x - mean) ** 2 / var + torch.log(2 * torch.pi * var))


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))
