"""ONNX Runtime as hemseg imports it: telemetry off, its own warnings below errors (a scanner workstation sends
nothing, and -q means quiet)."""

from __future__ import annotations

import pytest

ort = pytest.importorskip("onnxruntime")

from hemseg.runtime.backends.ort import import_ort  # noqa: E402


def test_import_ort_turns_telemetry_off_and_quiets_onnxruntimes_own_log(monkeypatch):
    calls = []
    monkeypatch.delenv("ORT_TELEMETRY_DISABLED", raising=False)
    monkeypatch.setattr(ort, "disable_telemetry_events", lambda: calls.append("telemetry off"))
    monkeypatch.setattr(ort, "set_default_logger_severity", lambda level: calls.append(f"severity {level}"))
    assert import_ort() is ort
    import os

    assert os.environ["ORT_TELEMETRY_DISABLED"] == "1"
    assert calls == ["telemetry off", "severity 3"]
    monkeypatch.setenv("ORT_TELEMETRY_DISABLED", "0")  # a user's own choice is kept
    import_ort()
    assert os.environ["ORT_TELEMETRY_DISABLED"] == "0"
