"""Exporters of hemseg: ONNX FP32 / FP16 / INT8 and the TensorRT FP16 engine, each with its parity checks.

This package imports torch and onnx (the ``[train]`` extra) and, for the engine, TensorRT; the runtime never
imports it.
"""
