"""What the on-policy (ppo.py) and off-policy (offpolicy.py) fine-tuning loops share: loading the start checkpoint,
building the env set, resuming at an iteration boundary, and rotating checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from genpolicy.errors import ConfigError, DataError
from genpolicy.finetune.rollout import ChunkEnvs, VecChunkEnv


def load_start(cfg: Any) -> dict[str, Any]:
    """Threads, device and seed from cfg.run; the BC checkpoint and its task. Returns {device, source, task, bc}."""
    from genpolicy.training.checkpoint import load_policy, read_config
    from genpolicy.training.runs import resolve_device

    if not cfg.ckpt:
        raise ConfigError("finetune needs a BC checkpoint: genpolicy finetune algo=... ckpt=runs/<run>/checkpoints/best")
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    torch.manual_seed(cfg.run.seed)
    source = read_config(cfg.ckpt)
    task = cfg.task.name or source.get("task", {}).get("name", "")
    if not task:
        raise ConfigError(f"{cfg.ckpt}: the checkpoint does not name its task; pass task=<suite/name>")
    bc = load_policy(cfg.ckpt, use_ema=cfg.use_ema, device=device)
    from genpolicy.finetune.pixels import check_cameras

    check_cameras(cfg.ckpt, task, bc.shape.cameras)  # a state-only task or other cameras: refused, keys named
    if not bc.shape.cameras and cfg.encoder_mode != "frozen":
        raise ConfigError(f"encoder_mode={cfg.encoder_mode} applies to camera checkpoints; {cfg.ckpt} is a "
                          "state policy (use encoder_mode=frozen)")
    return {"device": device, "source": source, "task": task, "bc": bc}


def make_venv(cfg: Any, task: str, policy: Any, n_envs: int, seed: int) -> ChunkEnvs:
    """The training envs, checked against the policy's dims. Batched torch-native tasks (isaaclab*) run as one
    `TorchVecChunkEnv` on the run's device; the others as a `VecChunkEnv` in this process (rollout.backend=local) or
    over Ray actors (rollout.backend=ray)."""
    from genpolicy.envs.registry import is_batched_task

    To, Ta, mes = policy.cfg.n_obs_steps, policy.cfg.n_action_steps, cfg.task.max_episode_steps
    images = bool(policy.shape.cameras)
    if images and (is_batched_task(task) or cfg.rollout.backend != "local"):
        raise ConfigError(f"camera policies fine-tune with rollout.backend=local on gym-style tasks (got "
                          f"rollout.backend={cfg.rollout.backend}, task '{task}')")
    if is_batched_task(task):
        if cfg.rollout.backend != "local":
            raise ConfigError(f"task '{task}' is a batched simulator that steps all its envs in one process; "
                              f"rollout.backend={cfg.rollout.backend} applies to gym-style tasks (use rollout.backend=local)")
        from genpolicy.finetune.torch_rollout import make_torch_venv

        venv: ChunkEnvs = make_torch_venv(task, n_envs, To, Ta, seed=seed, device=policy.device, max_episode_steps=mes)
    elif cfg.rollout.backend == "ray":
        from genpolicy.finetune.ray_rollout import RaySlices

        runner = RaySlices(task, list(range(seed, seed + n_envs)), To, Ta, mes, workers=cfg.rollout.workers,
                           address=cfg.rollout.address)
        venv = VecChunkEnv(task, n_envs, To, Ta, seed=seed, max_episode_steps=mes, runner=runner)
    else:  # camera policies see frames of the size they were trained on, rendered on demand (envs/wrappers.py)
        venv = VecChunkEnv(task, n_envs, To, Ta, seed=seed, max_episode_steps=mes, images=images,
                           image_size=policy.shape.image_size if images else 0)
    if venv.spec.action_dim != policy.shape.action_dim or venv.spec.state_dim != policy.shape.state_dim:
        raise DataError(f"task '{task}' has state/action dims ({venv.spec.state_dim}, {venv.spec.action_dim}) but "
                        f"{cfg.ckpt} expects ({policy.shape.state_dim}, {policy.shape.action_dim})")
    return venv


def restore_or_refuse(cfg: Any, run_dir: Path, policy: Any, modules: dict, optimizers: dict,
                      gens: dict[str, torch.Generator], venv: ChunkEnvs) -> Optional[dict[str, Any]]:
    """With run.resume: load the latest it_* checkpoint, restore RNGs (the global one and `gens`) and the envs'
    episodes in flight, return its trainer state.
    Without: refuse a run dir that already holds checkpoints (never overwrite a run). Returns None on a fresh run."""
    from genpolicy.training.checkpoint import load_finetune_state

    ckpt_root = run_dir / "checkpoints"
    latest = max(ckpt_root.glob("it_*"), default=None) if ckpt_root.exists() else None
    if not cfg.run.resume:
        if latest is not None:
            raise ConfigError(f"{run_dir}: already holds fine-tuning checkpoints; continue with run.resume=true or "
                              "choose a new run.dir")
        return None
    if latest is None:
        raise ConfigError(f"{run_dir}: run.resume=true but no checkpoint under {ckpt_root}")
    st = load_finetune_state(latest, policy, modules, optimizers)
    missing = [k for k in gens if k not in st.get("generators", {})]
    if missing or "envs" not in st:
        raise ConfigError(f"{latest}: trainer state lacks {missing or ['envs']} (written by an older version); "
                          "start a new run.dir")
    for k, g in gens.items():
        g.set_state(torch.tensor(st["generators"][k], dtype=torch.uint8))
    torch.set_rng_state(torch.tensor(st["torch_rng"], dtype=torch.uint8))
    # resume at the iteration boundary: the episodes in flight are rebuilt where they were (VecChunkEnv replays them)
    venv.restore(st["envs"])
    return st


def rng_state(gens: dict[str, torch.Generator], venv: ChunkEnvs) -> dict[str, Any]:
    """The part of the trainer state that `restore_or_refuse` puts back."""
    return {"generators": {k: g.get_state().tolist() for k, g in gens.items()},
            "torch_rng": torch.get_rng_state().tolist(), "envs": venv.state()}


def save_rotating(run_dir: Path, it: int, policy: Any, saved_cfg: dict, state: dict, modules: dict,
                  optimizers: dict, keep: int = 2) -> Path:
    """checkpoints/it_XXXXXX (atomic), then delete all but the newest `keep`."""
    from genpolicy.training.checkpoint import save_checkpoint

    ckpt_root = run_dir / "checkpoints"
    path = save_checkpoint(ckpt_root / f"it_{it:06d}", policy, saved_cfg, it, trainer_state=state, modules=modules,
                           optimizers=optimizers)
    for old in sorted(ckpt_root.glob("it_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


class TestPoints:
    """Test-set evaluations at fixed fractions of a run's iterations (`cfg.test`): at the end of iteration
    ceil(f * n_iters) for each fraction f. The RNG streams are forked around each evaluation, so a run with test points
    trains exactly as one without; the loop never reads the results (no decision sees the test set). A run that stops
    early is its final policy at the points it did not reach (`carried`)."""

    def __init__(self, cfg: Any, task: str, n_iters: int, budget_env_steps: int, run_dir: Path,
                 done: Optional[list[dict[str, Any]]] = None) -> None:
        import math

        self.cfg, self.task, self.run_dir, self.budget = cfg, task, run_dir, budget_env_steps
        fr = cfg.test.fractions
        self.points = [(f, max(1, math.ceil(f * n_iters))) for f in fr] if cfg.test.episodes else []
        self.curve: list[dict[str, Any]] = list(done or [])

    def _eval(self, policy: Any, f: float, it: int, env_steps: int, carried: bool) -> None:
        from genpolicy.protocol import evaluate_split

        with torch.random.fork_rng():
            ev = evaluate_split(policy, self.task, "test", self.cfg.test.episodes, n_envs=self.cfg.eval.n_envs,
                                out_dir=self.run_dir / "eval" / f"test_{f:g}",
                                max_episode_steps=self.cfg.task.max_episode_steps)
        self.curve.append({"fraction": f, "budget_env_steps": round(f * self.budget), "iteration": it,
                           "env_steps": env_steps, "test_success": ev["success_rate"],
                           "test_return": ev["mean_return"], "test_episodes": ev["n_episodes"], "carried": carried})

    def after_iteration(self, policy: Any, it: int, env_steps: int) -> None:
        """Call with the number of iterations finished."""
        for f, at in self.points[len(self.curve):]:
            if at == it:
                self._eval(policy, f, it, env_steps, carried=False)

    def finish(self, policy: Any, it: int, env_steps: int) -> list[dict[str, Any]]:
        for f, _ in self.points[len(self.curve):]:  # stopped early: the final policy stands for the rest
            self._eval(policy, f, it, env_steps, carried=True)
        return self.curve
