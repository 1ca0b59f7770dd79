"""The evaluation protocol of every learning result: seed splits, budgets, config diffs, statistics and rows.

Rules (the learning-results issue): demonstrations, *selection* (early stopping, "best" checkpoints; at most 20
episodes) and *test* (at least 100 episodes no decision ever sees) use disjoint episode seeds, and every success in a
table is test success; one preset per suite, each row storing its config diff against the library defaults; budgets
in env steps fixed per suite, test success reported at fixed fractions of them; at least 3 seeds per cell, aggregated
as IQM with stratified-bootstrap 95% CIs (rliable's estimators, see `aggregate`) and performance profiles; the start
checkpoint from zero and from random initial noise on the same test episodes; a weak start qualifies only if both lie
in [0.1, 0.6].
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from genpolicy.errors import ConfigError, DataError

MAX_SELECTION_EPISODES = 20
MIN_TEST_EPISODES = 100
SPLIT_EPISODES = {"selection": MAX_SELECTION_EPISODES, "test": MIN_TEST_EPISODES}  # each split's default size
BUDGET_FRACTIONS = (0.25, 0.5, 1.0)
BASELINES = ("bc_zero_noise", "bc_random_noise", "bc_2x_demos", "bc_5x_demos")
PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "preset"


@dataclass(frozen=True)
class SeedRanges:
    """Episode seeds `[start, stop)` per use. Besides the protocol's three, the ranges already in use elsewhere are
    listed so that nothing overlaps them: `legacy_eval` is `EvalConfig.seed`'s 100000.. (today's BC "best" checkpoints
    were chosen there, so test episodes must avoid it) and `finetune_rollouts` covers the training envs of
    finetune/ppo.py (10_000_000 + 1_000_000 * seed) and finetune/offpolicy.py (20_000_000 + 1_000_000 * seed)."""

    demos: range = range(0, 100_000)  # generate(seed=s): s, s+1, ... (benchmarks use 777 and 1000 * seed)
    legacy_eval: range = range(100_000, 1_000_000)
    selection: range = range(1_000_000, 2_000_000)
    test: range = range(2_000_000, 3_000_000)
    finetune_rollouts: range = range(10_000_000, 1_000_000_000)

    def __post_init__(self) -> None:
        check_disjoint(self.as_dict())

    def as_dict(self) -> dict[str, range]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def check_disjoint(ranges: dict[str, range]) -> None:
    """Raise ConfigError naming the first two ranges that share a seed."""
    items = sorted(ranges.items(), key=lambda kv: kv[1].start)
    for (a, ra), (b, rb) in zip(items, items[1:]):
        if rb.start < ra.stop:
            raise ConfigError(f"seed ranges '{a}' [{ra.start}, {ra.stop}) and '{b}' [{rb.start}, {rb.stop}) overlap")


SEEDS = SeedRanges()


def selection_seeds(n: int = MAX_SELECTION_EPISODES) -> range:
    if not 1 <= n <= MAX_SELECTION_EPISODES:
        raise ConfigError(f"the selection split has 1 to {MAX_SELECTION_EPISODES} episodes, got {n}")
    return range(SEEDS.selection.start, SEEDS.selection.start + n)


def test_seeds(n: int = MIN_TEST_EPISODES) -> range:
    if not MIN_TEST_EPISODES <= n <= len(SEEDS.test):
        raise ConfigError(f"the test split has at least {MIN_TEST_EPISODES} episodes, got {n}")
    return range(SEEDS.test.start, SEEDS.test.start + n)


test_seeds.__test__ = False  # type: ignore[attr-defined]  # a seed helper, not a pytest test


def split_seeds(split: str, n: Optional[int] = None) -> range:
    """The episode seeds of `split` ("selection" or "test"); n defaults to the split's protocol size."""
    if split not in SPLIT_EPISODES:
        raise ConfigError(f"eval split must be one of {tuple(SPLIT_EPISODES)}, got '{split}'")
    n = SPLIT_EPISODES[split] if n is None else n
    return selection_seeds(n) if split == "selection" else test_seeds(n)


