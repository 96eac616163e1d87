"""Walk a live ``torch.nn.Module`` without importing torch: the module is duck-typed.

- a Linear is anything with ``in_features``, ``out_features`` and ``weight``;
- an Embedding has ``num_embeddings``, ``embedding_dim`` and ``weight``;
- fused MoE experts (gpt-oss ``GptOssExperts``, transformers v5 fused experts) are a module with 3D
  ``gate_up_proj``/``down_proj`` parameters (or MXFP4 ``gate_up_proj_blocks``); each becomes one
  module ``<experts>.gate_up_proj`` / ``<experts>.down_proj`` with num_experts = E;
- per-expert ``ModuleList`` experts are ordinary Linears named ``...experts.{e}.w1`` and are
  classified by name like checkpoint tensors;
- a router that is not a Linear (transformers v5 ``Qwen3MoeTopKRouter``, ``GptOssTopKRouter``: a 2D
  ``weight`` of shape (experts, hidden) and no ``in_features``) is listed under its own name when that
  name ends in ``gate`` or ``router``.
"""

from __future__ import annotations

from .tensor_names import TORCH_DTYPES, Entry, fix_fused_expert_layout

FUSED_EXPERT_PARAMS = ("gate_up_proj", "down_proj")


def _dtype(tensor) -> str:
    text = str(getattr(tensor, "dtype", "bfloat16")).removeprefix("torch.")
    return TORCH_DTYPES.get(text, text)


def _shape(tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(tensor, "shape", ()))


def _fused_experts(name: str, module) -> list[Entry]:
    out = []
    for param in FUSED_EXPERT_PARAMS:
        full = f"{name}.{param}" if name else param
        blocks = getattr(module, param + "_blocks", None)
        if blocks is not None and len(_shape(blocks)) == 4:  # (E, N, K/32, 16) bytes
            e, n, kb, b = _shape(blocks)
            out.append(Entry(full, n, kb * b * 2, e, "mxfp4", (full + "_blocks", full + "_scales")))
            continue
        w = getattr(module, param, None)
        s = _shape(w)
        if len(s) == 3:  # read as [E, in, out]; fix_fused_expert_layout flips [E, out, in] pairs
            out.append(Entry(full, s[2], s[1], s[0], _dtype(w), (full,)))
    return out


def entries_from_module(model) -> tuple[list[Entry], int]:
    """The model's weight-bearing modules as entries, and the attention head size (0 if unknown)."""
    entries: list[Entry] = []
    head_dim = 0
    for name, module in model.named_modules():
        if hasattr(module, "in_features") and hasattr(module, "out_features") and hasattr(module, "weight"):
            entries.append(Entry(name, int(module.out_features), int(module.in_features), 1,
                                 _dtype(module.weight), (f"{name}.weight",)))
        elif hasattr(module, "num_embeddings") and hasattr(module, "embedding_dim"):
            entries.append(Entry(name, int(module.num_embeddings), int(module.embedding_dim), 1,
                                 _dtype(getattr(module, "weight", None)), (f"{name}.weight",), True))
        elif any(len(_shape(getattr(module, p, None))) == 3 or hasattr(module, p + "_blocks")
                 for p in FUSED_EXPERT_PARAMS):
            entries.extend(_fused_experts(name, module))
        elif name.rsplit(".", 1)[-1] in ("gate", "router") and len(_shape(getattr(module, "weight", None))) == 2:
            n, k = _shape(module.weight)
            entries.append(Entry(name, n, k, 1, _dtype(module.weight), (f"{name}.weight",)))
        if not head_dim and hasattr(module, "k_proj"):
            head_dim = int(getattr(module, "head_dim", 0) or 0)
    return fix_fused_expert_layout(entries), head_dim
