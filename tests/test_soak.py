"""Load and soak at a reduced size (the full 100,000-request run is `bench/soak.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_soak_has_no_errors_and_flat_memory() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--requests", "6000",
         "--concurrency", "100", "--max-growth-mib", "10", "--deadline", "240"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "errors 0," in result.stdout
    assert "statuses {200: 6000}" in result.stdout
