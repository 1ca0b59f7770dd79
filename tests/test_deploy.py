"""Policy server and deploy end to end on real sockets: serve a trained checkpoint, deploy it on the simulated robot,
kill the server mid-episode, send it malformed/oversized/unauthenticated frames, crash the recorder."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from genpolicy.config import ControllerConfig, DeployConfig, RobotConfig, RunConfig, SafetyConfig, ServeConfig
from genpolicy.errors import GenpolicyError
from genpolicy.real_robot.clock import MonotonicClock
from genpolicy.real_robot.controller import Controller
from genpolicy.real_robot.deploy import ServerProcess, deploy
from genpolicy.real_robot.inference import InferenceWorker, LocalPolicy, PolicySpec
from genpolicy.real_robot.safety import SafetyFilter
from genpolicy.real_robot.server import PolicyClient, PolicyServer
from genpolicy.real_robot.sim import SimRobot
from genpolicy.real_robot.wire import MAGIC, DeadlineExceeded, WireError, read_frame


@pytest.fixture(scope="module")
def toy_ckpt(toy_bc_ckpts) -> Path:
    """The shared toy flow policy (conftest): it reaches the goal either way round the obstacle."""
    return toy_bc_ckpts["flow"]


def _deploy_cfg(ckpt: Path, run_dir: Path, **kw) -> DeployConfig:
    base = dict(ckpt=str(ckpt), n_episodes=4, run=RunConfig(dir=str(run_dir), progress=False))
    base.update(kw)
    return DeployConfig(**base)


def test_serve_then_deploy_on_the_sim_robot_succeeds_and_records(toy_ckpt: Path, tmp_path: Path) -> None:
    server = ServerProcess(str(toy_ckpt), use_ema=True, token="s3cret")  # a real `genpolicy serve` subprocess
    try:
        cfg = _deploy_cfg(toy_ckpt, tmp_path / "run", inference="remote", server=f"{server.host}:{server.port}",
                          serve=ServeConfig(port=0, token="s3cret"))
        res = deploy(cfg)
    finally:
        server.close()
    assert res["success_rate"] >= 0.75, res["success_rate"]
    assert res["latency_ms_p50"] is not None and res["overruns"] == 0
    from genpolicy.datasets.lerobot import import_lerobot

    rb = import_lerobot(res["dataset"])
    assert rb.n_episodes == 4
    ep0 = res["episodes"][0]
    assert rb.episode_lengths[0] == ep0["cadence"]["ticks"] - (ep0["status"] != "done")
    assert np.all(np.abs(rb.data["action"]) <= 1.0)  # the commands actually sent, inside the toy's limits


def test_lerobot_api_adapter_drives_the_same_robot(toy_ckpt: Path, tmp_path: Path) -> None:
    res = deploy(_deploy_cfg(toy_ckpt, tmp_path / "run", robot=RobotConfig(type="lerobot_sim"), n_episodes=3,
                             record=False))
    assert res["success_rate"] >= 2 / 3


def test_features_are_checked_before_connect(toy_ckpt: Path, tmp_path: Path) -> None:
    cfg = _deploy_cfg(toy_ckpt, tmp_path / "run", robot=RobotConfig(task="metaworld/drawer-open-v3"))
    with pytest.raises(GenpolicyError, match="state dim: policy 2, robot 39"):
        deploy(cfg)


def test_server_killed_mid_episode_leads_to_the_safe_state(toy_ckpt: Path) -> None:
    server = ServerProcess(str(toy_ckpt), use_ema=True)
    client = PolicyClient(server.host, server.port, deadline_s=0.5)
    clock = MonotonicClock()
    robot = SimRobot("toy/bimodal", clock, 30.0, seed=0, max_episode_steps=10_000)
    robot.connect()
    robot.start_episode(0)
    safety = SafetyFilter.from_config(SafetyConfig(), robot.features.action_low, robot.features.action_high, 1 / 30)
    worker = InferenceWorker(client)
    ctl = Controller(robot, worker, safety, client.spec, ControllerConfig(stop_after_s=0.5), clock)
    killer = threading.Timer(0.6, server.proc.kill)
    killer.start()
    try:
        rep = ctl.run_episode(max_steps=600)
    finally:
        killer.cancel()
        worker.close()
        server.close()
    assert rep.status == "safe_stop" and rep.inference_errors >= 1 and rep.chunks >= 2
    assert np.array_equal(robot.sent[-1], robot.hold_action())


@pytest.fixture()
def live_server(toy_ckpt: Path):
    srv = PolicyServer(LocalPolicy(toy_ckpt), ServeConfig(port=0, token="tok", deadline_ms=300, max_bytes=1 << 16))
    host, port = srv.start()
    yield srv, host, port
    srv.close()


def _raw(host: str, port: int, data: bytes) -> dict | None:
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(data)
        try:
            return read_frame(s, 1 << 20, time.monotonic() + 2)[0]
        except (ConnectionError, DeadlineExceeded, WireError):
            return None


def test_server_rejects_bad_frames_and_keeps_serving(live_server, toy_ckpt: Path) -> None:
    srv, host, port = live_server
    import pickle

    reply = _raw(host, port, pickle.dumps({"op": "infer"}))  # not a genpolicy frame at all
    assert reply is not None and not reply["ok"] and "magic" in reply["error"]
    reply = _raw(host, port, struct.pack("!4sI", MAGIC["msgpack"], 1 << 20))  # oversized: refused from the header
    assert reply is not None and "exceeds the cap" in reply["error"]
    reply = _raw(host, port, struct.pack("!4sI", MAGIC["msgpack"], 3) + b"\xc1\xc1\xc1")  # malformed msgpack
    assert reply is not None and not reply["ok"]
    with socket.create_connection((host, port), timeout=2) as s:  # slowloris: a frame that never completes
        s.sendall(struct.pack("!4sI", MAGIC["msgpack"], 100) + b"\x80")
        t0 = time.monotonic()
        assert s.recv(1) == b""  # the server hangs up once the frame deadline (300 ms) passes
        assert time.monotonic() - t0 < 2.0
    with pytest.raises(GenpolicyError, match="token"):
        PolicyClient(host, port, token="wrong")
    client = PolicyClient(host, port, token="tok")  # still serving
    obs = {"state": np.zeros((1, 2), np.float32)}
    assert client.infer(obs).shape == (8, 2)
    with pytest.raises(GenpolicyError, match="observation 'state' has shape"):
        client.infer({"state": np.zeros((3, 2), np.float32)})
    assert srv.stats["rejected_frames"] >= 3 and srv.stats["auth_failures"] >= 1


def test_client_deadline_and_loopback_default(toy_ckpt: Path) -> None:
    class Slow:
        spec = PolicySpec("toy/bimodal", 1, 8, 4, 2, 2)

        def infer(self, obs):
            time.sleep(1.0)
            return np.zeros((8, 2), np.float32)

    srv = PolicyServer(Slow(), ServeConfig(port=0))
    host, port = srv.start()
    try:
        client = PolicyClient(host, port, deadline_s=0.2)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.infer({"state": np.zeros((1, 2), np.float32)})
        assert time.monotonic() - t0 < 0.6
    finally:
        srv.close()
    with pytest.raises(GenpolicyError, match="not a loopback address"):
        PolicyServer(Slow(), ServeConfig(host="0.0.0.0", port=0))


def test_recorder_crash_keeps_the_previous_dataset(tmp_path: Path, monkeypatch) -> None:
    from genpolicy.datasets import lerobot
    from genpolicy.datasets.lerobot import import_lerobot
    from genpolicy.real_robot.recorder import EpisodeRecorder

    def frames(n: int, v: float) -> dict:
        return {"state": [np.full(2, v, np.float32)] * n, "action": [np.full(2, v)] * n,
                "policy_action": [np.full(2, np.nan)] + [np.full(2, v)] * (n - 1), "held": [1.0] + [0.0] * (n - 1),
                "clamped": [np.zeros(5)] * n, "lateness_ms": [0.1] * n, "t": list(np.arange(n) / 30)}

    rec = EpisodeRecorder(tmp_path / "rec", 30, "toy/bimodal")
    rec.add(frames(5, 0.1), {"episode": 0})
    real_export = lerobot.export_arrays

    def crash(*a, **k):
        real_export(*a, **k)
        raise OSError("disk unplugged mid-publish")

    monkeypatch.setattr(lerobot, "export_arrays", crash)
    with pytest.raises(OSError):
        rec.add(frames(7, 0.2), {"episode": 1})
    rb = import_lerobot(tmp_path / "rec" / "dataset")
    assert rb.n_episodes == 1 and np.allclose(rb.data["action"], 0.1)  # the old complete dataset, untouched
    assert not [p for p in (tmp_path / "rec").iterdir() if p.name.startswith(".")]  # no staging leftovers
    monkeypatch.setattr(lerobot, "export_arrays", real_export)
    rec2 = EpisodeRecorder(tmp_path / "rec", 30, "toy/bimodal")  # a restarted deploy appends to the journal
    rec2.add(frames(3, 0.3), {"episode": 2})
    assert import_lerobot(tmp_path / "rec" / "dataset").n_episodes == 3


def test_cli_deploy_smoke(toy_ckpt: Path, tmp_path: Path, capsys) -> None:
    from genpolicy.cli import main

    rc = main(["deploy", f"ckpt={toy_ckpt}", "n_episodes=1", f"run.dir={tmp_path / 'd'}", "run.progress=false",
               "controller.rate_hz=50"])
    out = capsys.readouterr().out
    assert rc == 0 and "success_rate=" in out and "recorded:" in out
    assert main(["deploy", f"ckpt={toy_ckpt}", "controller.blending=sideways"]) == 2  # bad config: one line, exit 2
