"""The `genpolicy` command. Each subcommand composes a Hydra config from configs/ plus key=value overrides.

    genpolicy demo
    genpolicy data generate task=metaworld/push-v3 data.n_episodes=50 [output=data/push.zarr]
    genpolicy data convert demos.hdf5 out.zarr        (robomimic HDF5 / LeRobot dir / zarr -> zarr or LeRobot)
    genpolicy data info data/push.zarr    (a LeRobot dir or cached repo_id too: its key -> policy mapping; task=... checks dims)
    genpolicy data view data/push.zarr episode=0 [serve=true]   (Rerun recording; ckpt=<checkpoint> for a rollout)
    genpolicy data expert task=gym/hopper-v5 expert.stop_return=1500   (SAC "medium" expert -> data/experts/...)
    genpolicy train task=metaworld/door-open-v3 policy=flow policy.steps=4
    torchrun --standalone --nproc_per_node=2 -m genpolicy.cli train ...   (data parallel; train.batch_size is global)
    genpolicy eval ckpt=runs/<run>/checkpoints/best [policy sampler/steps overrides: sampler=shortcut steps=1]
                   [eval.split=test: the protocol's 100 held-out test episodes (genpolicy/protocol.py)]
    genpolicy envs list [results=benchmarks/results/envs.json]      (every task: obs/action spec, success, steps/s)
    genpolicy envs measure [all_tasks=true budget_s=3 suites=[dmc]]   (times simulators -> benchmarks/results/envs.*)
    genpolicy finetune algo=reinflow ckpt=runs/<bc run>/checkpoints/best task=toy/bimodal-right preset=toy
    genpolicy bench sampler [nets=[mlp] batches=[1] compiled=false out=benchmarks/results]
    genpolicy serve ckpt=runs/<run>/checkpoints/best [serve.port=8765 serve.token=...]
    genpolicy deploy ckpt=runs/<run>/checkpoints/best robot=sim [n_episodes=5 inference=thread|process|remote]
                     [teleop=sim|lerobot_sim|lerobot intervention.rule=deviation intervention.hold_steps=20]
    genpolicy dagger task=metaworld/pick-place-v3 mode=dagger|hg_dagger rounds=5 [run.dir=... run.resume=true]
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

from genpolicy.errors import GenpolicyError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    from genpolicy.config import (DataCommandConfig, DeployConfig, EvalCommandConfig, FinetuneConfig, ServeCommandConfig,
                                  TaskConfig, TrainConfig)
    from genpolicy.envs.registry import list_tasks

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="demo_schema", node=TrainConfig)  # the demo is a training run that also makes its data
    cs.store(name="eval_schema", node=EvalCommandConfig)
    cs.store(name="data_schema", node=DataCommandConfig)
    cs.store(name="finetune_schema", node=FinetuneConfig)
    cs.store(name="deploy_schema", node=DeployConfig)
    cs.store(name="serve_schema", node=ServeCommandConfig)
    from genpolicy.bench import BenchSamplerConfig

    cs.store(name="bench_sampler_schema", node=BenchSamplerConfig)
    from genpolicy.envs.catalog import EnvsMeasureConfig

    cs.store(name="envs_measure_schema", node=EnvsMeasureConfig)
    from genpolicy.dagger import DaggerConfig

    cs.store(name="dagger_schema", node=DaggerConfig)
    for task in list_tasks():  # `task=<name>` works for every registered task
        suite, name = task.split("/", 1)
        cs.store(group=f"task/{suite}", name=name, node=TaskConfig(name=task), package="task")
    _registered = True


def _register_task(task: str) -> None:
    """Make `task=<suite>/<name>` selectable when the registry accepts the name (unknown names keep Hydra's error)."""
    from hydra.core.config_store import ConfigStore

    from genpolicy.config import TaskConfig
    from genpolicy.envs.registry import SUITES, list_tasks

    suite, name = task.split("/", 1)
    if task in list_tasks() or suite not in SUITES or SUITES[suite].closed or not name:
        return
    ConfigStore.instance().store(group=f"task/{suite}", name=name, node=TaskConfig(name=task), package="task")


def compose(config_name: str, overrides: list[str], schema: type) -> Any:
    """Compose configs/<config_name>.yaml with overrides and return the validated dataclass."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    import dataclasses

    _register()
    # `task` is a config group (task=<suite>/<name> selects a TaskConfig); where a schema's `task` is a plain
    # string (eval: "evaluate on another task"), the group would swallow the override, so set it after composing.
    plain_task = None
    if any(f.name == "task" and f.type in (str, "str") for f in dataclasses.fields(schema)):
        plain_task = next((o.split("=", 1)[1] for o in overrides if o.startswith("task=")), None)
        overrides = [o for o in overrides if not o.startswith("task=")]
    for o in overrides:  # open suites (metaworld, dmc, isaaclab) also take names the registry does not list
        if o.startswith("task=") and "/" in o:
            _register_task(o.split("=", 1)[1])
    if not CONFIG_DIR.is_dir():
        raise GenpolicyError(f"{CONFIG_DIR}: config directory missing (is genpolicy installed from its source tree?)")
    from hydra.errors import MissingConfigException

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        try:
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
        except MissingConfigException as e:
            # Hydra names the option it could not find ("Could not find 'policy/nosuch'"); report that group and
            # value, not the first group override given (which may be a valid task)
            m = re.search(r"Could not find '([^/']+)/([^']+)'", str(e))
            if m is None or m.group(1) not in ("task", "policy", "preset"):
                raise
            group, value = m.groups()
            hint = "`genpolicy envs list`" if group == "task" else f"configs/{group}/"
            raise GenpolicyError(f"unknown {group} '{value}'; see {hint} ({' '.join(str(e).split()[:8])}...)") from None
    if plain_task is not None:
        from genpolicy.envs.registry import list_tasks

        if plain_task not in list_tasks():
            raise GenpolicyError(f"unknown task '{plain_task}'; see `genpolicy envs list`")
        cfg.task = plain_task
    obj = OmegaConf.to_object(cfg)  # runs every dataclass __post_init__ validation
    assert isinstance(obj, schema)
    return obj


def _split_args(args: list[str]) -> tuple[list[str], list[str]]:
    positional = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    return positional, overrides


def cmd_train(args: list[str]) -> int:
    from genpolicy.config import TrainConfig
    from genpolicy.training.bc import train

    _, overrides = _split_args(args)
    cfg = compose("train", overrides, TrainConfig)
    res = train(cfg)
    if res["eval"] is None:  # a torchrun rank other than 0: rank 0 evaluates and reports
        return 0
    ev = res["eval"]
    print(f"run: {res['run_dir']}")
    print(f"best checkpoint: {res['best_checkpoint']} (success {res['best']['success_rate']:.2f} at step {res['best']['step']})")
    print(f"final eval: success_rate={ev['success_rate']:.3f} over {ev['n_episodes']} episodes "
          f"(success = {ev['success_definition']})")
    return 0


def cmd_eval(args: list[str]) -> int:
    from genpolicy.config import EvalCommandConfig
    from genpolicy.protocol import SPLIT_EPISODES, evaluate_split
    from genpolicy.training.checkpoint import load_policy, read_config
    from genpolicy.training.evaluate import evaluate
    from genpolicy.training.runs import make_run_dir, resolve_device, slug

    positional, overrides = _split_args(args)
    if positional:
        overrides.append(f"ckpt={positional[0]}")
    split = next((o.split("=", 1)[1] for o in overrides if o.startswith("eval.split=")), "custom")
    if split in SPLIT_EPISODES and not any(o.startswith("eval.n_episodes=") for o in overrides):
        overrides.append(f"eval.n_episodes={SPLIT_EPISODES[split]}")  # the split's protocol size, unless given
    cfg = compose("eval", overrides, EvalCommandConfig)
    if not cfg.ckpt:
        raise GenpolicyError("eval needs a checkpoint: genpolicy eval ckpt=runs/<run>/checkpoints/best")
    policy = load_policy(cfg.ckpt, use_ema=cfg.use_ema, device=resolve_device(cfg.run.device))
    extra = {k: v for k, v in (("warm_start_steps", cfg.warm_start_steps), ("backend", cfg.backend),
                                ("adaptive_tol", cfg.adaptive_tol)) if v not in (-1, "", 0.0)}
    if cfg.sampler or cfg.steps or extra:
        policy.set_sampler(cfg.sampler or None, cfg.steps or None, **extra)
    saved_task = read_config(cfg.ckpt).get("task", {})
    task = cfg.task or saved_task.get("name", "")
    if not task:
        raise GenpolicyError(f"{cfg.ckpt}: the checkpoint does not name its task; pass task=<suite/name>")
    # every input is checked before the run directory exists, so a refused eval leaves nothing behind
    from genpolicy.envs.registry import task_spec
    from genpolicy.errors import DataError

    spec = task_spec(task, images=bool(policy.shape.cameras))
    if (spec.state_dim, spec.action_dim) != (policy.shape.state_dim, policy.shape.action_dim):
        raise DataError(f"task '{task}' has state/action dims ({spec.state_dim}, {spec.action_dim}) but {cfg.ckpt} "
                        f"expects ({policy.shape.state_dim}, {policy.shape.action_dim})")
    run_dir = make_run_dir(cfg.run, f"eval-{slug(task)}-{policy.cfg.sampler}{policy.cfg.steps}")
    kw = dict(n_envs=cfg.eval.n_envs, out_dir=run_dir / "eval", n_videos=cfg.eval.n_videos,
              images=bool(policy.shape.cameras), progress=cfg.run.progress,
              max_episode_steps=saved_task.get("max_episode_steps", 0) if not cfg.task else 0)
    if cfg.eval.split == "custom":
        res = evaluate(policy, task, n_episodes=cfg.eval.n_episodes, seed=cfg.eval.seed, **kw)
    else:
        res = evaluate_split(policy, task, cfg.eval.split, cfg.eval.n_episodes, **kw)
    where = "" if cfg.eval.split == "custom" else f" {cfg.eval.split} (seeds {res['seed']}..)"
    print(f"{task}: success_rate={res['success_rate']:.3f} mean_return={res['mean_return']:.2f} "
          f"over {res['n_episodes']}{where} episodes ({policy.cfg.sampler}, {policy.cfg.steps} steps)")
    print(f"success = {res['success_definition']}")
    print(f"wrote {run_dir / 'eval' / 'eval.json'}")
    return 0


def cmd_data(args: list[str]) -> int:
    from genpolicy.config import DataCommandConfig
    from genpolicy.datasets import io

    if not args or args[0] not in ("generate", "convert", "info", "expert", "view"):
        raise GenpolicyError("usage: genpolicy data generate|convert|info|expert|view ...")
    sub, rest = args[0], args[1:]
    positional, overrides = _split_args(rest)
    if sub == "info":
        if not positional and not any(o.startswith("input=") for o in overrides):
            raise GenpolicyError("usage: genpolicy data info <path>")
        path = positional[0] if positional else next(o.split("=", 1)[1] for o in overrides if o.startswith("input="))
        task = next((o.split("=", 1)[1] for o in overrides if o.startswith("task=")), "")
        print(io.info(path, task=task))
        return 0
    if sub in ("convert", "view"):
        names = ["input", "output"]
        overrides += [f"{n}={v}" for n, v in zip(names, positional)]
    cfg = compose("data", overrides, DataCommandConfig)
    if sub == "view":
        return _data_view(cfg, task_given=any(o.startswith(("task=", "task.name=")) for o in overrides))
    if sub == "expert":
        from genpolicy.experts.sac import default_expert_path, train_expert

        out = Path(cfg.output) if cfg.output else default_expert_path(cfg.task.name)
        res = train_expert(cfg.task.name, out, cfg.expert, progress=cfg.progress)
        print(f"wrote {out}: SAC expert for {cfg.task.name}, deterministic return {res['return']:.1f} after "
              f"{res['steps']} env steps")
        return 0
    if sub == "generate":
        from genpolicy.datasets.collect import generate
        from genpolicy.training.bc import default_data_path

        out = Path(cfg.output) if cfg.output else default_data_path(cfg.task.name)
        rb = generate(cfg.task.name, cfg.data.n_episodes, seed=cfg.data.seed, noise=cfg.data.noise,
                      detour_prob=cfg.data.detour_prob, images=cfg.task.images, keep_failed=cfg.data.keep_failed,
                      max_episode_steps=cfg.task.max_episode_steps, progress=cfg.progress,
                      expert_path=cfg.data.expert_path, image_size=cfg.task.image_size, out=out)
        print(f"wrote {out}: {rb.n_episodes} episodes, {rb.n_steps} steps; expert success rate "
              f"{rb.attrs['expert_success_rate']:.2f} over {rb.attrs['expert_attempts']} attempts "
              f"(success = {rb.attrs['success_definition']}); expert mean return {rb.attrs['expert_mean_return']:.1f}")
        return 0
    if not cfg.input or not cfg.output:
        raise GenpolicyError("usage: genpolicy data convert <input> <output> [format=zarr|lerobot]")
    out = io.convert(cfg.input, cfg.output, fmt=cfg.format or None, fps=cfg.fps, state_keys=cfg.state_keys or None)
    print(f"wrote {out}")
    return 0


def _data_view(cfg, task_given: bool) -> int:
    from genpolicy.datasets import view

    if bool(cfg.input) == bool(cfg.ckpt):
        raise GenpolicyError("usage: genpolicy data view <dataset> [episode=N] [output=x.rrd] [serve=true] | "
                             "genpolicy data view ckpt=<checkpoint> [rollout_seed=N] [output=x.rrd] [serve=true]")
    if cfg.ckpt:
        ep = view.rollout_frames(cfg.ckpt, seed=cfg.rollout_seed, task=cfg.task.name if task_given else "")
        default = Path(cfg.ckpt) / f"rollout_seed{cfg.rollout_seed}.rrd"
    else:
        ep = view.episode_frames(cfg.input, cfg.episode)
        default = Path(f"{Path(cfg.input).name}_episode{cfg.episode}.rrd")
    out = view.write_recording(ep, Path(cfg.output) if cfg.output else default)
    extra = f", success {bool(ep['success'][-1])}" if "success" in ep else ""
    print(f"wrote {out}: {ep['title']}, {len(ep['action'])} frames, cameras {sorted(ep['images'])}{extra} "
          f"(open with `rerun {out}`)")
    if cfg.serve:
        view.serve(ep, grpc_port=cfg.grpc_port, web_port=cfg.web_port, host=cfg.view_host)
    return 0


def cmd_envs(args: list[str]) -> int:
    from genpolicy.envs.catalog import EnvsMeasureConfig, describe_all, measure

    positional, overrides = _split_args(args)
    if positional in ([], ["list"]):
        unknown = [o for o in overrides if not o.startswith("results=")]
        if unknown:
            raise GenpolicyError(f"envs list: unknown override(s) {unknown}; only results=<envs.json> is accepted")
        results = next((Path(o.split("=", 1)[1]) for o in overrides), None)
        print(describe_all(results))
        return 0
    if positional == ["measure"]:
        cfg = compose("envs_measure", overrides, EnvsMeasureConfig)
        measure(cfg, command=" ".join(["genpolicy envs measure", *overrides]))
        print(f"wrote {Path(cfg.out) / 'envs.md'} and envs.json")
        return 0
    raise GenpolicyError("usage: genpolicy envs list [results=<envs.json>] | genpolicy envs measure [key=value ...]")


def cmd_demo(args: list[str]) -> int:
    from genpolicy.config import TrainConfig
    from genpolicy.training.demo import run_demo

    _, overrides = _split_args(args)
    cfg = compose("demo", overrides, TrainConfig)
    report = run_demo(cfg)
    print(f"report: {report}")
    return 0


def cmd_finetune(args: list[str]) -> int:
    from genpolicy.config import FinetuneConfig
    from genpolicy.finetune.ppo import finetune

    _, overrides = _split_args(args)
    cfg = compose("finetune", overrides, FinetuneConfig)
    res = finetune(cfg)
    print(f"run: {res['run_dir']}")
    print(f"{res['task']} {res['algo']}: success {res['start_success']:.2f} -> {res['final_success']:.2f}, return "
          f"{res['start_return']:.2f} -> {res['final_return']:.2f} in {res['env_steps']} env steps "
          f"({res['wallclock_s']:.0f} s); env steps to 90%: {res['env_steps_to_90']}")
    print(f"final checkpoint: {res['final_checkpoint']} (evaluates with the sampler it was fine-tuned with)")
    return 0


def cmd_bench(args: list[str]) -> int:
    from genpolicy.bench import BenchSamplerConfig, bench_sampler

    positional, overrides = _split_args(args)
    if positional != ["sampler"]:
        raise GenpolicyError("usage: genpolicy bench sampler [key=value ...] (see genpolicy/bench.py)")
    cfg = compose("bench_sampler", overrides, BenchSamplerConfig)
    res = bench_sampler(cfg, command=" ".join(["genpolicy bench sampler", *overrides]))
    for r in res["rows"]:
        comp = "-" if r["compiled_ms"] is None else f"{r['compiled_ms']:.3f}"
        print(f"{r['device']:5s} {r['net']:5s} b={r['batch']:<3d} {r['method']:8s} eager {r['eager_ms']:.3f} ms  "
              f"compiled {comp} ms  usual {r['usual_loop_ms']:.3f} ms  floor {r['floor_ms']:.3f} ms  "
              f"diff {r['max_abs_diff']:.1e}")
    print(f"wrote {Path(cfg.out) / 'sampler.md'} and sampler.json")
    return 0


def cmd_serve(args: list[str]) -> int:
    from genpolicy.config import ServeCommandConfig
    from genpolicy.real_robot.deploy import serve

    _, overrides = _split_args(args)
    serve(compose("serve", overrides, ServeCommandConfig))
    return 0


def cmd_deploy(args: list[str]) -> int:
    from genpolicy.config import DeployConfig
    from genpolicy.real_robot.deploy import deploy

    _, overrides = _split_args(args)
    res = deploy(compose("deploy", overrides, DeployConfig))
    c = res["clamps"]
    print(f"run: {res['run_dir']}")
    print(f"{res['task']} on robot={res['robot']} at {res['rate_hz']:.0f} Hz: success_rate={res['success_rate']:.2f} over "
          f"{res['n_episodes']} episodes (success = {res['success_definition']})")
    lat = "-" if res["latency_ms_p50"] is None else f"{res['latency_ms_p50']:.1f}"
    print(f"inference latency p50 {lat} ms, loop jitter p99 {res['jitter_p99_ms']:.2f} ms, overruns {res['overruns']}, safety: "
          + ", ".join(f"{k}={v}" for k, v in c.items()))
    if res["teleop"] != "none":
        print(f"teleop={res['teleop']}: intervention rate {res['intervention_rate']:.2f} "
              f"({sum(e['intervention_steps'] for e in res['episodes'])} teleop steps)")
    if res["dataset"]:
        print(f"recorded: {res['dataset']} (LeRobot v3)")
    return 0


def cmd_dagger(args: list[str]) -> int:
    from genpolicy.dagger import DaggerConfig, run_dagger

    _, overrides = _split_args(args)
    res = run_dagger(compose("dagger", overrides, DaggerConfig))
    print(f"run: {res['run_dir']}")
    for r in res["rounds"]:
        rate = "" if r["intervention_rate"] is None else f", intervention rate {r['intervention_rate']:.2f}"
        print(f"round {r['round']}: {r['labelled_steps']} labelled steps, rollout success {r['rollout_success']:.2f}"
              f"{rate}, eval success {r['eval_success']:.2f}")
    print(f"final checkpoint: {res['final_checkpoint']}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "data": cmd_data, "envs": cmd_envs, "demo": cmd_demo,
            "finetune": cmd_finetune, "bench": cmd_bench, "serve": cmd_serve, "deploy": cmd_deploy,
            "dagger": cmd_dagger}


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; user errors print one line and exit with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        print(f"error: unknown command '{argv[0]}'; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from genpolicy.quiet import quiet_third_party

    quiet_third_party()
    try:
        return cmd(argv[1:])
    except GenpolicyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(str(e).split())
        print(f"error: invalid config: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (resume with run.dir=<run> run.resume=true)", file=sys.stderr)
        return 130
    finally:
        # GL contexts of envs that an error path left open: closed now, not by __del__ after EGL is torn down
        if "genpolicy.envs.mjrender" in sys.modules:
            sys.modules["genpolicy.envs.mjrender"].close_all()


if __name__ == "__main__":
    sys.exit(main())
