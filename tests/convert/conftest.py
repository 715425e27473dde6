"""Converter tests: make the test-only reference libraries importable after TensorFlow.

torch imports triton lazily (timm -> torchvision -> torch ops), and importing triton's LLVM after
TensorFlow's segfaults the process (torch 2.14.1, triton 3.8.0, tensorflow-cpu 2.21.0). These
tests run torch on the CPU only, where triton is never used: `import triton` is made to fail
(torch then treats it as absent). Nothing changes if triton is already loaded.
"""

import sys

sys.modules.setdefault("triton", None)
