"""Crash-safe episode recording: every finished episode lands on disk as a complete LeRobot v3 dataset.

After each episode the recorder (1) rewrites `episodes.zarr` (our replay format, atomic) and (2) re-exports all
episodes to a fresh LeRobot v3 directory beside `dataset/` and swaps it in (fsync + rename, the old copy removed only
after the swap). A crash at any point leaves the previous complete dataset in place; only the episode in progress is
lost. Re-exporting costs O(total frames) per episode, which is small for deployment sessions (seconds for thousands
of state frames); recording for hours would want LeRobot's incremental writer with its own finalize.

Columns: observation.state, observation.images.<cam>, action (the command actually sent, after the safety filter),
plus policy_action (the policy's proposal; 0 where none), policy_valid, safety.held, safety.clamped (one flag per
filter stage: nonfinite, position, delta, velocity, workspace), timing.lateness_ms and timing.t (s since start),
intervention (bool in the LeRobot dataset, as LeRobot's own recordings: true on ticks where the teleoperator had
control; float 0/1 in episodes.zarr) and source (who commanded the frame: 0 policy,
1 teleop: LeRobot v3 extra features are numeric, so the codes are named in teleop.SOURCE_NAMES and in the attrs
`source_codes` of episodes.zarr). Every frame of a deployment without a teleoperator is intervention 0, source 0.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from genpolicy.datasets.replay_buffer import ReplayBuffer
from genpolicy.fsutil import replace_dir, temp_sibling
from genpolicy.real_robot.teleop import SOURCE_NAMES, SOURCE_POLICY, SOURCE_TELEOP

EXTRA_KEYS = ("policy_action", "policy_valid", "safety.held", "safety.clamped", "timing.lateness_ms", "timing.t",
              "intervention", "source")


class EpisodeRecorder:
    def __init__(self, out_dir: str | Path, fps: float, task: str, meta: dict[str, Any] | None = None) -> None:
        """`meta`: how the episodes were produced (e.g. {"execution": {...}}), stored in the journal's attrs and as
        the dataset's meta/genpolicy.json."""
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.fps, self.task = float(fps), task
        self.meta = json.loads(json.dumps(meta or {}, default=float))
        self.episodes: list[dict[str, np.ndarray]] = []
        self.infos: list[dict[str, Any]] = []
        journal = self.out / "episodes.zarr"
        if journal.exists():  # an interrupted deploy: keep what was recorded, append after it
            rb = ReplayBuffer.load(journal)
            self.episodes = [rb.episode(i) for i in range(rb.n_episodes)]
            for ep in self.episodes:  # recorded before the teleop columns existed: every frame was the policy's
                n = len(ep["action"])
                ep.setdefault("intervention", np.zeros(n, np.float32))
                ep.setdefault("source", np.full(n, SOURCE_POLICY, np.float32))
            self.infos = list(rb.attrs.get("episodes", []))

    @property
    def next_episode(self) -> int:
        """The number the next episode gets: one past the highest recorded (0 for a new recording)."""
        nums = [int(i["episode"]) for i in self.infos if isinstance(i.get("episode"), (int, float))]
        return max(nums, default=len(self.episodes) - 1) + 1

    @property
    def dataset_dir(self) -> Path:
        return self.out / "dataset"

    def add(self, frames: dict[str, list], info: dict[str, Any]) -> None:
        """Store one finished episode (the controller's `EpisodeReport.frames`) and publish the dataset."""
        if not frames["action"]:
            return
        policy = np.asarray(frames["policy_action"], np.float32)
        valid = np.isfinite(policy).all(axis=1)
        ep = {"state": np.asarray(frames["state"], np.float32), "action": np.asarray(frames["action"], np.float32),
              "policy_action": np.where(valid[:, None], policy, 0.0).astype(np.float32),
              "policy_valid": valid.astype(np.float32), "safety.held": np.asarray(frames["held"], np.float32),
              "safety.clamped": np.asarray(frames["clamped"], np.float32),
              "timing.lateness_ms": np.asarray(frames["lateness_ms"], np.float32),
              "timing.t": np.asarray(frames["t"], np.float32)}
        n = len(frames["action"])
        flags = np.asarray(frames.get("intervention") or [0.0] * n, np.float32)
        ep["intervention"] = flags
        ep["source"] = np.where(flags > 0, SOURCE_TELEOP, SOURCE_POLICY).astype(np.float32)
        for k, v in frames.items():
            if k.startswith("image."):
                ep[k] = np.asarray(v, np.uint8)
        self.episodes.append(ep)
        self.infos.append(json.loads(json.dumps(info, default=float)))
        self._publish()

    def _publish(self) -> None:
        import logging

        from datasets.utils.logging import disable_progress_bar


        disable_progress_bar()  # the HF datasets "Map" bars would interleave with the deploy progress bar
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ledataset warns on every load that torchcodec is absent (PyAV is used)
        try:
            self._write()
        finally:
            root.setLevel(level)

    def _write(self) -> None:
        from genpolicy.datasets.lerobot import export_arrays

        rb = ReplayBuffer.from_episodes(self.episodes, attrs={"fps": self.fps, "task": self.task, "episodes": self.infos,
                                                              "source": "genpolicy deploy", **self.meta,
                                                              "source_codes": {str(k): v for k, v in SOURCE_NAMES.items()}})
        rb.save(self.out / "episodes.zarr")
        tmp = temp_sibling(self.dataset_dir)
        try:
            data = dict(rb.data)
            data["intervention"] = np.asarray(data["intervention"]) > 0.5  # a bool feature, as LeRobot's own
            with warnings.catch_warnings():  # ledataset's stats warn that they histogram bools as uint8
                warnings.filterwarnings("ignore", message="Converting input from bool")
                export_arrays(data, rb.episode_ends, tmp, fps=self.fps, repo_id="local/genpolicy-deploy",
                              task=self.task, extra_keys=EXTRA_KEYS, image_writer_threads=0)
            (tmp / "meta").mkdir(parents=True, exist_ok=True)
            (tmp / "meta" / "genpolicy.json").write_text(json.dumps({"source": "genpolicy deploy", "task": self.task,
                                                                      "fps": self.fps, **self.meta}, indent=2))
            replace_dir(tmp, self.dataset_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
