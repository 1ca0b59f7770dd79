"""The wire format of the policy server: length-prefixed frames, msgpack or safetensors, never pickle.

Frame: 4-byte magic (b"GPM1" msgpack, b"GPS1" safetensors) + 4-byte big-endian payload length + payload.
A message is a dict with str keys whose values are None, bool, int, float, str, bytes, lists, dicts, or numpy arrays
of plain numeric dtypes. Decoding refuses everything else (object/void/complex dtypes, msgpack ext types, non-str
map keys, trailing bytes, oversized frames) with a WireError; nothing on this path can run code.

msgpack arrays travel as {"__nd__": [dtype str, shape list, raw bytes]} (little-endian, C order).
safetensors frames carry the arrays as tensors named by their path ("obs/state") and every other field as JSON in the
header's __metadata__["msg"].
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any, Callable

import msgpack
import numpy as np

from genpolicy.errors import GenpolicyError

MAGIC = {"msgpack": b"GPM1", "safetensors": b"GPS1"}
CODEC_OF = {v: k for k, v in MAGIC.items()}
HEADER = struct.Struct("!4sI")
ALLOWED_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "float16", "float32", "float64")
MAX_DEPTH = 16
MAX_ST_HEADER = 1 << 20


class WireError(GenpolicyError):
    """A frame or message that the decoder refuses. The connection that sent it is closed."""


class DeadlineExceeded(GenpolicyError):
    """A call did not complete within its deadline."""


def _dtype(name: Any) -> np.dtype:
    if not isinstance(name, str) or name not in ALLOWED_DTYPES:
        raise WireError(f"array dtype {name!r} is not allowed (allowed: {', '.join(ALLOWED_DTYPES)})")
    return np.dtype(name).newbyteorder("<")


def _check_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > 8 or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                         and 0 <= s < 2**31 for s in shape):
        raise WireError(f"array shape {shape!r} is not a list of at most 8 non-negative ints")
    return tuple(shape)


# ----------------------------------------------------------------------------------------------------------------------
# msgpack
# ----------------------------------------------------------------------------------------------------------------------
def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        dt = _dtype(obj.dtype.name)
        return {"__nd__": [obj.dtype.name, list(obj.shape), np.ascontiguousarray(obj, dtype=dt).tobytes()]}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise WireError(f"cannot send a value of type {type(obj).__name__} (only plain data and numeric numpy arrays)")


def _array_from(spec: Any) -> np.ndarray:
    if not isinstance(spec, list) or len(spec) != 3 or not isinstance(spec[2], bytes):
        raise WireError("malformed array: expected [dtype, shape, bytes]")
    dt, shape = _dtype(spec[0]), _check_shape(spec[1])
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n * dt.itemsize != len(spec[2]):
        raise WireError(f"array data is {len(spec[2])} bytes, dtype {spec[0]} with shape {list(shape)} needs {n * dt.itemsize}")
    return np.frombuffer(spec[2], dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=True)


def _object_hook(d: dict) -> Any:
    if "__nd__" in d:
        if len(d) != 1:
            raise WireError("an array map must hold only the __nd__ key")
        return _array_from(d["__nd__"])
    return d


def _ext_hook(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not allowed")


def _depth_ok(obj: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise WireError(f"message nests deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for v in obj.values():
            _depth_ok(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _depth_ok(v, depth + 1)


# ----------------------------------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------------------------------
def _split_arrays(msg: dict, prefix: str = "") -> tuple[dict, dict[str, np.ndarray]]:
    plain, arrays = {}, {}
    for k, v in msg.items():
        if "/" in k:
            raise WireError(f"key {k!r}: '/' is reserved by the safetensors codec")
        if isinstance(v, np.ndarray):
            _dtype(v.dtype.name)
            arrays[prefix + k] = np.ascontiguousarray(v)
        elif isinstance(v, dict) and v and all(isinstance(x, np.ndarray) for x in v.values()):
            sub_plain, sub_arrays = _split_arrays(v, prefix + k + "/")
            arrays.update(sub_arrays)
        else:
            plain[k] = v
    return plain, arrays


def _encode_safetensors(msg: dict) -> bytes:
    from safetensors.numpy import save

    plain, arrays = _split_arrays(msg)
    try:
        meta = json.dumps(plain, default=_json_default)
    except TypeError as e:
        raise WireError(f"safetensors codec: {e}") from None
    return save(arrays, metadata={"msg": meta})


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"cannot send a value of type {type(obj).__name__}")


def _decode_safetensors(payload: bytes) -> dict:
    if len(payload) < 8:
        raise WireError("safetensors payload shorter than its 8-byte header length")
    (hlen,) = struct.unpack("<Q", payload[:8])
    if hlen > MAX_ST_HEADER or 8 + hlen > len(payload):
        raise WireError(f"safetensors header length {hlen} is out of bounds")
    try:
        header = json.loads(payload[8:8 + hlen])
        meta = header.get("__metadata__") or {}
        plain = json.loads(meta.get("msg", "{}"))
    except (ValueError, AttributeError, TypeError) as e:
        raise WireError(f"safetensors header is not valid JSON: {e}") from None
    if not isinstance(plain, dict):
        raise WireError("safetensors metadata 'msg' must be a JSON object")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise WireError(f"safetensors tensor {name!r} has a malformed header entry")
        _dtype({"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
                "U16": "uint16", "U32": "uint32", "F16": "float16", "F32": "float32", "F64": "float64"}.get(info.get("dtype")))
        _check_shape(info.get("shape"))
    try:
        from safetensors.numpy import load

        arrays = load(payload)
    except Exception as e:  # the library's own error types vary by version; all mean "malformed"
        raise WireError(f"safetensors payload rejected: {type(e).__name__}: {e}") from None
    for path, arr in arrays.items():
        parts = path.split("/")
        if len(parts) > 2 or not all(parts):
            raise WireError(f"safetensors tensor name {path!r} must be 'key' or 'key/sub'")
        if len(parts) == 1:
            plain[parts[0]] = arr
        else:
            sub = plain.setdefault(parts[0], {})
            if not isinstance(sub, dict):
                raise WireError(f"safetensors tensor {path!r} collides with field {parts[0]!r}")
            sub[parts[1]] = arr
    return plain


# ----------------------------------------------------------------------------------------------------------------------
# frames
# ----------------------------------------------------------------------------------------------------------------------
def encode(msg: dict, codec: str = "msgpack") -> bytes:
    """A message -> one frame (header + payload)."""
    if codec not in MAGIC:
        raise WireError(f"unknown codec {codec!r} (msgpack | safetensors)")
    if not isinstance(msg, dict):
        raise WireError("a message must be a dict")
    if codec == "msgpack":
        payload = msgpack.packb(msg, default=_pack_default, use_bin_type=True, strict_types=False)
    else:
        payload = _encode_safetensors(msg)
    return HEADER.pack(MAGIC[codec], len(payload)) + payload


def parse_header(header: bytes, max_bytes: int) -> tuple[str, int]:
    """The 8 header bytes -> (codec, payload length), refusing unknown magic and oversized frames."""
    if len(header) != HEADER.size:
        raise WireError(f"frame header must be {HEADER.size} bytes, got {len(header)}")
    magic, n = HEADER.unpack(header)
    if magic not in CODEC_OF:
        raise WireError(f"unknown frame magic {magic!r} (a genpolicy peer sends GPM1 or GPS1)")
    if n > max_bytes:
        raise WireError(f"frame of {n} bytes exceeds the cap of {max_bytes} bytes")
    return CODEC_OF[magic], n


def decode_payload(payload: bytes, codec: str, max_bytes: int) -> dict:
    """One payload -> a message dict. Raises WireError, and nothing else, on any malformed input."""
    if len(payload) > max_bytes:
        raise WireError(f"payload of {len(payload)} bytes exceeds the cap of {max_bytes} bytes")
    if codec == "safetensors":
        msg = _decode_safetensors(payload)
    elif codec == "msgpack":
        try:
            msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True, object_hook=_object_hook,
                                  ext_hook=_ext_hook)
        except WireError:
            raise
        except Exception as e:  # msgpack raises ValueError, TypeError, ExtraData, FormatError, StackError, ...
            raise WireError(f"malformed msgpack payload: {type(e).__name__}: {str(e)[:200]}") from None
    else:
        raise WireError(f"unknown codec {codec!r}")
    if not isinstance(msg, dict):
        raise WireError(f"a message must be a map, got {type(msg).__name__}")
    _depth_ok(msg)
    return msg


def decode(frame: bytes, max_bytes: int = 64 * 2**20) -> dict:
    """A whole frame -> a message (the decoder the fuzz test drives)."""
    codec, n = parse_header(frame[:HEADER.size], max_bytes)
    payload = frame[HEADER.size:]
    if len(payload) != n:
        raise WireError(f"frame says {n} payload bytes, {len(payload)} present")
    return decode_payload(payload, codec, max_bytes)


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"deadline passed while receiving ({len(buf)} of {n} bytes)")
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except socket.timeout:
            raise DeadlineExceeded(f"deadline passed while receiving ({len(buf)} of {n} bytes)") from None
        if not chunk:
            raise ConnectionError(f"peer closed the connection ({len(buf)} of {n} bytes received)")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, max_bytes: int, deadline: float, frame_timeout: float | None = None,
               on_header: Callable[[int], None] | None = None) -> tuple[dict, str]:
    """Read one frame; returns (message, codec). Waits for its first byte until `deadline` (monotonic); the rest must
    arrive by `deadline`, or within `frame_timeout` seconds of the first byte when given (a server's idle wait).
    `on_header(n)` is called with the payload length before the payload is received (a server reserves its buffer
    there, and may refuse by raising WireError)."""
    head = _recv_exact(sock, 1, deadline)
    rest = time.monotonic() + frame_timeout if frame_timeout is not None else deadline
    head += _recv_exact(sock, HEADER.size - 1, rest)
    codec, n = parse_header(head, max_bytes)
    if on_header is not None:
        on_header(n)
    return decode_payload(_recv_exact(sock, n, rest), codec, max_bytes), codec


def send_frame(sock: socket.socket, msg: dict, codec: str, max_bytes: int, deadline: float) -> None:
    frame = encode(msg, codec)
    if len(frame) - HEADER.size > max_bytes:
        raise WireError(f"message of {len(frame) - HEADER.size} bytes exceeds the cap of {max_bytes} bytes")
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("deadline passed before sending")
    sock.settimeout(left)
    try:
        sock.sendall(frame)
    except socket.timeout:
        raise DeadlineExceeded("deadline passed while sending") from None
