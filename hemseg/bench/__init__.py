"""``hemseg-bench``: every inference path side by side on the same inputs, against the paper's PyTorch path.

- ``stats``: latency summaries.
- ``machine``: what the numbers were measured on.
- ``pipeline``: one measured path = preprocessing + a Runner + post-processing, timed by stage.
- ``paths``: the registry of paths (torch, ort, ort-fp16, ort-int8, ort-cuda, trt, torch-cuda...), each either built or
  skipped with a reason.
- ``harness``: the measurement loop; ``output``: console table, JSON, Markdown, PNG chart; ``regen``: BENCHMARKS.md.
"""
