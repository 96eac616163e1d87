"""The runtime: quantized modules, weight quantization and kernel launch (needs torch and triton).

``apply`` is imported lazily so ``import quantc.runtime`` stays cheap."""


def apply(model, plan, weights=None, *, rank=None, world=None, progress=True, device=None):
    """Quantize ``model`` in place as ``plan`` says (see ``quantc.runtime.apply_plan``); a model on the
    meta device is filled from ``weights`` on ``device``."""
    from .apply_plan import apply as _apply

    return _apply(model, plan, weights, rank=rank, world=world, progress=progress, device=device)


__all__ = ["apply"]
