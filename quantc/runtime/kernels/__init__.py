"""Triton kernels of the runtime. Each file: the kernel, its launcher and a plain-torch reference."""
