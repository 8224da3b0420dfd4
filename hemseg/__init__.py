"""hemseg: spinal hemangioma segmentation from training to an embedded scanner workstation.

Sub-packages:

- ``hemseg.runtime``: the deployable core (numpy, OpenCV, onnxruntime; CuPy/TensorRT optional). Never imports torch.
- ``hemseg.phantom``: the synthetic spine-MRI phantom (numpy + OpenCV).
- ``hemseg.train``: torch training, evaluation, baselines and reports.
- ``hemseg.export``: ONNX / FP16 / INT8 / TensorRT builders with parity checks.
- ``hemseg.bench``: the ``hemseg-bench`` harness.
"""

__version__ = "0.1.0"
