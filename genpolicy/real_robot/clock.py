"""Clocks and the fixed-rate timer. The loop only ever asks a Clock, so tests drive it with FakeClock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Clock(Protocol):
    """Monotonic seconds. `sleep_until` may wake late, never early."""

    def now(self) -> float: ...

    def sleep_until(self, t: float) -> None: ...


class MonotonicClock:
    """time.monotonic (never jumps with wall-clock changes). Sleeps in one call: spinning would steal the core the
    inference thread needs on small machines; the measured lateness is what the cadence report shows."""

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float) -> None:
        dt = t - time.monotonic()
        if dt > 0:
            time.sleep(dt)


class FakeClock:
    """Simulated time. `sleep_until` jumps to the target plus `overshoot` (a model of late wake-ups); `advance`
    simulates work. Thread-safe, so a sim robot and the loop can share it."""

    def __init__(self, start: float = 0.0, overshoot: float = 0.0) -> None:
        self.t = float(start)
        self.overshoot = float(overshoot)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self.t

    def sleep_until(self, t: float) -> None:
        with self._lock:
            if t > self.t:
                self.t = t + self.overshoot

    def advance(self, dt: float) -> None:
        with self._lock:
            self.t += max(0.0, float(dt))


@dataclass
class CadenceReport:
    """How well the loop kept its rate. Lateness = wake-up time minus the scheduled tick."""

    rate_hz: float
    ticks: int
    overruns: int  # ticks whose work ran past the next tick (the missed ticks are skipped, not bunched)
    skipped_ticks: int
    jitter_p50_ms: float
    jitter_p99_ms: float
    jitter_max_ms: float
    work_p50_ms: float  # loop body time
    work_p99_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


@dataclass
class RateTimer:
    """Ticks at `rate_hz` on `clock`. Call `wait()` at the top of each loop iteration; it returns the tick index."""

    rate_hz: float
    clock: Clock
    period: float = field(init=False)
    _next: float | None = field(default=None, init=False)
    _tick_start: float | None = field(default=None, init=False)
    index: int = field(default=0, init=False)
    overruns: int = field(default=0, init=False)
    skipped: int = field(default=0, init=False)
    lateness: list[float] = field(default_factory=list, init=False)
    work: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if not self.rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")
        self.period = 1.0 / self.rate_hz

    def wait(self) -> int:
        """Sleep until the next tick; returns its index (ticks skipped after an overrun are counted, not run)."""
        now = self.clock.now()
        if self._next is None:  # first tick runs at once
            self._next = now
        else:
            self.work.append(now - (self._tick_start or now))
            if now > self._next:  # the body overran into the next tick
                self.overruns += 1
                missed = int((now - self._next) // self.period) + 1
                self.skipped += missed
                self.index += missed
                self._next += missed * self.period
            self.clock.sleep_until(self._next)
        woke = self.clock.now()
        self.lateness.append(max(0.0, woke - self._next))
        self._tick_start = woke
        tick = self.index
        self.index += 1
        self._next += self.period
        return tick

    def report(self) -> CadenceReport:
        lat = np.asarray(self.lateness or [0.0]) * 1e3
        work = np.asarray(self.work or [0.0]) * 1e3
        return CadenceReport(rate_hz=self.rate_hz, ticks=len(self.lateness), overruns=self.overruns, skipped_ticks=self.skipped,
                             jitter_p50_ms=float(np.percentile(lat, 50)), jitter_p99_ms=float(np.percentile(lat, 99)),
                             jitter_max_ms=float(lat.max()), work_p50_ms=float(np.percentile(work, 50)),
                             work_p99_ms=float(np.percentile(work, 99)))
