"""The deployable core of hemseg: preprocessing, readers and writers, backends and post-processing.

This package never imports torch, ``hemseg.train`` or ``hemseg.export``. CuPy and TensorRT are optional and are
imported lazily by the modules that need them.
"""
