"""quantc: a quantization-plan compiler for LLM inference.

The compiler side (load, validate, inventory, lower, emit, plan I/O, CLI) imports neither torch nor
triton; ``quantc.runtime`` does, lazily.
"""

__version__ = "0.1.0"

__all__ = ["load_config", "compile", "load_plan", "QuantcError"]

from .diagnostics import QuantcError  # noqa: E402  (stdlib-only module)


def load_config(path):
    """Load, validate and merge a config file (YAML, TOML or JSON). Raises QuantcError."""
    from .validate import load_config as _load

    return _load(path)


def compile(config_or_path, model, *, gpu=None, tp=None, overrides=(), tables=(), strict=False):
    """Lower a config against a model (config.json / safetensors / torch module) into a Plan.

    Raises QuantcError carrying every diagnostic when the input is invalid or the plan infeasible.
    Warnings are kept on ``plan.warnings``.
    """
    from .diagnostics import has_errors
    from .pipeline import run_pipeline

    result = run_pipeline(config_or_path, model, gpu=gpu, tp=tp, overrides=overrides, tables=tables, strict=strict)
    if has_errors(result.diagnostics) or result.plan is None:
        raise QuantcError(result.diagnostics)
    return result.plan


def load_plan(path):
    """Load a compiled plan and check its format, version and self-hash. Raises QuantcError."""
    from .plan import load_plan as _load

    return _load(path)
