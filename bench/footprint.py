"""The sidecar's footprint: idle memory, start-up time, and memory after load (issue 19).

    .venv/bin/python bench/footprint.py           # 5 starts, then 100,000 requests: ~1-2 min
    .venv/bin/python bench/footprint.py --quick   # 2 starts, no load: what CI smoke-runs
    .venv/bin/python bench/footprint.py --json footprint.json

`signing-proxy run` with one `bearer` route, as in production (uvloop, JSON logs to a file,
metrics on), started `--starts` times. Each start reports the time from spawning the process
to the first `200` from `/readyz` (polled every 5 ms), the CPU the process used by then (less
sensitive to a busy machine than the wall time), and its RSS once idle (`--settle` seconds
after ready). One more start runs under `python -X importtime` for the import profile (its
time is not counted). The floor is what the libraries cost without the proxy, in steps: a
Python that imports those every config needs (aiohttp, pydantic, pyyaml, prometheus-client,
structlog, orjson, uvloop: the issue's floor), then builds one pydantic model, imports
aiohttp's server and listens on uvloop (a hello-world server). The full mode also reports each
library's share (the RSS it adds to all the others), then sends at least `--requests` GETs
through the route (wrk, or bench/loadgen.py) to the bench upstream (nginx, or
bench/upstream.py) and reports the RSS after them and the peak. Everything binds 127.0.0.1;
every wait is bounded.

It reports and never judges: exit 0 when every start got ready and every request got a 2xx,
whatever the figures; 1 when the proxy failed to start or to serve; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    HOST,
    BenchError,
    Load,
    Processes,
    Service,
    cpu_seconds,
    deadline,
    find_binary,
    free_port,
    make_driver,
    measure_machine_busy,
    print_flush,
    signing_proxy_command,
    start_upstream,
    stop_process,
    tail,
)

MIB: Final = 1024 * 1024
TARGET_IDLE_MIB: Final = 48.0
TARGET_READY_SECONDS: Final = 0.35
FLOOR_LIBRARIES: Final = ("aiohttp", "pydantic", "yaml", "prometheus_client", "structlog",
                          "orjson", "uvloop")  # fmt: skip
CONFIG: Final = """\
# Written by bench/footprint.py: the smallest useful sidecar, one bearer route.
routes:
  - name: api
    match: {{path_prefix: /api}}
    upstream: http://127.0.0.1:{upstream_port}
    signer: {{scheme: bearer, token: footprint-token}}
"""


@dataclass
class Start:
    ready_seconds: float  # spawn -> first 200 from /readyz
    cpu_seconds: float  # the process's utime + stime at that moment
    idle_rss: int  # VmRSS, `settle` seconds later
    idle_anon: int  # RssAnon: the process's own memory
    idle_file: int  # RssFile: mapped files (the interpreter, extension modules)


@dataclass
class Report:
    mode: str
    python: str
    machine_busy: float  # share of all CPUs busy just before the run
    floor: list[tuple[str, int, float]]  # (step, RSS, CPU seconds)
    library_shares: dict[str, int] = field(default_factory=dict)
    starts: list[Start] = field(default_factory=list)
    import_profile: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return float(statistics.median(getattr(start, name) for start in self.starts))


# --- measuring one process ------------------------------------------------------------------


def status_kib(pid: int) -> dict[str, int]:
    """The memory lines of /proc/<pid>/status, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in {"VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"}:
                values[key] = int(rest.split()[0]) * 1024
    return values


def readyz(port: int) -> int | None:
    """The status of GET /readyz, or None when nothing answers yet."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"GET /readyz HTTP/1.0\r\nHost: footprint\r\n\r\n")
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log_path: Path
    started: float


def spawn(workdir: Path, config: Path, name: str, env: dict[str, str] | None = None) -> Running:
    port, admin_port = free_port(), free_port()
    log_path = workdir / f"{name}.log"
    argv = [*signing_proxy_command(), "run", "--config", str(config),
            "--listen", f"{HOST}:{port}", "--admin", f"{HOST}:{admin_port}",
            "--drain-delay", "0", "--shutdown-timeout", "2"]  # fmt: skip
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=workdir,
        )
    return Running(process, port, admin_port, log_path, started)


def wait_until_ready(running: Running, timeout: float = 30.0) -> float:
    """Seconds from spawn to the first 200 from /readyz."""
    while time.perf_counter() - running.started < timeout:
        if running.process.poll() is not None:
            raise BenchError(
                f"signing-proxy exited with {running.process.returncode} while starting:\n"
                + tail(running.log_path)
            )
        if readyz(running.admin_port) == 200:
            return time.perf_counter() - running.started
        time.sleep(0.005)
    raise BenchError(
        f"signing-proxy was not ready within {timeout:.0f} s:\n{tail(running.log_path)}"
    )


def measure_start(workdir: Path, config: Path, index: int, settle: float) -> Start:
    running = spawn(workdir, config, f"start-{index}")
    try:
        ready = wait_until_ready(running)
        cpu = cpu_seconds([running.process.pid])
        time.sleep(settle)
        memory = status_kib(running.process.pid)
    finally:
        stop_process(running.process)
    return Start(ready, cpu, memory["VmRSS"], memory["RssAnon"], memory["RssFile"])


FLOOR_STEPS: Final = f"""\
import json, resource, sys, time

