"""Issue 18, hardening from an attack run: every failure it found, reproduced. Each test here failed before its fix.

Training crashes: a SIGKILL during the copy to `best`, temporaries of killed saves, repeated metric rows.
Hostile checkpoints: path escapes, FIFOs and symlinks, oversized or mistyped config values, broken weights and
trainer state. The policy server: descriptor exhaustion, connection and buffer caps, idle clients, non-finite values.
The CLI: which group failed, bad server addresses, refused commands that leave no directory, third-party noise.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from genpolicy.errors import CheckpointError, ConfigError, GenpolicyError
from genpolicy.real_robot.inference import PolicySpec
from tests.conftest import tiny_policy_cfg
from tests.test_checkpoint import _policy, resign

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["task=toy/bimodal", "policy=flow", "policy.width=32", "policy.depth=1", "policy.horizon=8",
              "policy.n_action_steps=4", "policy.time_dim=32", "policy.steps=2", "policy.shortcut=false",
              "train.batch_size=8", "train.warmup_steps=1", "eval.n_episodes=1", "eval.n_envs=1", "eval.n_videos=0",
              "run.progress=false"]


def _env() -> dict[str, str]:
    return dict(os.environ, MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    from genpolicy.datasets.collect import generate

    path = tmp_path_factory.mktemp("data") / "toy.zarr"
    generate("toy/bimodal", 4, progress=False).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# training: kills, leftovers, resumed logs
# ----------------------------------------------------------------------------------------------------------------------
# Runs `genpolicy train` with shutil.copytree replaced: the copy to checkpoints/.best.tmp-* writes one file and the
# process SIGKILLs itself, i.e. a kill -9 in the middle of the real copy of the real code path.
_DIE_DURING_BEST_COPY = """
import os, shutil, signal, sys
real = shutil.copytree
def copytree(src, dst, *a, **k):
    if os.path.basename(str(dst)).startswith(".best.tmp-"):
        os.makedirs(dst)
        shutil.copy2(os.path.join(src, "config.json"), dst)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
shutil.copytree = copytree
from genpolicy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_best_copy_keeps_best_after_resume(tmp_path: Path, toy_data: Path, capsys) -> None:
    """The repro of the issue: kill -9 while `best` is being copied, resume; `best` must exist and hold the weights of
    the evaluation that scored best. A learning rate near 0 keeps every evaluation's score equal to the first, so no
    later evaluation copies `best` again (which is what hid the loss before)."""
    from genpolicy.cli import main
    from genpolicy.training.checkpoint import read_manifest

    args = [*TINY_TRAIN, f"data.path={toy_data}", "run.dir=run", "train.steps=8", "train.lr=1e-12", "eval.every=2",
            "run.ckpt_every=2", "run.log_every=1"]
    r = subprocess.run([sys.executable, "-c", _DIE_DURING_BEST_COPY, "train", *args], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    ckpts = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckpts.iterdir() if p.name.startswith(".best.tmp-")]  # the killed copy's leftover
    assert not (ckpts / "best").exists()
    source = _sha(ckpts / "0000002" / "model.safetensors")  # the weights evaluated at step 2, the best score

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["train", *args, "run.resume=true"]) == 0
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert f"best checkpoint: {Path('run') / 'checkpoints' / 'best'} (success" in out and "at step 2)" in out, out
    assert read_manifest(ckpts / "best")["step"] == 2
    assert _sha(ckpts / "best" / "model.safetensors") == source
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")]  # the resume swept the leftover


def test_rotation_keeps_the_best_source_while_best_is_missing(tmp_path: Path) -> None:
    from genpolicy.training.bc import _rotate

    ckpts = tmp_path / "checkpoints"
    for s in (2, 4, 6, 8):
        (ckpts / f"{s:07d}").mkdir(parents=True)
    _rotate(tmp_path, 8, {"success_rate": 1.0, "step": 2}, best_held=-1)  # `best` does not hold step 2 (yet)
    assert sorted(p.name for p in ckpts.iterdir()) == ["0000002", "0000006", "0000008"]
    _rotate(tmp_path, 8, {"success_rate": 1.0, "step": 2}, best_held=2)  # once it does, step 2 may go
    assert sorted(p.name for p in ckpts.iterdir()) == ["0000006", "0000008"]


