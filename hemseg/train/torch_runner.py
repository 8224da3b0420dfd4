"""PyTorch as a :class:`Runner` of the runtime's one pipeline (:mod:`hemseg.runtime.pipeline`): eager FP32 on the
CPU (the paper's path), CPU bf16 autocast + channels_last (``cpu_bf16``: PyTorch's best CPU mode on CPUs with
bf16 instructions, the ``torch-bf16`` bench path), and on CUDA FP32 / FP16 / BF16, optionally captured in a CUDA graph. Used by ``hemseg-bench``'s
torch paths, the export's FP32 parity gate and ``hemseg eval``. It lives on the torch side (``hemseg.train``) because
the runtime never imports torch.

The model's weights and activations are in the runner's precision (no autocast); a CUDA FP16 runner takes float16
device inputs as they are (``input_dtype``), so GPU preprocessing can write float16 directly; FP32 and BF16 runners
take float32 (the preprocessing writes no bfloat16) and convert on the device."""

from __future__ import annotations

import numpy as np
import torch

from hemseg.runtime.backends.base import Runner, now_ms

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(Runner):
    """Eager (or CUDA-graph) PyTorch inference of a hemseg model; ``precision`` fp32 / fp16 / bf16 (``half=True`` is
    fp16)."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu", half: bool = False, cuda_graph: bool = False,
                 precision: str | None = None, cpu_bf16: bool = False):
        super().__init__()
        if cpu_bf16 and (device != "cpu" or precision not in (None, "fp32") or half):
            raise ValueError("cpu_bf16 is the CPU autocast path (FP32 weights)")
        #: CPU bf16: weights stay FP32, ``torch.autocast("cpu", torch.bfloat16)`` runs convolutions in bf16, and
        #: model and input are channels_last (the layout oneDNN's bf16 kernels want)
        self.cpu_bf16 = cpu_bf16
        precision = precision or ("fp16" if half else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        if (precision != "fp32" or cuda_graph) and not self.on_gpu:
            raise ValueError("FP16, BF16 and CUDA graphs are CUDA-only torch paths")
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        if precision == "fp16":
            self.input_dtype = np.dtype(np.float16)
        self.model = model.to(self.device, self.dtype).eval()
        if self.on_gpu or cpu_bf16:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.cuda_graph = cuda_graph
        self.name = ("torch" + ("-cuda" if self.on_gpu else "") + ("" if precision == "fp32" else f"-{precision}")
                     + ("-graph" if cuda_graph else "") + ("-bf16" if cpu_bf16 else ""))
        self._graphs: dict[tuple, tuple] = {}

    def _sync(self) -> None:
        if self.on_gpu:
            torch.cuda.synchronize()

    def _graph_for(self, shape: tuple) -> tuple:
        if shape not in self._graphs:
            static_in = torch.zeros(shape, device=self.device, dtype=self.dtype).contiguous(memory_format=torch.channels_last)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(3):  # warm up on a side stream before capture, as the CUDA-graph docs ask
                    self.model(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_out = self.model(static_in)
            self._graphs[shape] = (graph, static_in, static_out)
        return self._graphs[shape]

    def run_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.cuda_graph:
            graph, static_in, static_out = self._graph_for(tuple(x.shape))
            static_in.copy_(x)
            graph.replay()
            return static_out
        with torch.inference_mode():
            if self.cpu_bf16:
                with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                    return self.model(x)
            return self.model(x)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        t0 = now_ms()
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, self.dtype)
        if self.on_gpu or self.cpu_bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        self._sync()
        t1 = now_ms()
        y = self.run_device(x)
        self._sync()
        t2 = now_ms()
        out = y.float().cpu().numpy()
        t3 = now_ms()
        self.last_timings.copy_in, self.last_timings.infer, self.last_timings.copy_out = t1 - t0, t2 - t1, t3 - t2
        return out

    def infer_device(self, batch):
        """CuPy (N, 3, S, S) array -> CuPy logits, zero-copy through DLPack."""
        import cupy

        t0 = now_ms()
        x = torch.from_dlpack(batch).to(self.dtype).contiguous(memory_format=torch.channels_last)
        self._sync()
        t1 = now_ms()
        y = self.run_device(x)
        self._sync()
        t2 = now_ms()
        out = cupy.from_dlpack(y.float().contiguous())
        self.last_timings.copy_in, self.last_timings.infer, self.last_timings.copy_out = t1 - t0, t2 - t1, now_ms() - t2
        return out

    def gpu_memory_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.on_gpu else None

    def reset_gpu_peak(self) -> None:
        if self.on_gpu:
            torch.cuda.reset_peak_memory_stats()
