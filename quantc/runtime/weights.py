"""Checkpoint tensors for ``apply(..., weights=...)``, read lazily.

A state dict, one ``.safetensors`` file or a checkpoint directory of them. Safetensors files are
opened with ``safe_open`` and a tensor is read only when the module that owns it is prepared, so
applying a plan to a model on the meta device holds at most the quantized modules plus one module's
high-precision tensors at a time, never the whole checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


class WeightSource(Mapping):
    def __init__(self, tensors: dict[str, torch.Tensor] | None = None, files: list[Path] | None = None):
        self._tensors = dict(tensors or {})
        self._file_of: dict[str, str] = {}
        self._handles: dict[str, object] = {}
        for f in files or ():
            from safetensors import safe_open

            handle = safe_open(str(f), framework="pt")
            self._handles[str(f)] = handle
            for key in handle.keys():
                self._file_of[key] = str(f)
        self._children: dict[str, list[str]] | None = None

    @classmethod
    def from_path(cls, path: str | Path) -> "WeightSource":
        p = Path(path)
        files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"no safetensors weights at {p}")
        return cls(files=files)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self._tensors:
            return self._tensors[key]
        f = self._file_of.get(key)
        if f is None:
            raise KeyError(key)
        return self._handles[f].get_tensor(key)

    def __iter__(self):
        yield from self._tensors
        yield from (k for k in self._file_of if k not in self._tensors)

    def __len__(self) -> int:
        return len(self._tensors) + sum(1 for k in self._file_of if k not in self._tensors)

    def __contains__(self, key) -> bool:
        return key in self._tensors or key in self._file_of

    def names_under(self, module: str) -> set[str]:
        self.under_keys(module)
        return {key[len(module) + 1:] for key in self._children.get(module, ())}

    def under_keys(self, module: str) -> list[str]:
        if self._children is None:
            self.under("")  # builds the index
        return list(self._children.get(module, ()))

    def is_float(self, key: str) -> bool:
        """Whether a tensor is stored in a floating dtype of 16 bits or more (bf16/fp16/fp32), without reading it."""
        if key in self._tensors:
            t = self._tensors[key]
            return t.is_floating_point() and t.element_size() >= 2
        return self._handles[self._file_of[key]].get_slice(key).get_dtype() in ("BF16", "F16", "F32", "F64")

    def read_part(self, key: str, bounds) -> torch.Tensor:
        """A tensor, or only its slice ``(dim, start, stop)`` along dim 0 or 1: a safetensors file is
        read for that slice alone (``get_slice``)."""
        if bounds is None:
            return self[key]
        dim, start, stop = bounds
        if key in self._tensors:
            return self._tensors[key].narrow(dim, start, stop - start).contiguous()
        part = self._handles[self._file_of[key]].get_slice(key)
        return (part[start:stop] if dim == 0 else part[:, start:stop]).contiguous()

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._tensors:
            return tuple(self._tensors[key].shape)
        return tuple(self._handles[self._file_of[key]].get_slice(key).get_shape())

    def under(self, module: str) -> dict[str, torch.Tensor]:
        """The tensors directly owned by ``module`` (``<module>.<name>``, no deeper), read now."""
        if self._children is None:
            children: dict[str, list[str]] = {}
            for key in self:
                parent, _, _ = key.rpartition(".")
                children.setdefault(parent, []).append(key)
            self._children = children
        prefix = len(module) + 1
        return {key[prefix:]: self[key] for key in self._children.get(module, ())}
