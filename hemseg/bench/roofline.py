"""Markdown for a CPU roofline result (``schema: hemseg-roofline/1``, written by
``benchmarks/roofline/cpu_roofline.py``): the machine's kernel rates next to the whole model's, and whether the CPU
speed targets fit under them."""

from __future__ import annotations

SCHEMA = "hemseg-roofline/"

_TARGET_PATH = {"ort": "ONNX Runtime FP32", "ort-int8": "ONNX Runtime INT8"}


def roofline_markdown(doc: dict) -> str:
    m, h = doc["machine"], doc["head_conv"]
    out = [f"### {doc['date'][:10]} roofline on {m['cpu']} ({m['cores']} cores): {doc['model']} at "
           f"{doc['image_size']} px, batch {doc['batch_size']}", "", f"Command: `{doc['command']}`", "",
           f"Kernel rates: FP32 sgemm (numpy) {doc['sgemm_gflops']:.0f} GFLOP/s; INT8 GEMM (ONNX Runtime "
           f"MatMulInteger u8 x s8) {doc['int8_gemm_gops']:.0f} GOP/s; the head convolution ({h['shape']}, "
           f"{h['gop']:.1f} GOP) in ONNX Runtime: FP32 {h['fp32_gflops']:.0f} GFLOP/s, INT8 {h['int8_gops']:.0f} GOP/s "
           f"({h['int8_over_fp32']:.2f}x). Shared OpenCV preprocessing: {doc['preprocess_ms']:.0f} ms per slice.", "",
           "| path | inference ms | G(FL)OP/s | share in convolutions | end to end ms | speed-up vs PyTorch |",
           "|---|---|---|---|---|---|"]
    for name, r in doc["paths"].items():
        share = f"{100 * r['conv_time_share']:.0f} %" if r.get("conv_time_share") is not None else "-"
        out.append(f"| {name} | {r['infer_ms']:.0f} | {r['gflops']:.0f} | {share} | {r['end_to_end_ms']:.0f} | "
                   f"{r['speedup_vs_torch']:.2f}x |")
    out.append("")
    for name, t in doc["targets"].items():
        verdict = "reachable" if t["reachable"] else "**not reachable on this machine**"
        out.append(f"- {_TARGET_PATH.get(name, name)} >= {t['target_speedup']}x the PyTorch path leaves "
                   f"{t['inference_budget_ms']:.0f} ms for inference, i.e. {t['needed_rate']:.0f} G(FL)OP/s; the best "
                   f"kernel rate measured here is {t['best_kernel_rate_here']:.0f}, at which the whole model would give "
                   f"{t['speedup_if_whole_model_at_that_rate']:.2f}x: {verdict}.")
    return "\n".join(out) + "\n"
