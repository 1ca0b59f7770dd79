"""Policy registry: `policy.type` -> class."""

from __future__ import annotations

from genpolicy.config import PolicyConfig
from genpolicy.policies.base import GenerativePolicy, ShapeMeta
from genpolicy.policies.diffusion import DiffusionPolicy
from genpolicy.policies.flow import FlowPolicy

POLICIES: dict[str, type[GenerativePolicy]] = {"diffusion": DiffusionPolicy, "flow": FlowPolicy}


def make_policy(cfg: PolicyConfig, shape: ShapeMeta) -> GenerativePolicy:
    """Build an untrained policy of type cfg.type."""
    return POLICIES[cfg.type](cfg, shape)


__all__ = ["GenerativePolicy", "ShapeMeta", "DiffusionPolicy", "FlowPolicy", "make_policy", "POLICIES"]