def start_policy(policy: Any, noise: str, **sampler: Any) -> Any:
    """The start checkpoint as fine-tuning starts from it (no warm start), sampling from zero or unit random noise.
    `sampler` (e.g. sampler="shortcut", steps=1) evaluates it under the sampler an algorithm fine-tunes on."""
    from genpolicy.finetune.ppo import policy_for_finetuning  # lazy: the fine-tuning stack is heavy and will import us

    if noise not in ("zero", "random"):
        raise ConfigError(f"noise must be 'zero' or 'random', got '{noise}'")
    return policy_for_finetuning(policy, "eval", policy.cfg.type, policy.device,
                                 init_noise_scale=0.0 if noise == "zero" else 1.0, **sampler).eval()


def evaluate_split(policy: Any, task: str, split: str = "test", n_episodes: Optional[int] = None,
                   noise: str = "policy", noise_seed: Optional[int] = None, sampler: Optional[dict] = None,
                   **kw: Any) -> dict[str, Any]:
    """`training.evaluate.evaluate` on the split's episodes. noise="policy" samples as the policy is configured;
    "zero"/"random" evaluate `start_policy` (the start baselines) under `sampler` changes if given. kw goes to
    `evaluate` (n_envs, out_dir, ...)."""
    from genpolicy.training.evaluate import evaluate

    seeds = split_seeds(split, n_episodes)
    pol = policy if noise == "policy" else start_policy(policy, noise, **(sampler or {}))
    kw.setdefault("progress", False)
    res = evaluate(pol, task, n_episodes=len(seeds), seed=seeds.start, noise_seed=noise_seed, **kw)
    res.update(split=split, noise=noise)
    if kw.get("out_dir") is not None:  # evaluate wrote eval.json before it knew the split
        (Path(kw["out_dir"]) / "eval.json").write_text(json.dumps(res, indent=2))
    return res


@dataclass
class StartBaselines:
    """The start checkpoint's test success and return from zero and from random initial noise (same episodes)."""

    success_zero_noise: float
    success_random_noise: float
    return_zero_noise: float
    return_random_noise: float
    test_episodes: int

    @property
    def qualifies(self) -> bool:
        return weak_start_qualifies(self.success_zero_noise, self.success_random_noise)


def start_baselines(policy: Any, task: str, n_episodes: int = MIN_TEST_EPISODES, **kw: Any) -> StartBaselines:
    zero, rand = (evaluate_split(policy, task, "test", n_episodes, noise=n, **kw) for n in ("zero", "random"))
    return StartBaselines(zero["success_rate"], rand["success_rate"], zero["mean_return"], rand["mean_return"],
                          zero["n_episodes"])


def weak_start_qualifies(zero: float, random: float, lo: float = 0.1, hi: float = 0.6) -> bool:
    """A weak start must leave room both ways from either kind of initial noise: lo <= success <= hi for both."""
    if not 0.0 <= lo < hi <= 1.0:
        raise ConfigError(f"need 0 <= lo < hi <= 1, got lo={lo}, hi={hi}")
    return lo <= zero <= hi and lo <= random <= hi


def budget_points(budget: int, fractions: tuple[float, ...] = BUDGET_FRACTIONS) -> list[int]:
    """Env steps at which test success is reported: the same for on- and off-policy rows of one budget."""
    if budget < 1 or not fractions or list(fractions) != sorted(set(fractions)) or not 0 < fractions[0] \
            or fractions[-1] != 1.0:
        raise ConfigError(f"need budget >= 1 and increasing fractions in (0, 1] ending at 1, got {budget}, {fractions}")
    points = [round(budget * f) for f in fractions]
    if points[0] < 1 or len(set(points)) != len(points):
        raise ConfigError(f"budget {budget} is too small for the points {fractions}")
    return points


