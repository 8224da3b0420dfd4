"""CUDA preprocessing for the hemseg runtime (optional; needs CuPy and a CUDA device at run time).

- ``preprocess.cu``: the kernels (resize INTER_LINEAR, CLAHE, non-local means, bilateral, normalize), compiled by
  NVRTC through CuPy.
- :mod:`~hemseg.runtime.cuda.gpu_preprocess`: :class:`GpuPreprocessor`, the CuPy driver (CuPy imported lazily).
- :mod:`~hemseg.runtime.cuda.tables`: the OpenCV-exact host tables both the kernels and the reference use.
- :mod:`~hemseg.runtime.cuda.reference`: the numpy mirror of the kernels, checked against OpenCV on CPU.

Importing this package never imports CuPy.
"""

from __future__ import annotations

from hemseg.runtime.cuda.gpu_preprocess import CU_SOURCE, GpuPreprocessor, kernel_source

__all__ = ["CU_SOURCE", "GpuPreprocessor", "kernel_source"]
