"""Safety filter (order, counts, the finite/limits property) and the wire decoder (refusals, pickle, fuzzing)."""

from __future__ import annotations

import pickle
import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genpolicy.config import SafetyConfig
from genpolicy.real_robot.safety import SafetyFilter
from genpolicy.real_robot.wire import MAGIC, WireError, decode, encode

LOW, HIGH = np.array([-1.0, -2.0, 0.0]), np.array([1.0, 2.0, 10.0])


def _filter(**kw) -> SafetyFilter:
    cfg = SafetyConfig(**({"margin": 0.1, "max_delta": 0.0, "max_velocity": 0.0} | kw))
    return SafetyFilter.from_config(cfg, LOW, HIGH, dt=0.1)


def test_nonfinite_means_hold_never_a_range_end() -> None:
    f = _filter()
    hold = np.array([0.2, -0.3, 4.0])
    for bad in (np.nan, np.inf, -np.inf):
        r = f(np.array([0.0, bad, 1.0]), hold)
        assert r.held and r.clamped["nonfinite"]
        assert np.array_equal(r.action, hold)
    assert f.counts["nonfinite"] == 3 and f.counts["position"] == 0


def test_stages_in_order_and_counted() -> None:
    f = _filter(max_delta=0.05, max_velocity=1.0, workspace_dims=[2], workspace_low=[2.0], workspace_high=[3.0])
    hold = np.zeros(3)
    # position: margin 0.1 of each range -> [-0.8, 0.8], [-1.6, 1.6], [1, 9]
    r = f(np.array([5.0, 0.0, 2.5]), hold)
    assert r.clamped["position"] and np.allclose(r.action, [0.8, 0.0, 2.5])
    # delta against the present measured value: +-0.05 * range = 0.1, 0.2, 0.5
    f.reset()
    r = f(np.array([0.5, 1.0, 2.5]), hold, present=np.array([0.0, 0.0, 2.5]))
    assert r.clamped["delta"] and np.allclose(r.action, [0.1, 0.2, 2.5])
    # velocity against the last sent: 1.0 * range * dt = 0.2, 0.4, 1.0 per step
    r = f(np.array([0.8, -1.0, 2.5]), hold)
    assert r.clamped["velocity"] and np.allclose(r.action, [0.3, -0.2, 2.5])
    # workspace box on dim 2
    r = f(np.array([0.3, -0.2, 2.9]), hold)
    assert not r.clamped["workspace"]
    f.reset()
    r = f(np.array([0.3, -0.2, 8.0]), hold)
    assert r.clamped["workspace"] and np.isclose(r.action[2], 3.0)
    assert f.counts == {"nonfinite": 0, "position": 1, "delta": 1, "velocity": 1, "workspace": 1}


def test_margin_only_on_position_dims() -> None:
    f = SafetyFilter.from_config(SafetyConfig(margin=0.1), LOW, HIGH, 0.1, position_dims=np.array([False, True, True]))
    assert np.allclose(f.low, [-1.0, -1.6, 1.0]) and np.allclose(f.high, [1.0, 1.6, 9.0])


finite_or_not = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e30, 1e30))


@settings(max_examples=400, deadline=None)
@given(action=st.lists(finite_or_not, min_size=3, max_size=3), hold=st.lists(finite_or_not, min_size=3, max_size=3),
       present=st.one_of(st.none(), st.lists(finite_or_not, min_size=3, max_size=3)),
       prev=st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3), margin=st.floats(0, 0.49),
       delta=st.floats(0, 2), vel=st.floats(0, 50))
def test_property_any_action_in_finite_and_inside_limits_out(action, hold, present, prev, margin, delta, vel) -> None:
    f = SafetyFilter.from_config(SafetyConfig(margin=margin, max_delta=delta, max_velocity=vel,
                                              workspace_dims=[0], workspace_low=[-5.0], workspace_high=[-4.0]), LOW, HIGH, 0.05)
    f.last_sent = np.asarray(prev)  # whatever was sent before, even outside today's limits
    out = f(np.asarray(action), np.asarray(hold), None if present is None else np.asarray(present)).action
    assert np.all(np.isfinite(out))
    assert np.all(out >= f.low - 1e-12) and np.all(out <= f.high + 1e-12)


# --- wire ---------------------------------------------------------------------------------------------------------
def _msg() -> dict:
    return {"op": "infer", "id": 7, "token": "t", "obs": {"state": np.arange(8, dtype=np.float32).reshape(2, 4),
                                                          "image.front": np.arange(96, dtype=np.uint8).reshape(2, 3, 4, 4)}}


