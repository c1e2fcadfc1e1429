"""benchmarks/gpu_check.sh runs end to end on the CPU with --dry-run: every step a GPU run takes, at tiny sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_reports_every_section(tmp_path: Path) -> None:
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(tmp_path), "--python",
                             sys.executable], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = (tmp_path / "gpu_report.md").read_text()
    for heading in ("## GPU check", "CUDA-only tests", "### Generation", "### Tokenizer", "### Training"):
        assert heading in report
    assert "skipped" in report.split("CUDA-only tests")[1].splitlines()[0]  # collected, and skipped on a CPU
    rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) >= 3 + 11 + 2 + 4  # headers, generation variants + pipeline, tokenizer sizes, training steps
    assert not [row for row in rows if "error:" in row or "not run" in row], report
    assert "`wd train` step, activation checkpointing |" in report and "FSDP2" in report
