"""Policy registry: `policy.type` -> class.

The policy classes (and torch) are imported on first use, not with the package: `genpolicy.policies.config`, the
policy schemas, is imported by `genpolicy.config` and the CLI without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from genpolicy.policies.config import PolicyConfig

if TYPE_CHECKING:
    from genpolicy.policies.base import GenerativePolicy, ShapeMeta
    from genpolicy.policies.diffusion import DiffusionPolicy
    from genpolicy.policies.flow import FlowPolicy

    POLICIES: dict[str, type[GenerativePolicy]]

_LAZY = {"GenerativePolicy": "base", "ShapeMeta": "base", "DiffusionPolicy": "diffusion", "FlowPolicy": "flow"}


def _policies() -> dict[str, type[GenerativePolicy]]:
    """The registry, built (and kept in this module, so changes to it persist) on first use."""
    reg = globals().get("POLICIES")
    if reg is None:
        from genpolicy.policies.diffusion import DiffusionPolicy
        from genpolicy.policies.flow import FlowPolicy

        reg = globals()["POLICIES"] = {"diffusion": DiffusionPolicy, "flow": FlowPolicy}
    return reg


def __getattr__(name: str) -> Any:
    if name == "POLICIES":
        return _policies()
    if name in _LAZY:
        value = getattr(importlib.import_module(f"genpolicy.policies.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_policy(cfg: PolicyConfig, shape: ShapeMeta) -> GenerativePolicy:
    """Build an untrained policy of type cfg.type."""
    return _policies()[cfg.type](cfg, shape)


__all__ = ["GenerativePolicy", "ShapeMeta", "DiffusionPolicy", "FlowPolicy", "make_policy", "POLICIES"]
