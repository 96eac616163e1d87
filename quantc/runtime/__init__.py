"""The runtime: quantized modules, weight quantization and kernel launch (needs torch and triton).

``apply`` is imported lazily so ``import quantc.runtime`` stays cheap."""


def apply(model, plan, weights=None, *, rank=None, world=None, progress=True):
    """Quantize ``model`` in place as ``plan`` says (see ``quantc.runtime.apply_plan``)."""
    from .apply_plan import apply as _apply

    return _apply(model, plan, weights, rank=rank, world=world, progress=progress)


__all__ = ["apply"]
