"""`genpolicy train` under torchrun, leaving evidence for tests/test_ddp.py (not a test module itself).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py <out_dir> train key=value ...

Each rank writes <out_dir>/rank<r>.safetensors with its final parameters (`model.*`) and EMA (`ema.*`) as they are in
memory, plus the weights it started from (`init.*`, fitted normaliser included), so the test can compare ranks with
each other, with rank 0's checkpoint, and with a single-process replay. DDP_WORKER_CRASH=<rank>:<step> makes that
rank raise in that step, to check that the others do not hang.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from genpolicy import cli
from genpolicy.training.ema import EMA

seen: dict = {}
_ema_init, _ema_update = EMA.__init__, EMA.update


def _init_spy(self: EMA, model, *args, **kwargs) -> None:
    # EMA is built right after the policy is constructed and its normaliser fitted: the replica's starting point
    seen["init"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _ema_init(self, model, *args, **kwargs)
    seen["ema"] = self


def _update_spy(self: EMA, model, step: int) -> None:
    if os.environ.get("DDP_WORKER_CRASH") == f"{os.environ['RANK']}:{step}":  # fault injection: this rank dies here
        raise RuntimeError(f"injected failure on rank {os.environ['RANK']} at step {step}")
    seen["model"] = model
    _ema_update(self, model, step)


if __name__ == "__main__":
    EMA.__init__, EMA.update = _init_spy, _update_spy  # type: ignore[method-assign]
    out = Path(sys.argv[1])
    code = cli.main(sys.argv[2:])
    if code == 0:
        tensors = {f"init.{k}": v for k, v in seen["init"].items()}
        tensors.update({f"model.{k}": v.detach().clone() for k, v in seen["model"].state_dict().items()})
        tensors.update({f"ema.{k}": v.detach().clone() for k, v in seen["ema"].model.state_dict().items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{os.environ['RANK']}.safetensors"))
    sys.exit(code)
