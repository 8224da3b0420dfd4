"""The GPU check's phases (``benchmarks/gpu_check.sh`` runs them through ``run.py``); see ``common`` for the JSON."""
