"""quantc: a quantization-plan compiler for LLM inference.

The compiler side (load, validate, inventory, lower, emit, plan I/O, CLI) imports neither torch nor
triton; ``quantc.runtime`` does, lazily.
"""

__version__ = "0.1.0"
