"""Runtime tests run the Triton kernels on the CPU through Triton's interpreter."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere
