"""Read the header of a ``.safetensors`` file, never its tensor data, without torch or safetensors.

The format: 8 bytes little-endian ``u64`` header length ``L``, then ``L`` bytes of UTF-8 JSON mapping
each tensor name to ``{"dtype": "BF16", "shape": [N, K], "data_offsets": [begin, end]}`` (plus an
optional ``"__metadata__"`` string map), then the tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

from .diagnostics import Diagnostic, Span

# a header larger than this is not a real checkpoint's (DeepSeek-V3's biggest shard header is ~2 MB)
MAX_HEADER_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TensorHeader:
    name: str
    dtype: str  # the safetensors spelling: BF16, F8_E4M3, U8, I32, ...
    shape: tuple[int, ...]


def _error(code: str, path: str, message: str, hint: str) -> tuple[None, tuple[Diagnostic, ...]]:
    return None, (Diagnostic(code, "error", message, Span(path), hint),)


def read_header(path: str) -> tuple[dict[str, TensorHeader] | None, tuple[Diagnostic, ...]]:
    """Tensor name -> (dtype, shape), in header order; reads only ``8 + L`` bytes of the file."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return _error(
                    "QC804", path, f"truncated safetensors header: the file has {len(head)} bytes, "
                    "fewer than the 8-byte header length",
                    "the file is cut short or is not a safetensors file; download it again")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8 or length > MAX_HEADER_BYTES:
                return _error(
                    "QC805", path, f"safetensors header length {length} is larger than the file "
                    f"({size} bytes)",
                    "the file is truncated or is not a safetensors file; download it again")
            raw = f.read(length)
    except OSError as e:
        return _error("QC803", path, f"cannot read {path}: {e.strerror or e}",
                      "check the path and the file's permissions")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return _error("QC806", path, f"safetensors header is not valid JSON: {e}",
                      "the file is damaged or is not a safetensors file")
    if not isinstance(doc, dict):
        return _error("QC806", path, "safetensors header is not a JSON object",
                      "the file is damaged or is not a safetensors file")
    out: dict[str, TensorHeader] = {}
    for name, entry in doc.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            return _error("QC806", path, f"safetensors header entry '{name}' is not an object",
                          "the file is damaged or is not a safetensors file")
        dtype, shape = entry.get("dtype"), entry.get("shape")
        if not isinstance(dtype, str) or not isinstance(shape, list) or \
                not all(isinstance(d, int) and d >= 0 for d in shape):
            return _error("QC806", path, f"safetensors header entry '{name}' has no valid dtype/shape",
                          "the file is damaged or is not a safetensors file")
        out[name] = TensorHeader(name, dtype, tuple(shape))
    return out, ()
