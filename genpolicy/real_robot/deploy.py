"""`genpolicy deploy` and `genpolicy serve`: wire a checkpoint, a robot, the safety filter and the controller together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from genpolicy.errors import GenpolicyError
from genpolicy.real_robot.clock import MonotonicClock
from genpolicy.real_robot.config import DeployConfig, ServeCommandConfig, parse_address
from genpolicy.real_robot.controller import Controller
from genpolicy.real_robot.inference import InferenceWorker, LocalPolicy, PolicySpec
from genpolicy.real_robot.robot import check_compatible
from genpolicy.real_robot.safety import SafetyFilter
from genpolicy.real_robot.server import PolicyClient, PolicyServer


def serve(cfg: ServeCommandConfig, ready: Any = None) -> None:
    """Load the checkpoint strictly, bind, print `listening on host:port`, serve until SIGINT/SIGTERM."""
    if not cfg.ckpt:
        raise GenpolicyError("serve needs ckpt=<checkpoint directory>")
    runner = LocalPolicy(cfg.ckpt, use_ema=cfg.use_ema)
    if cfg.serve.warmup:  # the first call pays for lazy initialisation; do it before a robot is waiting
        runner.infer(_zero_obs(runner.spec))
    server = PolicyServer(runner, cfg.serve)
    host, port = server.start()
    print(f"listening on {host}:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server._stop.set())  # SIGTERM ends serve_forever like Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _zero_obs(spec: PolicySpec) -> dict[str, np.ndarray]:
    obs = {"state": np.zeros((spec.n_obs_steps, spec.state_dim), np.float32)}
    for c, s in spec.cameras.items():
        obs[f"image.{c}"] = np.zeros((spec.n_obs_steps, *s), np.uint8)
    return obs


class ServerProcess:
    """A local `genpolicy serve` subprocess on a free loopback port (inference=process)."""

    def __init__(self, ckpt: str, use_ema: bool, token: str = "", timeout_s: float = 120.0) -> None:
        cmd = [sys.executable, "-m", "genpolicy.cli", "serve", f"ckpt={ckpt}", "serve.port=0", f"use_ema={use_ema}"]
        if token:
            cmd.append(f"serve.token={token}")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        t0 = time.monotonic()
        line = ""
        while time.monotonic() - t0 < timeout_s:
            line = self.proc.stdout.readline()
            if line.startswith("listening on ") or self.proc.poll() is not None:
                break
        if not line.startswith("listening on "):
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.close()
            raise GenpolicyError(f"policy server did not start: {err.strip().splitlines()[-1:] or line!r}")
        host, port = line.split()[-1].rsplit(":", 1)
        self.host, self.port = host, int(port)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def make_robot(cfg: DeployConfig, task: str, clock: Any) -> tuple[Any, Any]:
    """Returns (robot for the controller, the simulation behind it for episode control)."""
    from genpolicy.real_robot.sim import SimRobot

    r = cfg.robot
    sim = SimRobot(task, clock, cfg.controller.rate_hz, seed=cfg.seed, obs_latency_s=r.obs_latency_ms / 1e3,
                   obs_jitter_s=r.obs_jitter_ms / 1e3, drop_prob=r.drop_prob, max_action_rate=r.max_action_rate)
    if r.type == "lerobot_sim":
        from genpolicy.real_robot.lerobot_adapter import LeRobotRobot, SimLeRobot

        return LeRobotRobot(SimLeRobot(sim), sim.features.action_low, sim.features.action_high, hold=sim.hold_action), sim
    return sim, sim


def realtime_settings(cfg: DeployConfig) -> Any:
    """The policy-side settings of execution=rtc|bid (None for the other modes: plain sampling)."""
    if cfg.execution not in ("rtc", "bid"):
        return None
    from genpolicy.policies.realtime import RealtimeSettings

    return RealtimeSettings(mode=cfg.execution, beta=cfg.rtc.beta, schedule=cfg.rtc.schedule,
                            bid_samples=cfg.bid.samples, bid_rho=cfg.bid.rho, bid_k=cfg.bid.k)


def execution_info(cfg: DeployConfig) -> dict[str, Any]:
    """The execution mode and the settings that mean something for it (deploy.json and the dataset's metadata)."""
    c = cfg.controller
    info: dict[str, Any] = {"mode": cfg.execution, "rate_hz": c.rate_hz, "latency_handling": c.latency_handling,
                            "request_every": c.request_every}
    if cfg.execution == "blend":
        info |= {"blend_s": c.blend_s, "blend_steps": c.blend_window}
    elif cfg.execution == "ensemble":
        info |= {"ensemble_k": c.ensemble_k}
    elif cfg.execution in ("rtc", "bid"):
        info |= {"delay_window": c.delay_window, "delay_margin": c.delay_margin}
        info |= asdict(cfg.rtc) if cfg.execution == "rtc" else asdict(cfg.bid)
    return info


def make_teleop(cfg: DeployConfig, task: str, sim: Any, action_names: list[str]) -> Any:
    """The teleoperator of `cfg.teleop` (None for teleop=none); the simulated ones are the task's expert."""
    if cfg.teleop == "none":
        return None
    if cfg.teleop == "lerobot":
        from genpolicy.real_robot.teleop import make_lerobot_teleop

        return make_lerobot_teleop(cfg.intervention.lerobot_type, cfg.intervention.lerobot_port, action_names)
    from genpolicy.experts.registry import make_expert
    from genpolicy.real_robot.teleop import LeRobotTeleop, SimLeRobotTeleop, SimTeleop

    iv = cfg.intervention
    expert = make_expert(task, seed=cfg.seed, expert_path=iv.expert_path)
    st = SimTeleop(expert, sim.env, iv.rule, iv.threshold, iv.hold_steps, iv.stall_steps, iv.stall_tol,
                   progress=lambda: sim.last_reward)
    if cfg.teleop == "sim":
        return st
    return LeRobotTeleop(SimLeRobotTeleop(st, sim.features.action_dim), [f"a{i}" for i in range(sim.features.action_dim)])


def deploy(cfg: DeployConfig) -> dict[str, Any]:
    """Run `cfg.n_episodes` episodes on the robot; write deploy.json (+ the recorded LeRobot dataset) to the run dir."""
    from genpolicy.training.runs import make_run_dir
    from tqdm import tqdm

    if not cfg.ckpt and cfg.inference != "remote":
        raise GenpolicyError("deploy needs ckpt=<checkpoint directory> (or inference=remote server=host:port)")
    clock = MonotonicClock()
    with ExitStack() as stack:
        # the policy side first: its features are checked against the robot's before connect
        if cfg.inference == "thread":
            runner: Any = LocalPolicy(cfg.ckpt, use_ema=cfg.use_ema, realtime=realtime_settings(cfg),
                                      weak_ckpt=cfg.bid.weak_ckpt if cfg.execution == "bid" else "")
        else:
            if cfg.inference == "process":
                proc = ServerProcess(cfg.ckpt, cfg.use_ema, cfg.serve.token)
                stack.callback(proc.close)
                host, port = proc.host, proc.port
            else:
                host, port = parse_address(cfg.server, "server")
            runner = PolicyClient(host, port, cfg.serve.token, cfg.serve.codec, cfg.serve.deadline_ms / 1e3,
                                  cfg.serve.max_bytes, realtime=realtime_settings(cfg))
            stack.callback(runner.close)
        spec = runner.spec
        task = cfg.robot.task or spec.task
        if not task:
            raise GenpolicyError("the checkpoint names no task; set robot.task=<suite/name>")
        robot, sim = make_robot(cfg, task, clock)
        stack.callback(sim.close)
        check_compatible(spec, robot.features, f"{cfg.robot.type}:{task}")
        safety = SafetyFilter.from_config(cfg.safety, robot.features.action_low, robot.features.action_high,
                                          1.0 / cfg.controller.rate_hz, robot.features.position_dims)
        teleop = make_teleop(cfg, task, sim, list(robot.features.action_names))
        worker = InferenceWorker(runner, inject_latency_s=cfg.inject_latency_ms / 1e3)
        stack.callback(worker.close)
        # the inputs (checkpoint or server, robot, features) are checked: only now does the run directory exist
        run_dir = make_run_dir(cfg.run, f"deploy-{cfg.robot.type}")
        recorder, first = None, 0
        if cfg.record:
            from genpolicy.real_robot.recorder import EpisodeRecorder

            recorder = EpisodeRecorder(run_dir, cfg.controller.rate_hz, task, meta={"execution": execution_info(cfg)})
            # a deploy into a run that already recorded episodes continues their numbering and their seeds
            first = recorder.next_episode
        ctl = stack.enter_context(Controller(robot, worker, safety, spec, cfg.controller, clock, teleop))  # connects
        max_steps = cfg.controller.max_steps or sim.max_episode_steps
        episodes, lateness, jumps, step_changes = [], [], [], []
        bar = tqdm(range(first, first + cfg.n_episodes), desc="deploy", unit="ep", disable=not cfg.run.progress)
        for i in bar:
            sim.start_episode(cfg.seed + i)
            rep = ctl.run_episode(max_steps, should_stop=lambda: sim.success or sim.done, record=recorder is not None)
            ep = {"episode": i, "seed": cfg.seed + i, **sim.info(), **rep.summary()}
            episodes.append(ep)
            lateness += rep.lateness_ms
            jumps += rep.boundary_jumps
            step_changes += rep.boundary_step_changes
            if recorder is not None:
                recorder.add(rep.frames, {k: ep[k] for k in ("episode", "seed", "success", "steps", "status",
                                                              "execution", "intervention_steps")})
            bar.set_postfix(success=f"{np.mean([e['success'] for e in episodes]):.2f}")
    lat = list(worker.latencies)
    result = {
        "success_rate": float(np.mean([e["success"] for e in episodes])), "n_episodes": len(episodes),
        "success_definition": sim.success_definition, "task": task, "robot": cfg.robot.type, "inference": cfg.inference,
        "rate_hz": cfg.controller.rate_hz, "blending": cfg.controller.blending, "execution": execution_info(cfg),
        "mean_jerk": float(np.mean([e["mean_jerk"] for e in episodes])),
        "latency_ms_p50": float(np.percentile(lat, 50) * 1e3) if lat else None,
        "latency_ms_p99": float(np.percentile(lat, 99) * 1e3) if lat else None,
        "overruns": int(sum(e["cadence"]["overruns"] for e in episodes)),
        "jitter_p50_ms": float(np.percentile(lateness, 50)), "jitter_p99_ms": float(np.percentile(lateness, 99)),
        "max_boundary_jump": float(max(jumps, default=0.0)), "mean_boundary_jump": float(np.mean(jumps)) if jumps else 0.0,
        "p95_boundary_jump": float(np.percentile(jumps, 95)) if jumps else 0.0,
        "max_boundary_step_change": float(max(step_changes, default=0.0)),
        "mean_boundary_step_change": float(np.mean(step_changes)) if step_changes else 0.0,
        "late_dropped": int(sum(e["late_dropped"] for e in episodes)),
        "clamps": safety.report(), "episodes": episodes, "run_dir": str(run_dir), "teleop": cfg.teleop,
        "intervention_rate": float(sum(e["intervention_steps"] for e in episodes) / max(1, sum(e["steps"] for e in episodes))),
        "dataset": str(recorder.dataset_dir) if recorder is not None else None,
    }
    (Path(run_dir) / "deploy.json").write_text(json.dumps(result, indent=2, default=float))
    return result
