"""`genpolicy serve`: a policy server on TCP, and the client the controller uses.

Requests (dicts, see wire.py): {"op": "spec"} -> {"ok": true, "spec": {...}};
{"op": "infer", "obs": {key: array (To, ...)}, "id": n} -> {"ok": true, "id": n, "actions": array (H, Da), "infer_ms"}.
Every request carries "token" when the server has one. Errors come back as {"ok": false, "error": "..."}; a frame the
decoder refuses closes that connection. The server binds loopback by default and refuses a non-loopback address
without a token. Frames are capped in size, each frame must arrive within the deadline once it has started, and one
model serves one request at a time.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import threading
import time
from typing import Any

import numpy as np

from genpolicy.config import ServeConfig
from genpolicy.errors import GenpolicyError
from genpolicy.real_robot.inference import PolicyRunner, PolicySpec
from genpolicy.real_robot.wire import DeadlineExceeded, WireError, read_frame, send_frame

IDLE_TIMEOUT_S = 300.0  # a connected client may stay silent this long between requests


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


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
        self.stats = {"requests": 0, "errors": 0, "rejected_frames": 0, "auth_failures": 0}

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
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=self._serve_conn, args=(conn,), daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _serve_conn(self, conn: socket.socket) -> None:
        frame_s = self.cfg.deadline_ms / 1e3
        with conn:
            while not self._stop.is_set():
                try:
                    msg, codec = read_frame(conn, self.cfg.max_bytes, time.monotonic() + IDLE_TIMEOUT_S, frame_timeout=frame_s)
                except WireError as e:
                    self.stats["rejected_frames"] += 1
                    self._try_send(conn, {"ok": False, "error": f"rejected frame: {e}"}, "msgpack")
                    return  # the stream cannot be trusted after a bad frame
                except (DeadlineExceeded, ConnectionError, OSError):
                    return
                reply = self._handle(msg)
                if not self._try_send(conn, reply, codec):
                    return

    def _try_send(self, conn: socket.socket, reply: dict, codec: str) -> bool:
        try:
            send_frame(conn, reply, codec, self.cfg.max_bytes, time.monotonic() + self.cfg.deadline_ms / 1e3)
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
            t0 = time.perf_counter()
            try:
                with self._model_lock:
                    actions = np.asarray(self.runner.infer(obs), np.float32)
            except GenpolicyError as e:
                self.stats["errors"] += 1
                return {"ok": False, "error": str(e)}
            return {"ok": True, "id": msg.get("id"), "actions": actions, "infer_ms": (time.perf_counter() - t0) * 1e3}
        self.stats["errors"] += 1
        return {"ok": False, "error": f"unknown op {op!r} (spec | infer)"}


class PolicyClient:
    """A PolicyRunner over TCP. Every call has a deadline; after a timeout or a broken connection the next call
    reconnects (a late reply can never be mistaken for the answer to a newer request)."""

    def __init__(self, host: str, port: int, token: str = "", codec: str = "msgpack", deadline_s: float = 1.0,
                 max_bytes: int = 64 * 2**20) -> None:
        self.addr = (host, int(port))
        self.token, self.codec, self.deadline_s, self.max_bytes = token, codec, float(deadline_s), int(max_bytes)
        self._sock: socket.socket | None = None
        self._id = 0
        self.spec = PolicySpec.from_dict(self._call({"op": "spec"})["spec"], f"server {host}:{port}")

    def _connect(self, deadline: float) -> socket.socket:
        if self._sock is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"deadline passed before connecting to {self.addr[0]}:{self.addr[1]}")
            s = socket.create_connection(self.addr, timeout=left)
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
        try:
            sock = self._connect(deadline)
            send_frame(sock, msg, self.codec, self.max_bytes, deadline)
            reply, _ = read_frame(sock, self.max_bytes, deadline)
        except (DeadlineExceeded, WireError, OSError) as e:
            self.close()
            if isinstance(e, (DeadlineExceeded, WireError)):
                raise
            raise ConnectionError(f"policy server {self.addr[0]}:{self.addr[1]}: {e}") from None
        if not reply.get("ok"):
            raise GenpolicyError(f"policy server {self.addr[0]}:{self.addr[1]}: {reply.get('error', 'error')}")
        return reply

    def infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self._id += 1
        reply = self._call({"op": "infer", "obs": obs, "id": self._id})
        actions = reply.get("actions")
        if reply.get("id") != self._id or not isinstance(actions, np.ndarray):
            self.close()
            raise WireError(f"reply to request {self._id} is malformed (id {reply.get('id')!r})")
        if actions.shape != (self.spec.horizon, self.spec.action_dim):
            raise WireError(f"server sent actions of shape {actions.shape}, spec says {(self.spec.horizon, self.spec.action_dim)}")
        return actions.astype(np.float32)
