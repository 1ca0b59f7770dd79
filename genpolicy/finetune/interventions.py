"""Deployment corrections as offline data for DSRL / EXPO (offpolicy.interventions=<path>[,<path>...]).

Inputs: what `genpolicy deploy teleop=...` recorded (the run directory, its episodes.zarr, or its LeRobot v3
`dataset` directory; every frame has `intervention` 0/1) or a `genpolicy dagger` data store (no flags: every frame
is a teacher frame, i.e. an intervention). The recorded `action` is the command actually sent (after the safety
filter) whoever sent it, so (window, executed chunk, next window) transitions are valid off-policy data.

Two uses (offpolicy.rlif):
  * rlif=false - corrections as demonstrations: only the intervention segments, each a separate episode (windows
    never span a hand-back), reward 1 and terminated on the last chunk of a segment that ended its episode with
    success (like demonstrations), else 0;
  * rlif=true  - RLIF (Luo et al., ICLR 2024): every frame, with reward -rlif_penalty on the chunk whose executed
    steps contain a takeover (a policy frame followed by an intervention frame, or an episode starting under
    intervention), plus the success reward as above. The takeover is the signal: the policy should avoid the
    states where a person takes over. Intervention segments themselves carry no penalty.

Shapes: Ds state dim, Da action dim, To n_obs_steps, H horizon, Ta n_action_steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from genpolicy.datasets.replay_buffer import ReplayBuffer
from genpolicy.errors import DataError


def load_recorded(path: str | Path) -> tuple[ReplayBuffer, np.ndarray | None, list[bool]]:
    """(buffer with state/action, per-frame intervention flags (N,) bool or None when the data has none (dagger
    stores: every frame is the teacher's), per-episode success)."""
    p = Path(path)
    if (p / "episodes.zarr").exists():
        p = p / "episodes.zarr"
    if (p / "meta" / "info.json").exists():  # a LeRobot v3 directory: frames in (episode, frame) order
        import pyarrow.parquet as pq

        from genpolicy.datasets.lerobot import import_lerobot

        rb = import_lerobot(p)
        table = pq.read_table(sorted((p / "data").glob("*/*.parquet"))).to_pydict()
        if "intervention" not in table:
            raise DataError(f"{p}: LeRobot dataset has no 'intervention' column (record it with genpolicy deploy teleop=...)")
        order = np.lexsort((table["frame_index"], table["episode_index"]))
        flags = np.asarray(table["intervention"], np.float32).reshape(len(order), -1)[order, 0] > 0.5
        return rb, flags, [False] * rb.n_episodes  # LeRobot episodes carry no success flag of ours
    if not p.exists():
        raise DataError(f"{path}: no such intervention dataset (a deploy run dir, its episodes.zarr or dataset/, or a "
                        f"dagger data.zarr)")
    rb = ReplayBuffer.load(p)
    flags = np.asarray(rb.data["intervention"] > 0.5, bool).reshape(-1) if "intervention" in rb.data else None
    infos = rb.attrs.get("episodes", [])
    success = [bool(i.get("success", False)) if isinstance(i, dict) else False for i in infos]
    success += [False] * (rb.n_episodes - len(success))
    return rb, flags, success


def _chunks(states: np.ndarray, actions: np.ndarray, s: int, e: int, to: int, h: int, ta: int):
    """Chunk transitions at stride Ta inside frames [s, e): (t, obs window, next window, H actions, is_last)."""
    for t in range(s, e, ta):
        win = np.clip(np.arange(t - to + 1, t + 1), s, e - 1)
        t2 = t + ta
        win2 = np.clip(np.arange(t2 - to + 1, t2 + 1), s, e - 1)
        yield t, states[win], states[win2], actions[np.clip(np.arange(t, t + h), s, e - 1)], t2 >= e


def intervention_transitions(paths: str, n_obs_steps: int, horizon: int, n_action_steps: int,
                             normalize: Callable[[torch.Tensor], torch.Tensor], rlif: bool = False,
                             rlif_penalty: float = 1.0) -> dict[str, torch.Tensor]:
    """Chunk transitions (obs (M,To,Ds), next_obs, action (M,H,Da) normalised, reward (M,), terminated (M,))."""
    obs, nxt, act, rew, term = [], [], [], [], []
    for path in [x for x in str(paths).split(",") if x.strip()]:
        rb, flags, success = load_recorded(path.strip())
        if flags is None:
            if rlif:
                raise DataError(f"{path}: no intervention flags (a dagger store?); offpolicy.rlif needs a recording "
                                "of `genpolicy deploy teleop=...`")
            flags = np.ones(rb.n_steps, bool)
        states, actions = rb.data["state"].astype(np.float32), rb.data["action"].astype(np.float32)
        start = 0
        for ep, end in enumerate(rb.episode_ends.tolist()):
            f = flags[start:end]
            if rlif:
                # takeover frames: an intervention frame whose predecessor (in this episode) was the policy's
                takeover = f & ~np.concatenate([[False], f[:-1]])
                spans = [(start, end)]
            else:
                edges = np.flatnonzero(np.diff(np.concatenate([[0], f.astype(np.int8), [0]])))
                spans = [(start + a, start + b) for a, b in zip(edges[::2], edges[1::2])]
            for s, e in spans:
                for t, o, o2, a, last in _chunks(states, actions, s, e, n_obs_steps, horizon, n_action_steps):
                    done = last and e == end and success[ep]
                    r = float(done)
                    if rlif and takeover[t - start: min(t + n_action_steps, end) - start].any():
                        r -= rlif_penalty
                    obs.append(o)
                    nxt.append(o2)
                    act.append(a)
                    rew.append(r)
                    term.append(float(done))
            start = end
    if not rew:
        raise DataError(f"offpolicy.interventions={paths}: no intervention frames to learn from")
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return {"obs": t(obs), "next_obs": t(nxt), "action": normalize(t(act)).clamp(-1.0, 1.0), "reward": t(rew),
            "terminated": t(term)}

