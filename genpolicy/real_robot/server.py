"""`genpolicy serve`: a policy server on TCP, and the client the controller uses.

Requests (dicts, see wire.py): {"op": "spec"} -> {"ok": true, "spec": {...}};
{"op": "infer", "obs": {key: array (To, ...)}, "id": n} -> {"ok": true, "id": n, "actions": array (H, Da), "infer_ms"}.
Real-time execution (execution=rtc|bid) adds "prev": array (n, Da) (the plan in force from the observation's step),
"frozen": d and "rt": {mode, beta, schedule, bid_samples, bid_rho, bid_k}, validated like the deploy config.
Every request carries "token" when the server has one. Errors come back as {"ok": false, "error": "..."}; a frame the
decoder refuses closes that connection. The server binds loopback by default and refuses a non-loopback address
without a token. Frames are capped in size, each frame must arrive within the deadline once it has started, and one
model serves one request at a time.

Against hostile or leaky clients the server also bounds what they can hold: at most `serve.max_connections` open
connections (more are refused with an error reply), a connection silent for `serve.idle_timeout_s` is closed, and the
frames being received share a `serve.max_buffered_bytes` budget. Running out of file descriptors (EMFILE) or memory
while accepting only pauses the accept loop, which then keeps accepting. Observations with NaN or inf, and actions
that come out non-finite (e.g. from finite but huge inputs), are refused rather than served.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import threading
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from genpolicy.errors import GenpolicyError
from genpolicy.real_robot.config import ServeConfig
from genpolicy.real_robot.inference import ChunkRequest, PolicyRunner, PolicySpec
from genpolicy.real_robot.wire import DeadlineExceeded, WireError, read_frame, send_frame

ACCEPT_BACKOFF_MAX_S = 1.0  # longest pause of the accept loop after a failed accept (e.g. out of descriptors)


class _ByteBudget:
    """Bytes reserved by frames being received, across connections; a reservation beyond the cap is refused."""

    def __init__(self, cap: int) -> None:
        self.cap, self.used = cap, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.cap:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


class _Busy(WireError):
    """A frame refused for lack of buffer budget (not malformed; the client may retry)."""


class PolicyServer:
    """Serves one PolicyRunner. `start()` binds and returns (host, port); `close()` stops accepting and joins."""

    def __init__(self, runner: PolicyRunner, cfg: ServeConfig) -> None:
        if not _is_loopback(cfg.host) and not cfg.token:
            raise GenpolicyError(f"serve.host={cfg.host} is not a loopback address: set serve.token so that only "
                                 "your clients can drive the policy")
        self.runner, self.cfg = runner, cfg
        self._model_lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conn_lock = threading.Lock()
        self._open = 0  # connections being served
        self._budget = _ByteBudget(cfg.max_buffered_bytes)
        self.stats = {"requests": 0, "errors": 0, "rejected_frames": 0, "auth_failures": 0, "accept_errors": 0,
                      "refused_connections": 0, "refused_nonfinite": 0}

    def start(self) -> tuple[str, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.cfg.host, self.cfg.port))
        sock.listen(8)
        sock.settimeout(0.2)
        self._sock = sock
        t = threading.Thread(target=self._accept_loop, name="genpolicy-serve", daemon=True)
        t.start()
        self._threads.append(t)
        return sock.getsockname()[:2]

    def serve_forever(self) -> None:
        try:
            while not self._stop.is_set():
                self._stop.wait(0.5)
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        for t in list(self._threads):
            t.join(timeout=2.0)

    def _accept_loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set() or self._sock.fileno() < 0:
                    return  # closed by close()
                # EMFILE/ENFILE (descriptors exhausted), ENOBUFS/ENOMEM, ECONNABORTED: none is a reason to stop
                # serving for good. Pause (the pending client waits in the backlog) and accept again.
                self.stats["accept_errors"] += 1
                backoff = min(max(2 * backoff, 0.01), ACCEPT_BACKOFF_MAX_S)
                self._stop.wait(backoff)
                continue
            backoff = 0.0
            with self._conn_lock:
                full = self._open >= self.cfg.max_connections
                if not full:
                    self._open += 1
            if full:  # refuse at once: a parked thread per hostile connection is what the cap prevents
                self.stats["refused_connections"] += 1
                with conn:
                    self._try_send(conn, {"ok": False, "error": f"server busy: {self.cfg.max_connections} connections "
                                                                 "open (serve.max_connections); retry later"},
                                   "msgpack", timeout_s=0.1)
                continue
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t = threading.Thread(target=self._serve_conn, args=(conn,), daemon=True)
                t.start()
            except (OSError, RuntimeError):  # no thread to spare: drop this client, keep accepting
                with self._conn_lock:
                    self._open -= 1
                conn.close()
                self.stats["accept_errors"] += 1
                continue
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _serve_conn(self, conn: socket.socket) -> None:
        try:
            with conn:
                while not self._stop.is_set():
                    if not self._serve_one(conn):
                        return
        finally:
            with self._conn_lock:
                self._open -= 1

    def _serve_one(self, conn: socket.socket) -> bool:
        """One request and its reply; False when the connection is to be closed."""
        held = 0

        def reserve(n: int) -> None:  # called with the payload size once the header is in, before the payload
            nonlocal held
            if not self._budget.take(n):
                raise _Busy(f"server busy: a {n}-byte frame would exceed serve.max_buffered_bytes="
                            f"{self.cfg.max_buffered_bytes} held by frames being received; retry later")
            held = n

        try:
            try:
                msg, codec = read_frame(conn, self.cfg.max_bytes, time.monotonic() + self.cfg.idle_timeout_s,
                                        frame_timeout=self.cfg.deadline_ms / 1e3, on_header=reserve)
            except WireError as e:
                self.stats["rejected_frames"] += 1
                self._try_send(conn, {"ok": False, "error": str(e) if isinstance(e, _Busy) else f"rejected frame: {e}"},
                               "msgpack")
                return False  # the stream cannot be trusted after a bad frame (or one left unread)
            except (DeadlineExceeded, ConnectionError, OSError):  # idle past serve.idle_timeout_s, slow, or gone
                return False
            reply = self._handle(msg)
            del msg  # the request's arrays go before the budget is given back
            return self._try_send(conn, reply, codec)
        finally:
            self._budget.give(held)

    def _try_send(self, conn: socket.socket, reply: dict, codec: str, timeout_s: float | None = None) -> bool:
        try:
            wait = self.cfg.deadline_ms / 1e3 if timeout_s is None else timeout_s
            send_frame(conn, reply, codec, self.cfg.max_bytes, time.monotonic() + wait)
            return True
        except (WireError, DeadlineExceeded, OSError):
            return False

    def _handle(self, msg: dict) -> dict:
        self.stats["requests"] += 1
        if self.cfg.token and not hmac.compare_digest(str(msg.get("token", "")).encode(), self.cfg.token.encode()):
            self.stats["auth_failures"] += 1
            return {"ok": False, "error": "bad or missing token"}
        op = msg.get("op")
        if op == "spec":
            return {"ok": True, "spec": self.runner.spec.as_dict()}
        if op == "infer":
            obs = msg.get("obs")
            if not isinstance(obs, dict) or not all(isinstance(v, np.ndarray) for v in obs.values()):
                self.stats["errors"] += 1
                return {"ok": False, "error": "infer needs 'obs': a map of arrays"}
            bad = sorted(k for k, v in obs.items() if v.dtype.kind == "f" and not np.isfinite(v).all())
            if bad:
                self.stats["errors"] += 1
                self.stats["refused_nonfinite"] += 1
                return {"ok": False, "error": f"observation {', '.join(repr(k) for k in bad)} contains NaN or inf; "
                                              "refused (a policy cannot act on it)"}
            try:
                extra = _realtime_request(msg, self.runner.spec)
            except GenpolicyError as e:
                self.stats["errors"] += 1
                return {"ok": False, "error": str(e)}
            t0 = time.perf_counter()
            try:
                with self._model_lock:
                    actions = np.asarray(self.runner.infer(obs, *extra), np.float32)
            except GenpolicyError as e:
                self.stats["errors"] += 1
                return {"ok": False, "error": str(e)}
            if not np.isfinite(actions).all():  # e.g. finite but huge observations that overflow in the network
                self.stats["errors"] += 1
                self.stats["refused_nonfinite"] += 1
                return {"ok": False, "error": "the policy produced non-finite actions for this observation (values far "
                                              "outside the training range?); refused"}
            return {"ok": True, "id": msg.get("id"), "actions": actions, "infer_ms": (time.perf_counter() - t0) * 1e3}
        self.stats["errors"] += 1
        return {"ok": False, "error": f"unknown op {op!r} (spec | infer)"}


def _realtime_request(msg: dict, spec: PolicySpec) -> tuple:
    """() for a plain request, or (ChunkRequest, RealtimeSettings) checked like the deploy config: one-line errors."""
    if "rt" not in msg:
        return ()
    from genpolicy.real_robot.config import BIDConfig, RTCConfig
    from genpolicy.policies.realtime import RealtimeSettings

    rt, prev, frozen = msg.get("rt"), msg.get("prev"), msg.get("frozen", 0)
    if not isinstance(rt, dict) or rt.get("mode") not in ("rtc", "bid"):
        raise GenpolicyError("'rt' must be a map with mode rtc|bid")
    if prev is None:
        prev = np.zeros((0, spec.action_dim), np.float32)
    if not isinstance(prev, np.ndarray) or prev.ndim != 2 or prev.shape[1] != spec.action_dim \
            or prev.shape[0] > spec.horizon or prev.dtype.kind != "f" or not np.isfinite(prev).all():
        raise GenpolicyError(f"'prev' must be finite floats of shape (<= {spec.horizon}, {spec.action_dim})")
    if not isinstance(frozen, int) or isinstance(frozen, bool) or not 0 <= frozen <= 10_000:
        raise GenpolicyError("'frozen' must be an integer in [0, 10000]")
    try:
        RTCConfig(beta=rt.get("beta", 10.0), schedule=rt.get("schedule", "ones"))
        BIDConfig(samples=rt.get("bid_samples", 8), rho=rt.get("bid_rho", 0.5), k=rt.get("bid_k", 3))
        settings = RealtimeSettings(**{k: rt[k] for k in ("mode", "beta", "schedule", "bid_samples", "bid_rho", "bid_k")
                                       if k in rt})
    except (GenpolicyError, TypeError) as e:
        raise GenpolicyError(f"bad real-time settings: {e}") from None
    return ChunkRequest(prev.astype(np.float64), frozen), settings


class PolicyClient:
    """A PolicyRunner over TCP. Every call has a deadline; after a timeout or a broken connection the next call
    reconnects (a late reply can never be mistaken for the answer to a newer request)."""

    def __init__(self, host: str, port: int, token: str = "", codec: str = "msgpack", deadline_s: float = 1.0,
                 max_bytes: int = 64 * 2**20, realtime: Any = None) -> None:
        """`realtime` (policies.realtime.RealtimeSettings): sent with every request that carries a ChunkRequest."""
        self.realtime = realtime
        if not 1 <= int(port) <= 65535:
            raise GenpolicyError(f"policy server {host}:{port}: port must be in 1-65535")
        self.addr = (host, int(port))
        self.token, self.codec, self.deadline_s, self.max_bytes = token, codec, float(deadline_s), int(max_bytes)
        self._sock: socket.socket | None = None
        self._id = 0
        try:
            spec = self._call({"op": "spec"})["spec"]
        except ConnectionError as e:  # at start-up a failed connection is the user's input error: one line
            raise GenpolicyError(str(e)) from None
        self.spec = PolicySpec.from_dict(spec, f"server {host}:{port}")

    def _connect(self, deadline: float) -> socket.socket:
        if self._sock is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"deadline passed before connecting to {self.addr[0]}:{self.addr[1]}")
            try:
                s = socket.create_connection(self.addr, timeout=left)
            except socket.timeout:
                raise DeadlineExceeded(f"policy server {self.addr[0]}:{self.addr[1]}: no connection within the "
                                       f"deadline ({self.deadline_s:.2f} s)") from None
            except (OSError, OverflowError, UnicodeError) as e:
                what = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise ConnectionError(f"policy server {self.addr[0]}:{self.addr[1]}: cannot connect ({what})") from None
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = s
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self.deadline_s
        if self.token:
            msg = msg | {"token": self.token}
        for attempt in (0, 1):
            reused = self._sock is not None
            try:
                sock = self._connect(deadline)
                send_frame(sock, msg, self.codec, self.max_bytes, deadline)
                reply, _ = read_frame(sock, self.max_bytes, deadline)
                break
            except (DeadlineExceeded, WireError, OSError) as e:
                self.close()
                if isinstance(e, (DeadlineExceeded, WireError)):
                    raise
                # the server closes idle connections: a kept-alive socket found closed is retried once, fresh
                if reused and attempt == 0 and time.monotonic() < deadline:
                    continue
                if str(e).startswith("policy server "):
                    raise
                raise ConnectionError(f"policy server {self.addr[0]}:{self.addr[1]}: {e}") from None
        if not reply.get("ok"):
            raise GenpolicyError(f"policy server {self.addr[0]}:{self.addr[1]}: {reply.get('error', 'error')}")
        return reply

    def infer(self, obs: dict[str, np.ndarray], request: ChunkRequest | None = None) -> np.ndarray:
        self._id += 1
        msg: dict[str, Any] = {"op": "infer", "obs": obs, "id": self._id}
        if request is not None and self.realtime is not None:
            msg |= {"rt": asdict(self.realtime), "frozen": int(request.frozen)}
            if len(request.prev):  # an empty plan is left out (zero-size tensors do not travel in every codec)
                msg["prev"] = np.ascontiguousarray(request.prev, np.float32)
        reply = self._call(msg)
        actions = reply.get("actions")
        if reply.get("id") != self._id or not isinstance(actions, np.ndarray):
            self.close()
            raise WireError(f"reply to request {self._id} is malformed (id {reply.get('id')!r})")
        if actions.shape != (self.spec.horizon, self.spec.action_dim):
            raise WireError(f"server sent actions of shape {actions.shape}, spec says {(self.spec.horizon, self.spec.action_dim)}")
        return actions.astype(np.float32)