@pytest.mark.parametrize("codec", ["msgpack", "safetensors"])
def test_round_trip(codec: str) -> None:
    m = _msg()
    d = decode(encode(m, codec))
    assert d["op"] == "infer" and d["id"] == 7
    for k, v in m["obs"].items():
        assert d["obs"][k].dtype == v.dtype and np.array_equal(d["obs"][k], v)


def test_refusals_name_the_problem() -> None:
    import msgpack

    def frame(payload: bytes, magic: bytes = MAGIC["msgpack"]) -> bytes:
        return struct.pack("!4sI", magic, len(payload)) + payload

    with pytest.raises(WireError, match="dtype"):
        encode({"x": np.array([object()], dtype=object)})
    with pytest.raises(WireError, match="magic"):
        decode(b"PKL1" + b"\x00" * 10)
    with pytest.raises(WireError, match="exceeds the cap"):
        decode(struct.pack("!4sI", MAGIC["msgpack"], 10**9) + b"\x00", max_bytes=1 << 20)
    with pytest.raises(WireError, match="extension type"):
        decode(frame(msgpack.packb({"a": msgpack.ExtType(5, b"x")})))
    with pytest.raises(WireError):  # non-str map key
        decode(frame(msgpack.packb({1: 2})))
    with pytest.raises(WireError, match="needs"):  # data length does not match dtype x shape
        decode(frame(msgpack.packb({"a": {"__nd__": ["float32", [4], b"\x00" * 8]}})))
    with pytest.raises(WireError, match="not allowed"):
        decode(frame(msgpack.packb({"a": {"__nd__": ["object", [1], b"\x00" * 8]}})))
    with pytest.raises(WireError):  # trailing bytes after the message
        decode(frame(msgpack.packb({"a": 1}) + b"\x01"))
    with pytest.raises(WireError, match="map"):
        decode(frame(msgpack.packb([1, 2])))


class _Boom:
    def __reduce__(self):
        return (open, ("/tmp/genpolicy_pickle_was_executed", "w"))


def test_pickle_payloads_are_never_unpickled(monkeypatch, tmp_path) -> None:
    import os

    marker = "/tmp/genpolicy_pickle_was_executed"
    if os.path.exists(marker):
        os.remove(marker)
    calls = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a) or None)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append(a) or None)
    evil = pickle.dumps(_Boom())
    for magic in (MAGIC["msgpack"], MAGIC["safetensors"], b"\x80\x04\x95\x00"):
        with pytest.raises(WireError):
            decode(struct.pack("!4sI", magic, len(evil)) + evil)
    with pytest.raises(WireError):  # a pickle smuggled as array bytes of a bogus dtype
        decode(encode({"a": np.frombuffer(evil[: len(evil) // 8 * 8], np.uint8)})[:8] + evil)
    assert not calls and not os.path.exists(marker)


def test_fuzz_decoder_only_raises_wire_error() -> None:
    """12,000 inputs: random bytes, and valid frames (both codecs) with flipped bytes, truncations, insertions and
    rewritten lengths. Each must decode to a dict or raise WireError, never anything else."""
    rng = random.Random(0)
    seeds = [encode(_msg(), c) for c in ("msgpack", "safetensors")] + [encode({"ok": True, "actions": np.ones((16, 4), np.float32), "infer_ms": 1.5})]
    n_ok = n_refused = 0
    for i in range(12_000):
        kind = i % 4
        if kind == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
            if rng.random() < 0.5:  # give half of them a valid header so the payload decoders see garbage
                data = struct.pack("!4sI", rng.choice(list(MAGIC.values())), len(data)) + data
        else:
            data = bytearray(rng.choice(seeds))
            if kind == 1:
                for _ in range(rng.randint(1, 8)):
                    data[rng.randrange(len(data))] = rng.getrandbits(8)
            elif kind == 2:
                cut = rng.randrange(len(data))
                data = data[:cut] + data[cut + rng.randint(1, 16):]
                data[4:8] = struct.pack("!I", len(data) - 8)
            else:
                pos = rng.randrange(8, len(data))
                data = data[:pos] + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16))) + data[pos:]
                if rng.random() < 0.7:
                    data[4:8] = struct.pack("!I", len(data) - 8)
            data = bytes(data)
        try:
            out = decode(data, max_bytes=1 << 20)
        except WireError:
            n_refused += 1
        else:
            assert isinstance(out, dict)
            n_ok += 1
    assert n_ok + n_refused == 12_000 and n_refused > 6_000
