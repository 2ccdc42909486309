"""The benchmark tools work: `bench/run.py --quick` serves through every target and reports;
`bench/micro.py --quick` times every code path it knows; `bench/footprint.py --quick` measures
idle memory, start-up and imports.

A smoke test only: it asserts the run exits 0 and prints the results table, never a speed. It
works without nginx and wrk (the bench falls back to its Python upstream and load generator)
and does not refuse on a busy machine in --quick mode.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


@pytest.mark.slow
def test_bench_quick_mode_runs_every_target_and_prints_the_table(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "RESULTS" in done.stdout, output
    assert "| target" in done.stdout, output
    for row in ("naive aiohttp proxy", "signing-proxy bearer", "signing-proxy devo"):
        assert row in done.stdout, output
    assert "vs naive" in done.stdout, output
    assert report.exists(), output


@pytest.mark.slow
def test_micro_quick_mode_runs_every_section() -> None:
    # micro.py drives the real handler with stand-ins for aiohttp's request: a smoke run keeps
    # those stand-ins in step with what the handler reads.
    done = subprocess.run(
        [sys.executable, str(BENCH.with_name("micro.py")), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for section in ("the whole handler", "the client half", "the server half"):
        assert section in done.stdout, output
    assert "Traceback" not in output, output


def test_footprint_quick_mode_reports_memory_start_up_and_imports(tmp_path: Path) -> None:
    # Reports only: no figure is judged here (this machine is shared); the run must work.
    report = tmp_path / "footprint.json"
    done = subprocess.run(
        [sys.executable, str(BENCH.with_name("footprint.py")), "--quick", "--starts", "1",
         "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for row in ("FOOTPRINT", "| idle RSS", "| start -> /readyz 200", "FLOOR", "IMPORTS"):
        assert row in done.stdout, output
    figures = json.loads(report.read_text())
    [start] = figures["starts"]
    assert start["idle_rss"] > figures["floor"][0][1] > 0, figures  # over a bare Python
    assert start["ready_seconds"] > 0, figures
    assert "proxy.signers.bearer" in figures["import_profile"]["proxy_modules"], figures
    assert figures["load"] == {}, figures  # --quick sends no load
