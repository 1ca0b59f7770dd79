"""Deployment corrections as offline data for DSRL/EXPO: intervention segments as demonstrations, the RLIF takeover
penalty on exactly the chunks that contain a takeover, the same result from the LeRobot v3 copy, and the penalty
rows reaching the fine-tuning batches."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from genpolicy.errors import ConfigError, DataError
from genpolicy.finetune.interventions import intervention_transitions
from genpolicy.real_robot.recorder import EpisodeRecorder

# two recorded episodes: (intervention flags, success)
EP0 = ([0] * 5 + [1] * 6 + [0] * 5 + [1] * 4, True)  # takeovers at 5 and 16; ends under intervention, succeeds
EP1 = ([1] * 3 + [0] * 9, False)  # starts under intervention (a takeover at 0); fails


def _record(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rec = EpisodeRecorder(root, 10.0, "toy/bimodal")
    states, actions = [], []
    for i, (flags, success) in enumerate((EP0, EP1)):
        n = len(flags)
        s = np.stack([np.arange(n) + 100 * i, -np.arange(n)], 1).astype(np.float32) / 100  # frame id in the state
        a = np.stack([np.linspace(-1, 1, n), np.full(n, 0.1 * i)], 1).astype(np.float32)
        frames = {"state": list(s), "action": list(a), "policy_action": list(a), "held": [0.0] * n,
                  "clamped": [np.zeros(5)] * n, "lateness_ms": [0.0] * n, "t": list(np.arange(n) / 10.0),
                  "intervention": [float(f) for f in flags]}
        rec.add(frames, {"episode": i, "success": success})
        states.append(s)
        actions.append(a)
    return root, np.concatenate(states), np.concatenate(actions)


def _ident(x: torch.Tensor) -> torch.Tensor:
    return x


def test_corrections_as_demonstrations_keep_only_intervention_segments(tmp_path: Path) -> None:
    root, states, actions = _record(tmp_path / "deploy")
    b = intervention_transitions(str(root), 1, 4, 4, _ident)
    # segments: ep0 [5, 11) and [16, 20), ep1 [20, 23) in global frames; chunks every 4 frames inside each
    starts = [5, 9, 16, 20]
    np.testing.assert_array_equal(b["obs"][:, 0].numpy(), states[starts])
    ends = {5: 11, 9: 11, 16: 20, 20: 23}
    for i, t in enumerate(starts):  # H actions from t, padded with the segment's last action (never beyond it)
        idx = np.minimum(np.arange(t, t + 4), ends[t] - 1)
        np.testing.assert_array_equal(b["action"][i].numpy(), actions[idx])
    # only the segment that ends its successful episode is terminal with reward 1; nothing is penalised
    np.testing.assert_array_equal(b["reward"].numpy(), [0, 0, 1, 0])
    np.testing.assert_array_equal(b["terminated"].numpy(), [0, 0, 1, 0])


def test_rlif_penalises_exactly_the_takeover_chunks(tmp_path: Path) -> None:
    root, states, _ = _record(tmp_path / "deploy")
    b = intervention_transitions(str(root), 2, 4, 4, _ident, rlif=True, rlif_penalty=0.5)
    # every frame: ep0 chunks at 0, 4, 8, 12, 16 and ep1 at 20, 24, 28 (global frames)
    starts = [0, 4, 8, 12, 16, 20, 24, 28]
    np.testing.assert_array_equal(b["obs"][:, -1].numpy(), states[starts])
    # takeovers at 5 (chunk 4), 16 (chunk 16, also the successful last chunk: 1 - 0.5) and ep1's start (chunk 20)
    np.testing.assert_allclose(b["reward"].numpy(), [0, -0.5, 0, 0, 0.5, -0.5, 0, 0])
    np.testing.assert_array_equal(b["terminated"].numpy(), [0, 0, 0, 0, 1, 0, 0, 0])
    # the LeRobot v3 copy gives the same transitions and penalties (it stores no success flag: no terminal reward)
    lr = intervention_transitions(str(root / "dataset"), 2, 4, 4, _ident, rlif=True, rlif_penalty=0.5)
    for k in ("obs", "next_obs", "action"):
        np.testing.assert_array_equal(lr[k].numpy(), b[k].numpy())
    np.testing.assert_allclose(lr["reward"].numpy(), [0, -0.5, 0, 0, -0.5, -0.5, 0, 0])


def test_rlif_refuses_data_without_flags(tmp_path: Path) -> None:
    from genpolicy.datasets.replay_buffer import ReplayBuffer

    ReplayBuffer.from_episodes([{"state": np.zeros((5, 2), np.float32), "action": np.zeros((5, 2), np.float32)}]).save(
        tmp_path / "dagger.zarr")
    assert len(intervention_transitions(str(tmp_path / "dagger.zarr"), 1, 4, 4, _ident)["reward"]) == 2
    with pytest.raises(DataError, match="no intervention flags"):
        intervention_transitions(str(tmp_path / "dagger.zarr"), 1, 4, 4, _ident, rlif=True)
    from genpolicy.config import OffPolicyConfig

    with pytest.raises(ConfigError, match="rlif=true needs"):
        OffPolicyConfig(rlif=True)


@pytest.mark.parametrize("algo", ["dsrl", "expo"])
def test_intervention_rows_reach_the_finetuning_batches(tmp_path: Path, monkeypatch, algo: str) -> None:
    import genpolicy.finetune.offpolicy as op
    from genpolicy.cli import compose
    from genpolicy.config import FinetuneConfig
    from genpolicy.dagger import run_dagger
    from tests.test_dagger import _cfg

    ckpt = run_dagger(_cfg(tmp_path / "bc", rounds=0))["final_checkpoint"]  # a tiny toy BC policy
    root, _, _ = _record(tmp_path / "deploy")
    seen = []
    real = op.mixed_batch

    def spy(online, offline, n, ratio, gen):
        batch = real(online, offline, n, ratio, gen)
        seen.append(batch["reward"].clone())
        return batch

    monkeypatch.setattr(op, "mixed_batch", spy)
    extra = ["dsrl.variant=na"] if algo == "dsrl" else []
    cfg = compose("finetune", [f"algo={algo}", f"ckpt={ckpt}", "task=toy/bimodal", "preset=toy",
                               f"run.dir={tmp_path / 'ft'}", "run.progress=false", "offpolicy.env_steps=160",
                               "offpolicy.warmup_env_steps=0", "offpolicy.n_envs=2", "offpolicy.batch_size=64",
                               "offpolicy.offline_ratio=0.5", f"offpolicy.interventions={root}", "offpolicy.rlif=true",
                               "offpolicy.rlif_penalty=0.5", "eval.n_episodes=1", "eval.every=0", *extra],
                  FinetuneConfig)
    op.finetune_offpolicy(cfg)
    rewards = torch.cat(seen)
    assert len(seen) > 0 and bool((rewards == -0.5).any())  # the takeover penalty is learned from
    if algo == "dsrl":  # the SAC variant mixes no offline data: the corrections are refused, not ignored
        sac = dataclasses.replace(cfg, dsrl=dataclasses.replace(cfg.dsrl, variant="sac"),
                                  run=dataclasses.replace(cfg.run, dir=str(tmp_path / "sac")))
        with pytest.raises(ConfigError, match="offpolicy.interventions needs offline mixing"):
            op.finetune_offpolicy(sac)
