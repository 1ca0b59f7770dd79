"""Fine-tuning is exact: a run interrupted at an iteration boundary and resumed ends bit-identical to the same run
uninterrupted (policy, critics, noise nets, targets, optimisers, replay, reward scaler, RNGs, episodes in flight), and
a fine-tuned checkpoint reloaded as `genpolicy eval` loads it draws the same actions, from the same noise, as the
policy object at the end of fine-tuning. All five algorithms, on the toy task."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from genpolicy.cli import compose
from genpolicy.config import FinetuneConfig
from genpolicy.finetune.ppo import finetune
from genpolicy.training import runs
from genpolicy.training.checkpoint import load_policy

TOY = "toy/bimodal-right"
SMALL = {  # short budgets: a few iterations, checkpoints every iteration, updates before the interruption
    "dppo": ["ppo.iterations=4", "ppo.n_envs=8", "ppo.n_steps=6", "dppo.ft_steps=3"],
    "fpo": ["ppo.iterations=4", "ppo.n_envs=8", "ppo.n_steps=6"],
    "reinflow": ["ppo.iterations=4", "ppo.n_envs=8", "ppo.n_steps=6", "ppo.reward_offset=-0.1"],  # running returns non-zero at the cut
    "dsrl": ["offpolicy.env_steps=640", "offpolicy.warmup_env_steps=240", "offpolicy.n_envs=4", "dsrl.variant=na"],
    "expo": ["offpolicy.env_steps=640", "offpolicy.warmup_env_steps=240", "offpolicy.n_envs=4",
             "offpolicy.batch_size=64"],
}
FAMILY = {"dppo": "diffusion", "fpo": "flow", "reinflow": "flow", "dsrl": "flow", "expo": "flow"}


def _cfg(algo: str, ckpt: Path, run_dir: Path, *extra: str) -> FinetuneConfig:
    return compose("finetune", [f"algo={algo}", f"ckpt={ckpt}", f"task={TOY}", "preset=toy", f"run.dir={run_dir}",
                                "run.progress=false", "run.ckpt_every=1", "eval.every=2", "eval.n_episodes=8",
                                *SMALL[algo], *extra], FinetuneConfig)


def _strip(x: Any) -> Any:
    """A trainer state without wall-clock times (the only thing allowed to differ)."""
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items()
                if "wallclock" not in k and not k.startswith("time/") and k != "test_curve"}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "trainer.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys(), name
        diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not diff, f"{name}: {len(diff)} tensors differ, e.g. {diff[:4]}"
    meta = [json.loads(p.read_text()) for p in (a / "trainer.json", b / "trainer.json")]
    assert _strip(meta[0]) == _strip(meta[1])


@pytest.mark.parametrize("algo", ["dppo", "fpo", "reinflow", "dsrl", "expo"])
def test_resume_is_exact_and_eval_draws_what_was_tuned(toy_bc_ckpts, tmp_path, monkeypatch, algo) -> None:
    ckpt = toy_bc_ckpts[FAMILY[algo]]
    tuned: list[Any] = []
    # the uninterrupted on-policy runs also take held-out test points; they must not change training (RNG forked).
    # (The off-policy loop calls the same TestPoints; its 100-episode steered evaluations are left out for time.)
    tested = algo in ("dppo", "fpo", "reinflow")
    extra = ("test.episodes=100", "test.fractions=[0.5,1.0]") if tested else ()
    whole = finetune(_cfg(algo, ckpt, tmp_path / "whole", *extra), on_end=tuned.append)
    n_iters = whole["curve"][-1]["iteration"]
    if tested:
        from genpolicy.protocol import test_seeds

        assert [(p["fraction"], p["iteration"], p["test_episodes"], p["carried"]) for p in whole["test_curve"]] == \
            [(0.5, -(-n_iters // 2), 100, False), (1.0, n_iters, 100, False)]
        test_eps = json.loads((tmp_path / "whole" / "eval" / "test_1" / "eval.json").read_text())["episodes"]
        assert sorted(e["seed"] for e in test_eps) == list(test_seeds(100))  # the protocol's held-out episodes
    cut = n_iters // 2 + 1  # an iteration boundary after learning has started (off-policy: past the warm-up)

    real_log = runs.MetricsLogger.log

    def interrupt(self, step: int, metrics: dict) -> None:  # SIGINT as a user would send it, at the boundary `cut`
        real_log(self, step, metrics)
        if step == cut:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(runs.MetricsLogger, "log", interrupt)
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(algo, ckpt, tmp_path / "cut"))
    monkeypatch.setattr(runs.MetricsLogger, "log", real_log)
    assert (tmp_path / "cut" / "checkpoints" / f"it_{cut:06d}").exists()
    resumed = finetune(_cfg(algo, ckpt, tmp_path / "cut", "run.resume=true"))
    assert _strip(resumed["curve"]) == _strip(whole["curve"])
    _assert_same_checkpoint(Path(whole["final_checkpoint"]), Path(resumed["final_checkpoint"]))

    # evaluation equals what was tuned: the reloaded checkpoint (as `genpolicy eval` loads it) vs the live object
    live, loaded = tuned[0], load_policy(whole["final_checkpoint"])
    obs = {"state": torch.linspace(-1, 1, 24).view(12, 1, 2)}
    for seed in (0, 1):
        a = live.predict_chunk(obs, generator=torch.Generator().manual_seed(seed))
        b = loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a, b), (algo, (a - b).abs().max())