def step(name):
    rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps([name, rss * 1024, round(usage.ru_utime + usage.ru_stime, 3)]), flush=True)

step("python")
import {", ".join(FLOOR_LIBRARIES)}
step("the libraries imported")
from pydantic import BaseModel
class Model(BaseModel):
    field: int
step("+ one pydantic model built")
from aiohttp import web
step("+ aiohttp's server imported")

async def listen():
    runner = web.ServerRunner(web.Server(lambda request: None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    step("+ listening on uvloop")
    await runner.cleanup()

uvloop.run(listen())
"""
# One line each, run with every other library imported: what the library alone adds.
LIBRARY_CODE: Final = {
    "aiohttp (client and server)": "import aiohttp, aiohttp.web",
    "pydantic (one model built)": "from pydantic import BaseModel\nclass M(BaseModel):\n    a: int",
    "pyyaml": "import yaml",
    "prometheus-client": "import prometheus_client",
    "structlog": "import structlog",
    "orjson": "import orjson",
    "uvloop": "import uvloop",
}


def _python_rss(code: str) -> int:
    code += (
        "\nprint(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return int(done.stdout.strip()) * 1024


def measure_floor() -> list[tuple[str, int, float]]:
    """(step, RSS, CPU seconds) of the floor's steps, the median of 3 runs each."""
    runs = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", FLOOR_STEPS],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        runs.append([json.loads(line) for line in done.stdout.splitlines()])
    return [
        (name, int(statistics.median(r[i][1] for r in runs)),
         float(statistics.median(r[i][2] for r in runs)))
        for i, (name, _, _) in enumerate(runs[0])
    ]  # fmt: skip


def library_shares() -> dict[str, int]:
    """What each library adds to the RSS of all the others (the least of 3 runs each)."""
    everything = "\n".join(LIBRARY_CODE.values())
    full = min(_python_rss(everything) for _ in range(3))
    shares = {}
    for name, code in LIBRARY_CODE.items():
        others = "\n".join(c for c in LIBRARY_CODE.values() if c != code)
        shares[name] = full - min(_python_rss(others) for _ in range(3))
    return shares


# --- the import profile ---------------------------------------------------------------------


def import_profile(workdir: Path, config: Path) -> dict[str, Any]:
    """What `run` imports up to readiness: module count, self time by top-level package, and
    the project's own modules (which schemes were loaded)."""
    running = spawn(workdir, config, "importtime", env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        wait_until_ready(running)
    finally:
        stop_process(running.process)
    by_package: dict[str, int] = defaultdict(int)
    proxy_modules = []
    total_us = 0
    count = 0
    for line in running.log_path.read_text(errors="replace").splitlines():
        fields = line.removeprefix("import time:").split("|")
        if (
            not line.startswith("import time:")
            or len(fields) != 3
            or not fields[0].strip().isdigit()
        ):
            continue  # the header line, or a log line
        self_us, name = int(fields[0]), fields[2].strip()
        count += 1
        total_us += self_us
        by_package[name.split(".")[0]] += self_us
        if name == "proxy" or name.startswith("proxy."):
            proxy_modules.append(name)
    top = sorted(by_package.items(), key=lambda item: -item[1])[:12]
    return {
        "modules": count,
        "self_ms_total": round(total_us / 1000, 1),
        "self_ms_by_package": {name: round(us / 1000, 1) for name, us in top},
        "proxy_modules": sorted(proxy_modules),
    }


# --- memory after load ----------------------------------------------------------------------


def measure_load(
    workdir: Path, config: Path, upstream: Service, requests: int, budget: float
) -> dict[str, Any]:
    """At least `requests` GETs through the route, in runs of a few seconds, then the RSS."""
    running = spawn(workdir, config, "load")
    driver = make_driver(workdir, None)
    load = Load("GET", "/api/items?page=1")
    sent = 0
    try:
        wait_until_ready(running)
        time.sleep(0.5)
        before = status_kib(running.process.pid)["VmRSS"]
        started = time.perf_counter()
        while sent < requests:
            if time.perf_counter() - started > budget:
                raise BenchError(f"only {sent} of {requests} requests within {budget:.0f} s")
            result = driver.run(running.port, load, 50, 5.0)
            if result.failed:
                raise BenchError(
                    f"{result.errors} transport errors, {result.non_2xx} non-2xx answers:\n"
                    + tail(running.log_path)
                )
            sent += result.requests
        seconds = time.perf_counter() - started
        time.sleep(1.0)  # idle again
        after = status_kib(running.process.pid)
    finally:
        stop_process(running.process)
    return {
        "requests": sent,
        "seconds": round(seconds, 1),
        "driver": driver.name,
        "upstream": upstream.kind,
        "rss_before": before,
        "rss_after": after["VmRSS"],
        "rss_peak": after["VmHWM"],
    }


# --- the report -----------------------------------------------------------------------------


def mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB"


def print_report(report: Report) -> None:
    idle = report.median("idle_rss")
    ready = report.median("ready_seconds")
    n = len(report.starts)
    met = {True: "met", False: "NOT met"}
    rows = [
        (f"idle RSS (median of {n} starts)", mib(idle),
         f"<= {TARGET_IDLE_MIB:.0f} MiB: {met[idle <= TARGET_IDLE_MIB * MIB]}"),
        ("  of which the process's own (RssAnon)", mib(report.median("idle_anon")), ""),
        ("  of which mapped files (RssFile)", mib(report.median("idle_file")), ""),
        ("idle RSS over the floor (the libraries imported)",
         mib(idle - report.floor[1][1]), ""),
        ("idle RSS over a hello-world server", mib(idle - report.floor[-1][1]), ""),
        (f"start -> /readyz 200 (median of {n})", f"{ready:.3f} s",
         f"<= {TARGET_READY_SECONDS} s on a quiet machine: "
         f"{met[ready <= TARGET_READY_SECONDS]}"),
        ("  fastest start", f"{min(s.ready_seconds for s in report.starts):.3f} s", ""),
        ("  CPU used by then (median)", f"{report.median('cpu_seconds'):.2f} s", ""),
    ]  # fmt: skip
    if report.load:
        load = report.load
        rows += [
            (f"RSS after {load['requests']:,} requests", mib(load["rss_after"]),
             f"(before them: {mib(load['rss_before'])})"),
            ("  peak RSS (VmHWM)", mib(load["rss_peak"]), ""),
        ]  # fmt: skip
    print_flush()
    print_flush("FOOTPRINT  signing-proxy run, one bearer route (uvloop, JSON logs, metrics on)")
    print_flush(f"python {report.python}; machine {report.machine_busy:.0%} busy before the run")
    print_flush("| measure | value | target |")
    print_flush("|---|---|---|")
    for name, value, target in rows:
        print_flush(f"| {name} | {value} | {target} |")
    print_flush()
    print_flush("FLOOR  the libraries without the proxy (median of 3 runs; CPU: user + system)")
    print_flush("| step | RSS | CPU |")
    print_flush("|---|---|---|")
    for name, rss, cpu in report.floor:
        print_flush(f"| {name} | {mib(rss)} | {cpu:.2f} s |")
    if report.library_shares:
        shares = ", ".join(f"{k} {mib(v)}" for k, v in report.library_shares.items())
        print_flush(f"  each library's share (RSS with all the others, minus without it): {shares}")
    profile = report.import_profile
    if profile:
        print_flush()
        print_flush(
            f"IMPORTS up to ready: {profile['modules']} modules, "
            f"{profile['self_ms_total']} ms of import time (under -X importtime, which slows it)"
        )
        shares = ", ".join(f"{k} {v}" for k, v in profile["self_ms_by_package"].items())
        print_flush(f"  ms by package: {shares}")
        print_flush(f"  the project's modules: {' '.join(profile['proxy_modules'])}")
    if report.load:
        print_flush()
        print_flush(f"LOAD: {report.load['driver']} -> {report.load['upstream']}, "
                    f"{report.load['seconds']} s")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 starts, no load (CI smoke)")
    parser.add_argument("--starts", type=int, help="starts measured (default 5; --quick 2)")
    parser.add_argument("--requests", type=int, default=100_000, help="requests under load")
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds before the RSS")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    starts = args.starts or (2 if args.quick else 5)
    busy = measure_machine_busy(1.0).busy
    report = Report(
        mode="quick" if args.quick else "full",
        python=sys.version.split()[0],
        machine_busy=round(busy, 3),
        floor=measure_floor(),
    )
    try:
        with tempfile.TemporaryDirectory(prefix="footprint-") as tmp, deadline(900):
            workdir = Path(tmp)
            with Processes(workdir) as procs:
                upstream = None if args.quick else start_upstream(procs, find_binary("nginx"))
                config = workdir / "footprint.yaml"
                upstream_port = upstream.port if upstream else free_port()
                config.write_text(CONFIG.format(upstream_port=upstream_port))
                for index in range(starts):
                    report.starts.append(measure_start(workdir, config, index, args.settle))
                report.import_profile = import_profile(workdir, config)
                if upstream is not None:
                    report.library_shares = library_shares()
                    report.load = measure_load(workdir, config, upstream, args.requests, 600)
    except BenchError as err:
        print_flush(f"footprint: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