def config_diff(cfg: Any, default: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> values of `cfg` where it differs from `default` (nested config dataclasses, compared by field)."""
    if type(cfg) is not type(default) or not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"config_diff compares two configs of one dataclass, got {type(cfg).__name__} and "
                          f"{type(default).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        a, b = getattr(cfg, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(a) and type(a) is type(b):
            out.update(config_diff(a, b, f"{prefix}{f.name}."))
        elif a != b:
            out[prefix + f.name] = list(a) if isinstance(a, tuple) else a  # JSON has no tuples
    return out


# ---- statistics: rliable's estimators (IQM = 25% trimmed mean over all runs and tasks; bootstrap resampling runs
# within each task; percentile CIs), in numpy: rliable 1.2.0 itself does not import next to pandas 3 (it pins
# arch<8, and arch 7.2 fails on pandas 3; arch 8 refuses rliable's random_state=None). Checked against rliable
# (patched to run on arch 8): equal point estimates and profiles, CIs within bootstrap noise.

def iqm(scores: np.ndarray) -> float:
    """Mean of the middle 50% of all runs: int(n / 4) cut from each end, as scipy's trim_mean(0.25) in rliable."""
    x = np.sort(np.asarray(scores, float).ravel())
    cut = int(0.25 * x.size)
    return float(x[cut:x.size - cut].mean())


def bootstrap(scores: np.ndarray, stat: Callable[[np.ndarray], Any], reps: int = 2000, seed: int = 0) -> np.ndarray:
    """`stat` over `reps` stratified resamples of a (n_seeds, n_tasks) array: each task's runs are redrawn with
    replacement from that task's own runs, so every resample keeps every task (rliable's `StratifiedBootstrap`)."""
    n, m = scores.shape
    idx = np.random.default_rng(seed).integers(0, n, size=(reps, n, m))
    return np.stack([np.asarray(stat(s)) for s in scores[idx, np.arange(m)]])


def _check_scores(name: str, s: Any, min_seeds: int) -> np.ndarray:
    s = np.asarray(s, float)
    if s.ndim != 2 or s.shape[0] < min_seeds or s.shape[1] < 1 or not np.all(np.isfinite(s)):
        raise DataError(f"{name}: scores must be a finite (n_seeds >= {min_seeds}, n_tasks) array, got shape {s.shape}")
    return s


@dataclass
class Aggregate:
    iqm: float
    iqm_ci: tuple[float, float]
    mean: float
    mean_ci: tuple[float, float]
    n_seeds: int
    n_tasks: int


def aggregate(scores: dict[str, np.ndarray], reps: int = 2000, ci: float = 0.95, seed: int = 0,
              min_seeds: int = 3) -> dict[str, Aggregate]:
    """Per algorithm: IQM and mean of a (n_seeds, n_tasks) score array, each with a stratified-bootstrap CI."""
    q = 100 * np.array([(1 - ci) / 2, (1 + ci) / 2])
    out = {}
    for name, s in scores.items():
        s = _check_scores(name, s, min_seeds)
        boot = bootstrap(s, lambda x: [iqm(x), x.mean()], reps, seed)
        lo, hi = np.percentile(boot, q, axis=0)
        out[name] = Aggregate(iqm(s), (float(lo[0]), float(hi[0])), float(s.mean()), (float(lo[1]), float(hi[1])),
                              s.shape[0], s.shape[1])
    return out


@dataclass
class Profile:
    taus: list[float]
    fraction: list[float]  # fraction of runs (seeds x tasks) with score > tau
    lo: list[float]
    hi: list[float]


def performance_profile(scores: dict[str, np.ndarray], taus: Optional[np.ndarray] = None, reps: int = 2000,
                        ci: float = 0.95, seed: int = 0, min_seeds: int = 3) -> dict[str, Profile]:
    """rliable's run-score distribution: P(score > tau) over all runs, with stratified-bootstrap CIs."""
    taus = np.linspace(0, 1, 21) if taus is None else np.asarray(taus, float)
    frac = lambda x: (x.reshape(-1, 1) > taus).mean(axis=0)  # noqa: E731
    out = {}
    for name, s in scores.items():
        s = _check_scores(name, s, min_seeds)
        lo, hi = np.percentile(bootstrap(s, frac, reps, seed), 100 * np.array([(1 - ci) / 2, (1 + ci) / 2]), axis=0)
        out[name] = Profile(taus.tolist(), frac(s).tolist(), lo.tolist(), hi.tolist())
    return out


def plot_aggregates(aggs: dict[str, Aggregate], profiles: dict[str, Profile], path: str | Path, title: str = "") -> Path:
    """IQM bars with their CIs beside the performance profiles with CI bands (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(aggs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.5 * len(names) + 3))
    y = np.arange(len(names))
    vals = np.array([aggs[n].iqm for n in names])
    err = np.array([[aggs[n].iqm - aggs[n].iqm_ci[0], aggs[n].iqm_ci[1] - aggs[n].iqm] for n in names]).T
    ax1.barh(y, vals, xerr=err, capsize=4, color=[f"C{i}" for i in range(len(names))], alpha=0.7)
    ax1.set_yticks(y, names)
    ax1.set_xlim(0, 1)
    ax1.set_xlabel("IQM test success (95% stratified-bootstrap CI)")
    for i, n in enumerate(names):  # one colour per algorithm in both panels
        p = profiles[n]
        ax2.plot(p.taus, p.fraction, color=f"C{i}", label=n)
        ax2.fill_between(p.taus, p.lo, p.hi, color=f"C{i}", alpha=0.15)
    ax2.set_xlabel("test success threshold tau")
    ax2.set_ylabel("fraction of runs with success > tau")
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- result rows and the report

def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise DataError(msg)


@dataclass
class LearningRow:
    """One algorithm (or baseline), task, number of demos and seed. Every success is on the test split."""

    algo: str
    task: str
    n_demos: int
    seed: int
    preset: str
    config_diff: dict[str, Any]
    env_steps_budget: int
    test_episodes: int
    test_success: float
    test_curve: list[list[float]]  # [env_steps, test_success] at budget_points(env_steps_budget); [] for baselines
    test_return: float
    start_test_return: float
    start_test_success_zero_noise: float
    start_test_success_random_noise: float
    wallclock_s: float
    variant: str = ""  # other settings than the preset's, under a name (part of the key)
    extra: dict[str, Any] = field(default_factory=dict)  # any further keys, kept at the top level of the JSON row

    def __post_init__(self) -> None:
        from genpolicy.config import OFFPOLICY_ALGOS, ONPOLICY_ALGOS

        algos = ONPOLICY_ALGOS + OFFPOLICY_ALGOS + BASELINES
        _check(self.algo in algos, f"row algo must be one of {algos}, got '{self.algo}'")
        _check("/" in self.task and self.n_demos >= 1 and self.seed >= 0,
               f"row needs a task <suite>/<name>, n_demos >= 1 and seed >= 0, got {self.task!r}, {self.n_demos}, {self.seed}")
        _check(self.preset in available_presets(), f"row preset '{self.preset}' is not one of {available_presets()}")
        _check(isinstance(self.config_diff, dict), "row config_diff must be a dict")
        _check(self.env_steps_budget >= 1 and self.test_episodes >= MIN_TEST_EPISODES,
               f"row needs env_steps_budget >= 1 and test_episodes >= {MIN_TEST_EPISODES}, got "
               f"{self.env_steps_budget}, {self.test_episodes}")
        rates = [self.test_success, self.start_test_success_zero_noise, self.start_test_success_random_noise]
        _check(all(0.0 <= r <= 1.0 for r in rates), f"row success rates must be in [0, 1], got {rates}")
        self.test_curve = [[int(s), float(v)] for s, v in self.test_curve]
        if self.algo not in BASELINES or self.test_curve:  # the same points for every algorithm of one budget
            steps = [s for s, _ in self.test_curve]
            _check(steps == budget_points(self.env_steps_budget),
                   f"{self.algo} row: test_curve env steps {steps} must be {budget_points(self.env_steps_budget)}")
            _check(self.test_curve[-1][1] == self.test_success, "row test_success must be the curve's last point")

    @property
    def key(self) -> tuple[str, str, int, int, str]:
        return self.algo, self.task, self.n_demos, self.seed, self.variant

    @property
    def name(self) -> str:
        return self.algo + (f" [{self.variant}]" if self.variant else "")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d.pop("extra"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LearningRow":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})


def versions() -> dict[str, str]:
    import importlib.metadata as md

    import genpolicy

    out = {"python": platform.python_version(), "genpolicy": genpolicy.__version__}
    for pkg in ("torch", "numpy", "mujoco", "metaworld", "robosuite"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "-"
    return out


def _meta(old: dict[str, Any], command: Optional[str]) -> dict[str, Any]:
    """Machine, versions, the protocol's seeds and every command that wrote the file."""
    import torch

    cmds = list(old.get("commands", []))
    cmd = command if command is not None else " ".join([Path(sys.executable).name, *sys.argv])
    if cmd not in cmds:
        cmds.append(cmd)
    seeds = {k: [r.start, r.stop] for k, r in SEEDS.as_dict().items()}
    return {**old, "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "versions": versions(), "seed_ranges": seeds,
            "test_seeds_start": SEEDS.test.start, "selection_max_episodes": MAX_SELECTION_EPISODES,
            "budget_fractions": list(BUDGET_FRACTIONS), "commands": cmds}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def load_rows(json_path: str | Path) -> list[LearningRow]:
    p = Path(json_path)
    return [LearningRow.from_dict(r) for r in json.loads(p.read_text())["rows"]] if p.exists() else []


def row_done(json_path: str | Path, key: tuple) -> bool:
    """Whether a row with this (algo, task, n_demos, seed, variant) is already stored: a rerun skips it."""
    return any(r.key == tuple(key) for r in load_rows(json_path))


def append_row(json_path: str | Path, row: LearningRow, command: Optional[str] = None) -> bool:
    """Add `row` unless its key is already there (returns False then). Under a file lock (workers share the file),
    written to a temporary file and renamed, so an interrupted write leaves the previous file whole."""
    js = Path(json_path)
    js.parent.mkdir(parents=True, exist_ok=True)
    with open(js.with_name(js.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(js.read_text()) if js.exists() else {"rows": []}
        if any(LearningRow.from_dict(r).key == row.key for r in data["rows"]):
            return False
        data["rows"].append(row.to_dict())
        data["meta"] = _meta(data.get("meta", {}), command)
        _write_atomic(js, json.dumps(data, indent=2))
    return True


def append_dict_rows(json_path: str | Path, rows: list[dict], key: Callable[[dict], tuple],
                     meta_extra: Optional[dict] = None) -> int:
    """Plain-dict rows (tables that are not `LearningRow`s, e.g. BC cells): add those whose `key` is new, under the
    file lock and atomically, with the machine, versions and command in `meta`. Returns how many were added."""
    js = Path(json_path)
    js.parent.mkdir(parents=True, exist_ok=True)
    with open(js.with_name(js.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(js.read_text()) if js.exists() else {"rows": []}
        have = {key(r) for r in data["rows"]}
        new = [r for r in rows if key(r) not in have]
        data["rows"] += new
        data["meta"] = {**_meta(data.get("meta", {}), None), **(meta_extra or {})}
        _write_atomic(js, json.dumps(data, indent=2))
    return len(new)


def resume_or_restart(run_dir: str | Path, overrides: list[str], stamp_name: str = "row_overrides.json") -> bool:
    """Whether a row's run directory resumes: only when it was started with exactly these overrides (budget included,
    so a row is never lengthened) and holds a checkpoint. Anything else is removed and started over, stamped with
    `overrides`. Fine-tuning resumes exactly (weights, optimisers, every generator, episodes in flight)."""
    run_dir = Path(run_dir)
    stamp = run_dir / stamp_name
    ckpts = run_dir / "checkpoints"
    if stamp.exists() and json.loads(stamp.read_text()) == list(overrides) and ckpts.is_dir() and any(ckpts.glob("it_*")):
        return True
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    _write_atomic(stamp, json.dumps(list(overrides)))
    return False


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def _at(r: "LearningRow", i: int, points: list[int]) -> str:
    """" (at 64k)" when the row's i-th test point ran more than 2% away from its budget point: a run tests at the end
    of the first iteration that reaches the point, and an on-policy iteration is ~16k env steps, so its points can
    sit past the label (this favours it; the table says by how much). Rows without the run's points show nothing."""
    pts = r.extra.get("test_points") or []
    if i >= len(pts) or "env_steps" not in pts[i] or i >= len(points):
        return ""
    actual = int(pts[i]["env_steps"])
    return f" (at {actual / 1000:.0f}k)" if abs(actual - points[i]) > 0.02 * points[i] else ""


def _ci(a: Aggregate) -> str:
    return f"{a.iqm:.2f} [{a.iqm_ci[0]:.2f}, {a.iqm_ci[1]:.2f}]"


def target_lines(rs: list[LearningRow], points: list[int], reps: int = 2000, gain: float = 0.3) -> list[str]:
    """The issue's targets on one task, from the rows as they stand: each algorithm's IQM gain over the better start
    baseline (zero or random noise; met when IQM >= baseline + `gain` and the CI's lower bound is above the baseline),
    and the first fixed budget point at which its IQM reaches baseline + `gain` (the same points for every algorithm,
    so on- and off-policy are compared at equal evaluation points). Cells with fewer than 3 seeds are pending."""
    base = {r.algo: r.test_success for r in rs if r.algo in ("bc_zero_noise", "bc_random_noise")}
    if not base:
        return []
    b = max(base.values())
    out = [f"Targets (better start baseline {b:.2f}; +{gain:.2f} = {b + gain:.2f}):", "",
           f"| algo | seeds | IQM at full budget [95% CI] | gain | met (+{gain:.2f}, CI low > baseline) | "
           f"first point with IQM >= {b + gain:.2f} |", "|---|---|---|---|---|---|"]
    for name in sorted({r.name for r in rs if r.algo not in BASELINES}):
        by = [r for r in rs if r.name == name]
        if len(by) < 3:
            out.append(f"| {name} | {len(by)} | pending (fewer than 3 seeds) | - | - | - |")
            continue
        a = aggregate({name: np.array([[r.test_success] for r in by])}, reps)[name]
        curves = np.array([[v for _, v in r.test_curve] for r in by if len(r.test_curve) == len(points)])
        first = next((p for i, p in enumerate(points) if len(curves) and iqm(curves[:, i]) >= b + gain), None)
        met = a.iqm >= b + gain and a.iqm_ci[0] > b
        out.append(f"| {name} | {len(by)} | {_ci(a)} | {a.iqm - b:+.2f} | {'yes' if met else 'no'} | "
                   f"{first if first is not None else 'not reached'} |")
    return out + [""]


def write_report(rows: list[LearningRow], md_path: str | Path, command: Optional[str] = None,
                 title: str = "Learning results", reps: int = 2000) -> list[Path]:
    """The markdown table per task (each seed's test success at every budget point, the start baselines, IQM with
    CI per algorithm and demos), its JSON twin (`<md>.json`: rows + meta) and, with >= 3 seeds, the IQM/profile
    plot. Returns the paths written."""
    md = Path(md_path)
    md.parent.mkdir(parents=True, exist_ok=True)
    n_test = sorted({r.test_episodes for r in rows})
    lines = [f"# {title}", "",
             f"**Every success rate below is test success: {', '.join(map(str, n_test)) or '-'} held-out test episodes "
             f"(seeds {SEEDS.test.start}, {SEEDS.test.start + 1}, ...), the same for every row and baseline, and used by "
             f"no decision** (early stopping and checkpoint choice use at most {MAX_SELECTION_EPISODES} selection "
             f"episodes, seeds {SEEDS.selection.start}..., disjoint from the demonstrations' and the test seeds). "
             f"Start = the start checkpoint from zero / random initial noise; a weak start qualifies only if both are "
             f"in [0.1, 0.6]. IQM: interquartile mean over seeds with a 95% stratified-bootstrap CI ({reps} resamples). "
             f"A run is tested at the end of the first iteration that reaches each budget point; \"(at 64k)\" marks a "
             f"test that ran more than 2% past its point (on-policy iterations are ~16k env steps).",
             ""]
    written = [md]
    # a preset's diff is long: the table names each distinct diff, listed once at the end
    diffs = list(dict.fromkeys(json.dumps(r.config_diff, sort_keys=True) for r in rows))
    for task in sorted({r.task for r in rows}):
        rs = sorted((r for r in rows if r.task == task), key=lambda r: (r.n_demos, r.algo in BASELINES, r.name, r.seed))
        budgets = {r.env_steps_budget for r in rs if r.algo not in BASELINES}
        n_eps = {r.test_episodes for r in rs}
        if len(budgets) > 1 or len(n_eps) > 1:
            raise DataError(f"{task}: rows with different budgets {sorted(budgets)} or test episodes {sorted(n_eps)}; "
                            f"a suite's budget is fixed before running and every row uses the same test episodes")
        budget, n_eps = (budgets.pop() if budgets else rs[0].env_steps_budget), n_eps.pop()
        points = budget_points(budget)
        lines += [f"## {task}: budget {budget} env steps; test success on {n_eps} held-out test episodes", "",
                  "| algo | demos | seed | preset | start sampler | start zero noise | start random noise | weak start | "
                  + " | ".join(f"test success @ {p}" for p in points) + " | test return | wall s | config diff |",
                  "|---" * (11 + len(points)) + "|"]
        for r in rs:
            curve = [v for _, v in r.test_curve] if r.test_curve else [None] * (len(points) - 1) + [r.test_success]
            cells_txt = [_fmt(v) + _at(r, i, points) for i, v in enumerate(curve)]
            diff = f"D{diffs.index(json.dumps(r.config_diff, sort_keys=True)) + 1}"
            weak = "yes" if weak_start_qualifies(r.start_test_success_zero_noise, r.start_test_success_random_noise) else "no"
            sampler = r.extra.get("start_sampler", "-") + ("" if r.extra.get("start_within_0.1", True) else " (differs > 0.1)")
            lines.append(f"| {r.name} | {r.n_demos} | {r.seed} | {r.preset} | {sampler} | {r.start_test_success_zero_noise:.2f} | "
                         f"{r.start_test_success_random_noise:.2f} | {weak} | " + " | ".join(cells_txt)
                         + f" | {r.test_return:.2f} | {r.wallclock_s:.0f} | {diff} |")
        cells: dict[tuple[str, int], dict[int, float]] = {}
        for r in rs:
            cells.setdefault((r.name, r.n_demos), {})[r.seed] = r.test_success
        lines += ["", f"IQM of test success at the full budget ({n_eps} held-out test episodes per seed):", "",
                  "| algo | demos | seeds | IQM [95% CI] | mean |", "|---|---|---|---|---|"]
        for (name, demos), by_seed in cells.items():
            s = np.array(list(by_seed.values()))[:, None]
            agg = _ci(aggregate({name: s}, reps)[name]) if len(s) >= 3 else "fewer than 3 seeds"
            lines.append(f"| {name} | {demos} | {','.join(map(str, by_seed))} | {agg} | {s.mean():.2f} |")
        lines += [""] + target_lines(rs, points, reps)
    # across tasks: each algorithm on the tasks every algorithm ran, on the seeds it ran on all of them
    # (the tasks of the widest-covering algorithms; one still running on fewer tasks is left out and named)
    cover = {n: {r.task for r in rows if (r.name, r.n_demos) == n} for n in {(r.name, r.n_demos) for r in rows}}
    widest = max((len(t) for t in cover.values()), default=0)
    tasks = sorted(set.intersection(*(t for t in cover.values() if len(t) == widest))) if cover else []
    names = {n for n, t in cover.items() if set(tasks) <= t}
    left_out = sorted(f"{n} (d{d})" for n, d in set(cover) - names)
    scores = {}
    for name, demos in sorted(names):
        per = [{r.seed: r.test_success for r in rows if (r.name, r.n_demos, r.task) == (name, demos, t)} for t in tasks]
        seeds = sorted(set.intersection(*(set(p) for p in per))) if per else []
        if len(seeds) >= 3:
            scores[f"{name} (d{demos})"] = np.array([[p[s] for p in per] for s in seeds])
    aggs = aggregate(scores, reps)
    if scores and len(tasks) > 1:
        lines += [f"## Across tasks ({', '.join(tasks)}): test success at the full budget", "",
                  "| algo | seeds x tasks | IQM [95% CI] | mean [95% CI] |", "|---|---|---|---|"]
        lines += [f"| {n} | {a.n_seeds} x {a.n_tasks} | {_ci(a)} | {a.mean:.2f} [{a.mean_ci[0]:.2f}, {a.mean_ci[1]:.2f}] |"
                  for n, a in aggs.items()]
        lines += ([f"Not yet on all of these tasks: {', '.join(left_out)}.", ""] if left_out else [""])
    lines += ["## Config diffs against the library defaults (complete, resolved)", ""]
    lines += [f"- D{i + 1}: " + (", ".join(f"`{k}={v}`" for k, v in json.loads(d).items()) or "(library defaults)")
              for i, d in enumerate(diffs)] + [""]
    if scores:
        png = md.with_suffix(".png")
        plot_aggregates(aggs, performance_profile(scores, reps=reps), png,
                        f"test success at the full budget (held-out test episodes), tasks: {', '.join(tasks)}")
        lines += [f"![IQM and performance profiles]({png.name})", ""]
        written.append(png)
    md.write_text("\n".join(lines))
    js = md.with_suffix(".json")
    old = json.loads(js.read_text()).get("meta", {}) if js.exists() else {}
    _write_atomic(js, json.dumps({"meta": _meta(old, command), "rows": [r.to_dict() for r in rows]}, indent=2))
    written.insert(1, js)
    return written
