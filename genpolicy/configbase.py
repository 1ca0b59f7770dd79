"""Shared validation for the config schemas (genpolicy/*/config.py): `_check`, per-field type checks for configs
read from JSON, and size bounds. Imports nothing heavy: every schema module, and so the CLI, loads it first."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from numpy import bool_ as np_bool

from genpolicy.errors import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np_bool))


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np_bool))


_TYPE_CHECKS = {"int": _is_int, "float": _is_real, "str": lambda v: isinstance(v, str),
                "bool": lambda v: isinstance(v, (bool, np_bool))}
_TYPE_NAMES = {"int": ("an integer", "integers"), "float": ("a number", "numbers"), "str": ("a string", "strings"),
               "bool": ("true or false", "booleans")}


def _check_types(obj: Any, prefix: str) -> None:
    """Every field has its declared type. OmegaConf converts CLI values, but a saved config.json is built from JSON
    directly, where `"width": "512"`, `1e9` for an int or `true` for a number must be refused, not computed with."""
    for f in dataclasses.fields(obj):
        t, v = str(f.type), getattr(obj, f.name)
        if t in _TYPE_CHECKS:
            ok = _TYPE_CHECKS[t](v)
        elif t.startswith("list[") and t[5:-1] in _TYPE_CHECKS:
            ok = isinstance(v, (list, tuple)) and all(_TYPE_CHECKS[t[5:-1]](x) for x in v)
        else:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        want = f"a list of {_TYPE_NAMES[t[5:-1]][1]}" if t.startswith("list") else _TYPE_NAMES[t][0]
        _check(ok, f"{key} must be {want}, got {v!r:.60} ({type(v).__name__})")
        if t == "float":
            _check(math.isfinite(v), f"{key} must be finite, got {v}")


def _bounded(obj: Any, prefix: str, **bounds: tuple[int, int]) -> None:
    """Size fields within [lo, hi]: every one of them sizes an allocation, a loop or a thread pool, and a value like
    1e9 from a tampered config would exhaust memory instead of failing."""
    for name, (lo, hi) in bounds.items():
        v, key = getattr(obj, name), f"{prefix}.{name}" if prefix else name
        if isinstance(v, (list, tuple)):
            _check(all(lo <= x <= hi for x in v), f"{key} entries must be in [{lo}, {hi}], got {list(v)}")
        else:
            _check(lo <= v <= hi, f"{key} must be in [{lo}, {hi}], got {v}")
