"""Phase 1: ``pytest -m gpu`` (the CUDA preprocessing against OpenCV, on phantom and real slices).

Runs every test file that marks tests ``gpu``, records pytest's counts and, per test, its outcome and the first
line of its failure or skip reason (read from pytest's JUnit XML). Without CUDA the tests skip themselves, and
the phase is recorded as skipped with their reason.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from gpu_check.common import PhaseRecord


def gpu_test_files(tests: Path) -> list[Path]:
    return sorted(p for p in tests.glob("test_*.py") if "pytest.mark.gpu" in p.read_text(encoding="utf-8"))


def _message(node: ET.Element) -> str:
    """The first line of a failure/skip; for a module skipped at collection, the reason inside the node's text."""
    text = (node.text or "").strip()
    if "Skipped: " in text:
        return text.split("Skipped: ", 1)[1].strip().rstrip("')\"").strip()[:300]
    first = (node.get("message") or text).strip()
    return first.splitlines()[0][:300] if first else ""


def parse_junit(path: Path) -> tuple[dict, list[dict]]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    cases = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = _message(node)
                break
        cases.append({"test": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome,
                      "message": message, "seconds": float(case.get("time", 0) or 0)})
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts, cases


def run(rec: PhaseRecord, args) -> None:
    files = gpu_test_files(Path("tests"))
    xml = Path(args.work) / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={xml}",
           *map(str, files)]
    rec.doc["command"] = " ".join(["python3", *cmd[1:]])
    rec.doc["files"] = [str(f) for f in files]
    rec.save()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5.0, args.deadline.left() - 3))
    except subprocess.TimeoutExpired:
        rec.fail("pytest did not finish within the phase's time cap")
        return
    sys.stdout.write(p.stdout[-4000:] + p.stderr[-2000:])
    rec.doc["exit"] = p.returncode
    rec.doc["output_tail"] = (p.stdout + p.stderr).strip().splitlines()[-15:]
    if not xml.is_file():
        rec.fail(f"pytest exited {p.returncode} without a report")
        return
    counts, cases = parse_junit(xml)
    rec.doc["counts"], rec.doc["tests"] = counts, cases
    bad = [c for c in cases if c["outcome"] in ("failed", "error")]
    if bad or p.returncode not in (0, 5):
        rec.fail(f"{len(bad)} of {counts['tests']} GPU tests failed: "
                 + "; ".join(f"{c['test']}: {c['message']}" for c in bad[:5]))
        return
    for reason in sorted({c["message"] for c in cases if c["outcome"] == "skipped"}):
        n = sum(1 for c in cases if c["outcome"] == "skipped" and c["message"] == reason)
        rec.skip(f"{n} GPU test(s)", reason or "skipped")
    rec.finish(ran_something=counts["passed"] > 0)
