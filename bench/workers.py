"""Scaling from 1 to 2 workers (`run --workers N`), measured in one run, loopback only.

    .venv/bin/python bench/workers.py [--duration 8]

Starts the bench upstream (`bench/upstream.py`), then signing-proxy with a `bearer` route at
`--workers 1` and `--workers 2` in turn, drives each with wrk (c=50, 2 threads) and prints
requests/s and the CPU seconds each process used (the supervisor and every worker). On this
2-core machine the upstream and wrk share the same cores, so the ceiling is the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    children = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                children.append(int(entry.name))
    return children


def measure(workers: int, upstream_port: int, duration: int, workdir: Path) -> dict[str, object]:
    port, admin = free_port(), free_port()
    config = workdir / f"w{workers}.yaml"
    config.write_text(
        "routes:\n  - name: bench-bearer\n    match: {path_prefix: /}\n"
        f"    upstream: http://127.0.0.1:{upstream_port}\n"
        "    signer: {scheme: bearer, token: bench-token}\n"
    )
    log = (workdir / f"w{workers}.log").open("wb")
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy", "run", "--config", str(config), "--listen",
         f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}", "--drain-delay", "0",
         "--workers", str(workers)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    try:
        wait_port(port)
        time.sleep(1.0 if workers > 1 else 0.2)  # every worker bound
        url = f"http://127.0.0.1:{port}/api/items?page=1"
        subprocess.run(["wrk", "-t2", "-c50", "-d2s", url], capture_output=True, check=True)
        pids = tree(proxy.pid)
        before = {pid: cpu_seconds(pid) for pid in pids}
        out = subprocess.run(
            ["wrk", "-t2", "-c50", f"-d{int(duration)}s", url],
            capture_output=True, text=True, check=True, timeout=duration + 30,
        ).stdout  # fmt: skip
        cpu = {pid: round(cpu_seconds(pid) - before[pid], 2) for pid in pids}
        rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return {
            "workers": workers,
            "req_per_s": rps,
            "non_2xx": int(errors.group(1)) if errors else 0,
            "cpu_seconds": {("supervisor" if pid == proxy.pid and workers > 1 else str(pid)): s
                            for pid, s in cpu.items()},
        }  # fmt: skip
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(30)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "upstream.py"), "--port", str(upstream_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(upstream_port)
        with tempfile.TemporaryDirectory() as workdir:
            results = [measure(n, upstream_port, args.duration, Path(workdir)) for n in (1, 2)]
    finally:
        upstream.terminate()
        upstream.wait(10)
    for result in results:
        print(json.dumps(result))
    ratio = results[1]["req_per_s"] / results[0]["req_per_s"]  # type: ignore[operator]
    print(f"2 workers / 1 worker: {ratio:.2f}x")
    return 0 if all(r["non_2xx"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