def test_stale_temporaries_are_swept_when_a_run_starts(tmp_path: Path) -> None:
    from genpolicy.config import RunConfig
    from genpolicy.training.runs import make_run_dir

    run = tmp_path / "run"
    leftovers = [run / "checkpoints" / ".0000400.tmp-0123abcd", run / "checkpoints" / ".best.tmp-89abcdef",
                 run / ".dataset.tmp-deadbeef", run / ".episodes.zarr.old-00ff00ff"]
    for p in leftovers:
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "weights").write_bytes(b"x" * 1000)
    keep = [run / "checkpoints" / "0000400", run / ".gitignore", run / "checkpoints" / ".best.tmp-notours"]
    keep[0].mkdir()
    keep[1].write_text("*")
    keep[2].mkdir()
    make_run_dir(RunConfig(dir=str(run)), "x")
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in keep)


def test_resume_does_not_repeat_metric_rows(tmp_path: Path, toy_data: Path) -> None:
    """A run killed between checkpoints logged rows past its last checkpoint; the resumed run logs them again."""
    from genpolicy.config import DataConfig, EvalConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
    from genpolicy.training.bc import train
    from genpolicy.training.ema import EMA
    from genpolicy.training.runs import read_metrics

    def cfg(resume: bool) -> TrainConfig:
        return TrainConfig(task=TaskConfig(name="toy/bimodal"), policy=tiny_policy_cfg(type="flow", sampler="euler"),
                           data=DataConfig(path=str(toy_data)), train=OptimConfig(steps=6, batch_size=8, warmup_steps=1),
                           eval=EvalConfig(n_episodes=1, n_envs=1, n_videos=0),
                           run=RunConfig(dir=str(tmp_path / "run"), log_every=1, ckpt_every=2, resume=resume,
                                         progress=False))

    real_update = EMA.update

    def crash(self, model, step):  # dies in step 4 (index 3): rows 1..3 are logged, the last checkpoint is step 2
        real_update(self, model, step)
        if step == 3:
            raise RuntimeError("killed (injected)")

    EMA.update = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="injected"):
            train(cfg(False))
    finally:
        EMA.update = real_update  # type: ignore[method-assign]
    train(cfg(True))
    steps = [m["step"] for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert steps == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------------------------------------------------
# hostile or damaged checkpoints
# ----------------------------------------------------------------------------------------------------------------------
def _returns_within(fn, timeout: float = 10.0):
    """fn() in a thread: the old code read /dev/zero or waited on a FIFO forever; that must fail, not hang."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "loading the checkpoint hangs"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _saved(tmp_path: Path, **kw) -> Path:
    from genpolicy.training.checkpoint import save_checkpoint

    ck = tmp_path / "ck"
    save_checkpoint(ck, _policy(), {"task": {"name": "toy/bimodal"}}, step=1, **kw)
    return ck


@pytest.mark.parametrize("attack", ["escape-dev-zero", "escape-file", "symlink-dev-zero", "symlink-file", "fifo",
                                    "huge-sparse"])
def test_manifest_accepts_only_regular_files_inside(tmp_path: Path, attack: str) -> None:
    """The /dev/zero and FIFO variants hung the loader forever; the -file variants (with correct hashes, as an
    attacker can write them) read a file outside the checkpoint; a 50 GiB sparse file must not be read past the
    size the manifest records."""
    from genpolicy.training.checkpoint import load_policy

    ck = _saved(tmp_path)
    man = json.loads((ck / "manifest.json").read_text())
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    if attack.startswith("escape"):
        name = "../../../../../../../../dev/zero" if attack == "escape-dev-zero" else "../outside.bin"
        man["files"][name] = _sha(outside)
        man["sizes"][name] = outside.stat().st_size
        (ck / "manifest.json").write_text(json.dumps(man))
    elif attack == "huge-sparse":
        os.truncate(ck / "model.safetensors", 50 * 2**30)
    else:
        weights = ck / "model.safetensors"
        if attack == "symlink-file":
            shutil.move(weights, outside)  # the real weights, hashes intact, but outside the checkpoint
        else:
            weights.unlink()
        if attack.startswith("symlink"):
            os.symlink("/dev/zero" if attack == "symlink-dev-zero" else outside, weights)
        else:
            os.mkfifo(weights)
    needle = {"escape": "not a file name inside the checkpoint", "symlink": "a symlink", "fifo": "not a regular file",
              "huge": "size mismatch"}[attack.split("-")[0]]
    with pytest.raises(CheckpointError, match=needle):
        _returns_within(lambda: load_policy(ck))
    if attack == "huge-sparse":
        (ck / "model.safetensors").unlink()  # sparse, but pytest keeps its tmp dirs


def _tamper_config(ck: Path, edit) -> None:
    cfg = json.loads((ck / "config.json").read_text())
    edit(cfg)
    (ck / "config.json").write_text(json.dumps(cfg))
    resign(ck)


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c["policy"]["config"].update(num_train_timesteps=1e9), "policy.num_train_timesteps must be an integer"),
    (lambda c: c["policy"]["config"].update(num_train_timesteps=10**6), "policy.num_train_timesteps must be in"),
    (lambda c: c["policy"]["config"].update(width=10**6), "policy.width must be in"),
    (lambda c: c["policy"]["config"].update(width="512"), "policy.width must be an integer, got '512'"),
    (lambda c: c["policy"]["config"].update(width=-5), "policy.width must be in"),
    (lambda c: c["policy"]["config"].update(down_dims="abc"), "policy.down_dims must be a list of integers"),
    (lambda c: c["policy"]["shape"].update(evil=1), "unknown policy.shape keys ['evil']"),
    (lambda c: c["policy"]["shape"].update(state_dim="4"), "policy.shape.state_dim must be an integer"),
    (lambda c: c.update(task="toy/bimodal"), "'task' must be an object"),
    (lambda c: c["policy"].update(config=[1, 2]), "'policy.config' must be an object"),
])
def test_hostile_config_values_are_one_line_errors(tmp_path: Path, edit, needle: str) -> None:
    from genpolicy.real_robot.inference import LocalPolicy

    ck = _saved(tmp_path)
    _tamper_config(ck, edit)
    with pytest.raises((CheckpointError, ConfigError)) as info:
        _returns_within(lambda: LocalPolicy(ck))  # what serve/deploy load: the policy and the spec (task)
    assert str(ck / "config.json") in str(info.value) and needle in str(info.value), str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "empty", "pickle"])
def test_broken_weights_with_rehashed_manifest_are_one_line_errors(tmp_path: Path, damage: str) -> None:
    import pickle

    from genpolicy.training.checkpoint import load_policy

    ck = _saved(tmp_path)
    f = ck / "model.safetensors"
    data = {"truncated": f.read_bytes()[:100], "empty": b"", "pickle": pickle.dumps({"x": 1})}[damage]
    f.write_bytes(data)
    resign(ck)
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_policy(ck)


def test_malformed_json_and_manifest_are_one_line_errors(tmp_path: Path) -> None:
    from genpolicy.training.checkpoint import load_policy, read_config

    ck = _saved(tmp_path)
    (ck / "config.json").write_text('{"policy": ')
    resign(ck)
    with pytest.raises(CheckpointError, match=r"config.json: not valid JSON"):
        read_config(ck)
    ck2 = _saved(tmp_path / "b")
    man = json.loads((ck2 / "manifest.json").read_text())
    man["files"] = list(man["files"])
    (ck2 / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match="manifest.json: 'files' must map file names"):
        load_policy(ck2)


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path: Path) -> None:
    from genpolicy.training.checkpoint import load_policy

    ck = _saved(tmp_path)
    _tamper_config(ck, lambda c: c["policy"]["config"].update(width=32))  # the weights have width 64
    with pytest.raises(CheckpointError, match=r"model.safetensors: weights do not match the policy config: tensor "
                                              r"'[\w.]+' has shape \(\d+(, \d+)*\) in the checkpoint, the config "
                                              r"builds \(\d+(, \d+)*\)"):
        load_policy(ck)


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.update(step="abc"), "'step' must be a non-negative integer, got 'abc'"),
    (lambda m: m.update(step=-100), "'step' must be a non-negative integer, got -100"),
    (lambda m: m["optimizer"].update(param_groups=[]), "'optimizer.param_groups' must be a list of 1 group(s), got 0"),
    (lambda m: m.update(best="x"), "'best' must be"),
    (None, "trainer.json: not valid JSON"),
])
def test_hostile_trainer_state_is_refused_on_resume(tmp_path: Path, edit, needle: str) -> None:
    from genpolicy.training.checkpoint import load_training_state

    p = _policy()
    opt = torch.optim.AdamW(p.parameters(), lr=1e-3)
    for prm in p.parameters():
        prm.grad = torch.ones_like(prm)
    opt.step()  # so that the optimizer has per-parameter state to save
    ck = _saved(tmp_path, ema=_policy(), optimizer=opt, trainer_state={"step": 1, "best": {"success_rate": 0.5,
                                                                                             "step": 1}})
    meta_path = ck / "trainer.json"
    if edit is None:
        meta_path.write_text('{"step": 1, ')
    else:
        meta = json.loads(meta_path.read_text())
        edit(meta)
        meta_path.write_text(json.dumps(meta))
    resign(ck)
    with pytest.raises(CheckpointError) as info:
        load_training_state(ck, _policy(), _policy(), torch.optim.AdamW(_policy().parameters(), lr=1e-3))
    assert "trainer.json" in str(info.value) and needle in str(info.value), str(info.value)


def test_hostile_finetune_trainer_state_is_refused(tmp_path: Path) -> None:
    from genpolicy.training.checkpoint import load_finetune_state

    critic = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(critic.parameters())
    ck = _saved(tmp_path, modules={"critic": critic}, optimizers={"critic": opt},
                trainer_state={"iteration": 3, "env_steps": 10})
    meta = json.loads((ck / "trainer.json").read_text())
    meta["iteration"] = "abc"
    (ck / "trainer.json").write_text(json.dumps(meta))
    resign(ck)
    with pytest.raises(CheckpointError, match="trainer.json: 'iteration' must be a non-negative integer"):
        load_finetune_state(ck, _policy(), {"critic": torch.nn.Linear(3, 1)}, {"critic": opt})


# ----------------------------------------------------------------------------------------------------------------------
# the policy server
# ----------------------------------------------------------------------------------------------------------------------
class _Stub:
    """A policy whose actions are its state's maximum times 1e10 (so 1e38 overflows to inf in float32)."""

    spec = PolicySpec("toy/bimodal", 1, 8, 4, 2, 2)

    def infer(self, obs):
        with np.errstate(over="ignore"):
            return np.full((8, 2), float(np.max(obs["state"])) * 1e10).astype(np.float32)


def _server(**kw):
    from genpolicy.config import ServeConfig
    from genpolicy.real_robot.server import PolicyServer

    srv = PolicyServer(_Stub(), ServeConfig(port=0, **kw))
    host, port = srv.start()
    return srv, host, port


def _ok(host: str, port: int) -> bool:
    from genpolicy.real_robot.server import PolicyClient

    client = PolicyClient(host, port, deadline_s=2.0)
    try:
        return client.infer({"state": np.zeros((1, 2), np.float32)}).shape == (8, 2)
    finally:
        client.close()


def test_server_survives_descriptor_exhaustion(tmp_path: Path) -> None:
    """Exhaust this process's descriptors (the server's accepts fail with EMFILE), free them: it serves again."""
    srv, host, port = _server()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[socket.socket] = []
    try:
        n_open = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (n_open + 40, hard))
        try:
            while True:
                s = socket.socket()
                held.append(s)
                s.setblocking(False)
                s.connect_ex((host, port))  # completes in the backlog; the server's accept then needs a descriptor
        except OSError as e:
            assert e.errno == errno.EMFILE
        deadline = time.monotonic() + 5
        while srv.stats["accept_errors"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.stats["accept_errors"] > 0  # the accept loop did meet EMFILE
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert _ok(host, port)
    finally:
        srv.close()


def test_server_caps_connections_and_closes_idle_ones() -> None:
    from genpolicy.real_robot.wire import read_frame

    srv, host, port = _server(max_connections=2, idle_timeout_s=0.3)
    try:
        idle = [socket.create_connection((host, port), timeout=2) for _ in range(2)]
        time.sleep(0.1)
        with socket.create_connection((host, port), timeout=2) as third:  # over the cap: refused with a reason
            reply, _ = read_frame(third, 1 << 20, time.monotonic() + 2)
            assert not reply["ok"] and "serve.max_connections" in reply["error"]
        t0 = time.monotonic()
        for s in idle:  # silent clients are hung up on after idle_timeout_s, not 300 s
            assert s.recv(1) == b""
            s.close()
        assert time.monotonic() - t0 < 2.0
        time.sleep(0.1)
        assert _ok(host, port)
    finally:
        srv.close()


def test_server_caps_bytes_buffered_across_connections() -> None:
    from genpolicy.real_robot.wire import MAGIC, read_frame

    srv, host, port = _server(max_bytes=1 << 20, max_buffered_bytes=(3 << 20) // 2, deadline_ms=3000)
    try:
        with socket.create_connection((host, port), timeout=3) as a, \
                socket.create_connection((host, port), timeout=3) as b:
            a.sendall(struct.pack("!4sI", MAGIC["msgpack"], 1 << 20) + b"\x80" * 1000)  # a 1 MiB frame, in progress
            time.sleep(0.2)
            b.sendall(struct.pack("!4sI", MAGIC["msgpack"], 1 << 20))  # another would make 2 MiB > 1.5 MiB
            reply, _ = read_frame(b, 1 << 20, time.monotonic() + 3)
            assert not reply["ok"] and "serve.max_buffered_bytes" in reply["error"]
        assert _ok(host, port)
        deadline = time.monotonic() + 2
        while srv._budget.used and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv._budget.used == 0  # every reservation is given back when its request is done
    finally:
        srv.close()


@pytest.mark.parametrize("value, needle", [(np.nan, "contains NaN or inf"), (np.inf, "contains NaN or inf"),
                                           (1e38, "non-finite actions")])
def test_server_refuses_non_finite_values(value: float, needle: str) -> None:
    from genpolicy.real_robot.server import PolicyClient

    srv, host, port = _server()
    try:
        client = PolicyClient(host, port, deadline_s=2.0)
        with pytest.raises(GenpolicyError, match=needle):
            client.infer({"state": np.full((1, 2), value, np.float32)})
        assert client.infer({"state": np.ones((1, 2), np.float32)}).shape == (8, 2)  # still serving
        client.close()
    finally:
        srv.close()


# ----------------------------------------------------------------------------------------------------------------------
# deploy and the CLI
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("server, needle", [
    ("127.0.0.1:1", "policy server 127.0.0.1:1: cannot connect (Connection refused)"),
    ("127.0.0.1:99999", "server='127.0.0.1:99999': port must be a number in 1-65535"),
    ("127.0.0.1:abc", "server='127.0.0.1:abc': port must be a number in 1-65535"),
])
def test_deploy_with_a_bad_server_is_one_line_and_leaves_no_run_dir(tmp_path: Path, capsys, server: str,
                                                                     needle: str) -> None:
    from genpolicy.cli import main

    rc = main(["deploy", "inference=remote", f"server={server}", f"run.dir={tmp_path / 'd'}", "run.progress=false"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "d").exists()


def test_eval_task_mismatch_leaves_no_run_dir(tmp_path: Path, capsys) -> None:
    from genpolicy.cli import main

    ck = _saved(tmp_path)  # state 4, action 2; toy/bimodal has state 2
    rc = main(["eval", f"ckpt={ck}", "task=toy/bimodal", f"run.dir={tmp_path / 'ev'}", "run.progress=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "task 'toy/bimodal' has state/action dims (2, 2)" in err, err
    assert not (tmp_path / "ev").exists()


def test_resumed_deploy_continues_episode_and_seed_numbers(tmp_path: Path) -> None:
    from genpolicy.config import ControllerConfig, DeployConfig, RunConfig
    from genpolicy.datasets.replay_buffer import ReplayBuffer
    from genpolicy.policies import ShapeMeta, make_policy
    from genpolicy.real_robot.deploy import deploy
    from genpolicy.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    p = make_policy(tiny_policy_cfg(type="flow", sampler="euler", n_obs_steps=1), ShapeMeta(state_dim=2, action_dim=2))
    p.normalizer.fit({"state": np.random.default_rng(0).uniform(-1, 1, (50, 2)),
                      "action": np.random.default_rng(1).uniform(-1, 1, (50, 2))})
    save_checkpoint(tmp_path / "ck", p, {"task": {"name": "toy/bimodal"}}, step=1)
    cfg = DeployConfig(ckpt=str(tmp_path / "ck"), n_episodes=1, seed=500,
                       controller=ControllerConfig(rate_hz=200, max_steps=6),
                       run=RunConfig(dir=str(tmp_path / "d"), progress=False))
    first = deploy(cfg)
    second = deploy(cfg)  # the same run again: a resumed recording
    assert [e["episode"] for e in first["episodes"] + second["episodes"]] == [0, 1]
    assert [e["seed"] for e in first["episodes"] + second["episodes"]] == [500, 501]
    infos = ReplayBuffer.load(tmp_path / "d" / "episodes.zarr").attrs["episodes"]
    assert [(i["episode"], i["seed"]) for i in infos] == [(0, 500), (1, 501)]


@pytest.mark.parametrize("args, needle", [
    (["train", "task=toy/bimodal", "policy=nonexistent"], "unknown policy 'nonexistent'"),
    (["finetune", "task=toy/bimodal", "preset=nosuch", "ckpt=x"], "unknown preset 'nosuch'"),
    (["train", "task=toy/nosuch", "policy=flow"], "unknown task 'toy/nosuch'"),
])
def test_unknown_group_option_names_the_group_that_failed(args: list[str], needle: str, capsys) -> None:
    from genpolicy.cli import main

    assert main(args) == 2
    assert needle in capsys.readouterr().err


def test_envs_list_prints_no_third_party_noise(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "genpolicy.cli", "envs", "list"], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "toy/bimodal" in r.stdout
    assert r.stderr.strip() == "", r.stderr


_RENDER_AND_LEAK = """
import mujoco
from genpolicy.envs.mjrender import RendererCache
m = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1'/></worldbody></mujoco>")
cache = RendererCache(m)
cache.render(mujoco.MjData(m), -1, 16)  # never closed: alive until the interpreter tears its modules down
print("rendered")
"""


def test_a_renderer_left_open_does_not_print_egl_errors_at_exit(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", _RENDER_AND_LEAK], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "rendered" in r.stdout, r.stderr
    assert "Traceback" not in r.stderr and "EGLError" not in r.stderr, r.stderr
