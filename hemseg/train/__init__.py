"""Training, evaluation, baselines and reports (torch + torchvision; the [train] extra)."""
