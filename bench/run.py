"""signing-proxy's benchmark: one command, everything on 127.0.0.1, all measured in one run.

Starts an upstream (nginx, or bench/upstream.py), nginx as a 1-worker reverse proxy (the
ceiling), the naive aiohttp proxy (bench/naive_proxy.py, the baseline; also on uvloop for
reference) and signing-proxy (a `bearer` route for the small GET, a `devo` route for the 1 KiB
JSON POST; metrics and JSON access log on), then drives each with wrk (or bench/loadgen.py) at
each concurrency, in round-robin rounds, and prints the medians and the ratios.

    .venv/bin/python bench/run.py            # the full run (refuses on a busy machine)
    .venv/bin/python bench/run.py --quick    # smoke: ~1 s per measurement, works without nginx/wrk

Exit status: 0 when every target served every request with a 2xx; 1 when a target failed
(errors or non-2xx); 2 on bad arguments; 3 when it refused to run on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import harness as h

EXIT_FAILED: Final = 1
EXIT_BUSY: Final = 3
GET: Final = "GET"
POST: Final = "POST 1 KiB"


@dataclass(frozen=True)
class Combo:
    """One target under one workload: a row of the results."""

    key: str  # "nginx", "naive", "signing-proxy", ...
    label: str
    workload: str  # GET or POST
    service: h.Service
    load: h.Load


@dataclass
class Options:
    quick: bool
    duration: float
    rounds: int
    warmup: float
    concurrency: list[int]
    force: bool
    pin: bool
    use_nginx: bool
    use_wrk: bool
    busy_threshold: float
    json_path: Path | None
    keep: bool
    wait_idle: float


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark signing-proxy against nginx (ceiling) and a naive aiohttp proxy.",
        epilog="See bench/README.md for what is measured and how to read it.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: ~1 s per measurement, 1 round"
    )
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 5)")
    parser.add_argument("--rounds", type=int, help="round-robin rounds, median taken (default 5)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per target (default 2)")
    parser.add_argument(
        "--concurrency", default="1,50", help="comma-separated connection counts (default 1,50)"
    )
    parser.add_argument(
        "--force", action="store_true", help="run even when the machine is busy (debugging)"
    )
    parser.add_argument(
        "--busy-threshold",
        type=float,
        default=15.0,
        help="refuse when the machine is more than this %% busy before starting (default 15)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the target to its own CPU (default: target on the last CPU, "
        "upstream and load generator on the others)",
    )
    parser.add_argument(
        "--no-nginx", action="store_true", help="use the fallback upstream, skip the ceiling"
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="use the Python load generator instead of wrk"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="on a busy machine, re-check every 10 s for up to S seconds before refusing",
    )
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    try:
        concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error("--concurrency takes numbers, e.g. 1,50")
    if not concurrency or min(concurrency) < 1:
        parser.error("--concurrency takes numbers >= 1")
    quick = bool(args.quick)
    duration = args.duration if args.duration is not None else (1.0 if quick else 5.0)
    rounds = args.rounds if args.rounds is not None else (1 if quick else 5)
    warmup = args.warmup if args.warmup is not None else (0.5 if quick else 2.0)
    if duration <= 0 or rounds < 1 or warmup < 0:
        parser.error("--duration and --rounds must be positive, --warmup not negative")
    return Options(
        quick=quick,
        duration=duration,
        rounds=rounds,
        warmup=warmup,
        concurrency=concurrency,
        force=bool(args.force),
        pin=not args.no_pin,
        use_nginx=not args.no_nginx,
        use_wrk=not args.no_wrk,
        busy_threshold=args.busy_threshold / 100.0,
        json_path=args.json,
        keep=bool(args.keep),
        wait_idle=max(0.0, args.wait_idle),
    )


# --- the run --------------------------------------------------------------------------------


class Run:
    def __init__(self, opts: Options, workdir: Path) -> None:
        self.opts = opts
        self.workdir = workdir
        self.results: dict[tuple[str, str, int], list[h.Measurement]] = {}
        self.failures: list[str] = []
        self.cpu_totals: dict[str, dict[str, float]] = {}
        self.sent_to_signing_proxy = 0
        self.facts: dict[str, Any] = {}

    def combos(
        self,
        upstream: h.Service,
        ceiling: h.Service | None,
        naive: h.Service,
        naive_uvloop: h.Service,
        proxy: h.Service,
        body: Path,
    ) -> list[Combo]:
        get = h.Load("GET", "/api/items?page=1")
        post = h.Load("POST", "/api/items", body)
        rows: list[Combo] = []
        for workload, load in ((GET, get), (POST, post)):
            rows.append(Combo("direct", "upstream, direct", workload, upstream, load))
            if ceiling is not None:
                rows.append(Combo("nginx", "nginx proxy (ceiling)", workload, ceiling, load))
            rows.append(Combo("naive", "naive aiohttp proxy", workload, naive, load))
            rows.append(Combo("naive-uvloop", "naive on uvloop", workload, naive_uvloop, load))
        rows.append(
            Combo(
                "signing-proxy",
                "signing-proxy bearer",
                GET,
                proxy,
                h.Load("GET", "/bearer/api/items?page=1"),
            )
        )
        rows.append(
            Combo(
                "signing-proxy",
                "signing-proxy devo",
                POST,
                proxy,
                h.Load("POST", "/devo/api/items", body),
            )
        )
        return rows

    def probe(self, combo: Combo) -> None:
        body = combo.load.body_file.read_bytes() if combo.load.body_file else None
        headers = {"Content-Type": "application/json"} if body else {}
        status, payload = h.http_request(
            combo.service.port, combo.load.method, combo.load.path, body, headers
        )
        if status != 200 or payload != h.UPSTREAM_BODY:
            raise h.BenchError(
                f"{combo.label} ({combo.workload}) answered {status} {payload[:200]!r}, "
                "not the upstream's 200:\n" + h.tail(combo.service.log_path)
            )
        if combo.key == "signing-proxy":
            self.sent_to_signing_proxy += 1

    def measure(
        self, driver: h.Driver, combo: Combo, upstream: h.Service, connections: int, seconds: float
    ) -> h.Measurement:
        target_before, upstream_before = combo.service.cpu(), upstream.cpu()
        machine_before, wall_before = h.machine_jiffies(), time.monotonic()
        result = driver.run(combo.service.port, combo.load, connections, seconds)
        machine_after, wall = h.machine_jiffies(), time.monotonic() - wall_before
        result.target_cpu = combo.service.cpu() - target_before
        result.upstream_cpu = upstream.cpu() - upstream_before
        if combo.service is upstream:
            result.upstream_cpu = 0.0  # the target is the upstream: counted once
        ours = result.target_cpu + result.upstream_cpu + result.driver_cpu
        busy = (machine_after[3] - machine_before[3]) / h.CLK_TCK
        result.others = max(0.0, busy - ours) / (wall * (os.cpu_count() or 1))
        if combo.service.process.poll() is not None:
            raise h.BenchError(
                f"{combo.label} exited during the run:\n" + h.tail(combo.service.log_path)
            )
        if combo.key == "signing-proxy":
            self.sent_to_signing_proxy += result.requests
        totals = self.cpu_totals.setdefault(
            f"{combo.label}, {combo.workload}",
            {"target": 0.0, "upstream": 0.0, "driver": 0.0, "wall": 0.0},
        )
        totals["target"] += result.target_cpu
        totals["upstream"] += result.upstream_cpu
        totals["driver"] += result.driver_cpu
        totals["wall"] += result.seconds
        if result.failed:
            self.failures.append(
                f"{combo.label} {combo.workload} c={connections}: {result.requests} requests, "
                f"{result.errors} transport errors, {result.non_2xx} non-2xx"
            )
        return result

    def execute(self) -> None:
        opts = self.opts
        nginx = h.find_binary("nginx") if opts.use_nginx else None
        cpus = h.cpu_plan(opts.pin)
        driver = h.make_driver(self.workdir, cpus.get("driver"), allow_wrk=opts.use_wrk)
        body = self.workdir / "body.json"
        body.write_bytes(h.post_body())
        with h.Processes(self.workdir, cpus) as procs:
            h.print_flush("starting the servers ...")
            upstream = h.start_upstream(procs, nginx)
            ceiling = h.start_nginx_proxy(procs, nginx, upstream) if nginx else None
            naive = h.start_naive(procs, upstream, uvloop=False)
            naive_uvloop = h.start_naive(procs, upstream, uvloop=True)
            proxy = h.start_signing_proxy(procs, upstream)
            self.facts.update(
                upstream=upstream.kind,
                ceiling=ceiling.kind if ceiling else "skipped (no nginx, or --no-nginx)",
                driver=driver.name,
                pinning=(
                    {role: sorted(c) for role, c in cpus.items()} if cpus else "off (scheduler)"
                ),
                signing_proxy_log=(
                    "JSON lines to a file in the work directory (stderr redirected)"
                ),
            )
            self.print_setup()
            combos = self.combos(upstream, ceiling, naive, naive_uvloop, proxy.service, body)
            for combo in combos:
                self.probe(combo)
            if opts.warmup > 0:
                h.print_flush(f"warming up ({opts.warmup:g} s per target) ...")
                for combo in combos:
                    self.measure(driver, combo, upstream, max(opts.concurrency), opts.warmup)
                self.cpu_totals.clear()  # the CPU table counts the measured rounds only
            for rnd in range(opts.rounds):
                for connections in opts.concurrency:
                    # Rotate the order each round: no target always runs first or last.
                    shift = rnd % len(combos)
                    for combo in combos[shift:] + combos[:shift]:
                        result = self.measure(driver, combo, upstream, connections, opts.duration)
                        key = (combo.label, combo.workload, connections)
                        self.results.setdefault(key, []).append(result)
                        self.progress(rnd, connections, combo, result)
            self.check_signing_proxy(proxy)

    def progress(self, rnd: int, connections: int, combo: Combo, result: h.Measurement) -> None:
        h.print_flush(
            f"  round {rnd + 1}/{self.opts.rounds} c={connections:<3} {combo.label:<24} "
            f"{combo.workload:<10} {result.rps:>9.0f} req/s  p50 {result.p50_us / 1000:6.2f} ms"
            f"  p99 {result.p99_us / 1000:6.2f} ms  others {result.others * 100:3.0f}%"
            + ("  FAILED" if result.failed else "")
        )

    def print_setup(self) -> None:
        opts = self.opts
        h.print_flush(
            f"upstream: {self.facts['upstream']}; ceiling: {self.facts['ceiling']}; "
            f"load generator: {self.facts['driver']}"
        )
        h.print_flush(
            f"pinning: {self.facts['pinning']}; {opts.rounds} round(s) x {opts.duration:g} s "
            f"per measurement at concurrency {','.join(map(str, opts.concurrency))}"
        )

    def check_signing_proxy(self, proxy: h.SigningProxy) -> None:
        """The access log and the metrics must have seen the requests: they were really on."""
        status, text = h.http_request(proxy.admin_port, path="/metrics")
        counted = 0.0
        for line in text.decode().splitlines():
            if line.startswith("signing_proxy_requests_total{"):
                counted += float(line.rsplit(" ", 1)[1])
        lines, sample = count_access_log(proxy.access_log)
        self.facts.update(
            access_log_lines=lines,
            metrics_requests_total=counted,
            requests_counted_by_driver=self.sent_to_signing_proxy,
            access_log_sample=sample,
        )
        if status != 200 or counted < self.sent_to_signing_proxy:
            self.failures.append(
                f"signing-proxy metrics count {counted:.0f} requests, "
                f"the load generator {self.sent_to_signing_proxy}"
            )
        if lines < self.sent_to_signing_proxy:
            self.failures.append(
                f"signing-proxy wrote {lines} JSON access log lines for "
                f"{self.sent_to_signing_proxy} requests"
            )


def count_access_log(path: Path) -> tuple[int, dict[str, Any] | None]:
    """JSON `request` lines in the log; the first and last hundred are parsed to prove it."""
    count, sample = 0, None
    first: list[bytes] = []
    last: deque[bytes] = deque(maxlen=100)
    with open(path, "rb") as f:
        for line in f:
            if b'"event":"request"' in line:
                count += 1
                (first if count <= 100 else last).append(line)
    for line in [*first, *last]:
        record = json.loads(line)  # a non-JSON line fails the run loudly
        if record.get("event") != "request":
            raise h.BenchError(f"an access log line is not a request event: {line[:200]!r}")
        sample = record
    return count, sample


# --- the report -----------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


@dataclass
class Row:
    label: str
    workload: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    rounds: int
    others: float  # the median share of the machine other processes took in its rounds
    others_max: float  # ... and the highest


def summarize(results: dict[tuple[str, str, int], list[h.Measurement]]) -> list[Row]:
    rows = []
    for (label, workload, connections), runs in results.items():
        rows.append(
            Row(
                label,
                workload,
                connections,
                median([r.rps for r in runs]),
                median([r.p50_us for r in runs]) / 1000,
                median([r.p99_us for r in runs]) / 1000,
                median([r.target_cpu / r.requests * 1e6 for r in runs if r.requests]),
                len(runs),
                median([r.others for r in runs]),
                max(r.others for r in runs),
            )
        )
    return rows


def ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def find(rows: list[Row], label: str, workload: str, connections: int) -> Row | None:
    return next(
        (
            r
            for r in rows
            if r.label == label and r.workload == workload and r.connections == connections
        ),
        None,
    )


def print_report(run: Run, rows: list[Row], out: Callable[[str], None]) -> None:
    opts = run.opts
    out("")
    out(
        f"RESULTS (median of {opts.rounds} round(s) x {opts.duration:g} s; ratios are req/s "
        "over the reference's req/s in the same run, and p50 over the naive proxy's p50)"
    )
    header = (
        f"| {'target':<24} | {'workload':<10} | {'conc':>4} | {'req/s':>8} | {'p50 ms':>7} "
        f"| {'p99 ms':>7} | {'vs nginx':>8} | {'vs naive':>8} | {'p50 vs naive':>12} "
        f"| {'CPU us/req':>10} | {'others med/max':>14} |"
    )
    out(header)
    out("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
    for connections in opts.concurrency:
        for workload in (GET, POST):
            nginx = find(rows, "nginx proxy (ceiling)", workload, connections)
            naive = find(rows, "naive aiohttp proxy", workload, connections)
            for row in rows:
                if row.workload != workload or row.connections != connections:
                    continue
                out(
                    f"| {row.label:<24} | {workload:<10} | {connections:>4} | {row.rps:>8.0f} "
                    f"| {row.p50_ms:>7.3f} | {row.p99_ms:>7.3f} "
                    f"| {ratio(row.rps, nginx.rps if nginx else None):>8} "
                    f"| {ratio(row.rps, naive.rps if naive else None):>8} "
                    f"| {ratio(row.p50_ms, naive.p50_ms if naive else None):>12} "
                    f"| {row.cpu_us_per_request:>10.0f} "
                    f"| {f'{row.others * 100:.0f}/{row.others_max * 100:.0f}%':>14} |"
                )
    out("")
    out("TARGETS (issue 6: single worker, small GET, metrics and access log on)")
    for connections in opts.concurrency:
        bearer = find(rows, "signing-proxy bearer", GET, connections)
        devo = find(rows, "signing-proxy devo", POST, connections)
        naive = find(rows, "naive aiohttp proxy", GET, connections)
        if bearer and naive:
            value = bearer.rps / naive.rps if naive.rps else 0.0
            out(
                f"  c={connections:<3} bearer req/s vs naive: {value:.2f}x (target >= 1.10x) "
                f"{'met' if value >= 1.1 else 'NOT met'}"
            )
        if bearer and devo:
            value = devo.rps / bearer.rps if bearer.rps else 0.0
            out(
                f"  c={connections:<3} devo 1 KiB req/s vs bearer: {value:.2f}x "
                f"(target >= 0.90x) {'met' if value >= 0.9 else 'NOT met'}"
            )
        if connections == 1 and bearer and naive:
            value = bearer.p50_ms / naive.p50_ms if naive.p50_ms else 0.0
            out(
                f"  c=1   bearer p50 vs naive p50: {value:.2f}x (target <= 1.00x) "
                f"{'met' if value <= 1.0 else 'NOT met'}"
            )
    out("")
    out("CPU TIME during the measured rounds (utime+stime from /proc/<pid>/stat, seconds)")
    out(
        f"| {'target, workload':<36} | {'target':>7} | {'upstream':>8} | {'load gen':>8} "
        f"| {'wall':>6} |"
    )
    out(f"|{'-' * 38}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 8}|")
    for label, totals in run.cpu_totals.items():
        out(
            f"| {label:<36} | {totals['target']:>7.2f} | {totals['upstream']:>8.2f} "
            f"| {totals['driver']:>8.2f} | {totals['wall']:>6.1f} |"
        )
    facts = run.facts
    if "access_log_lines" in facts:
        out("")
        out(
            f"signing-proxy: {facts['access_log_lines']} JSON access log lines, "
            f"{facts['metrics_requests_total']:.0f} requests in signing_proxy_requests_total, "
            f"{facts['requests_counted_by_driver']} requests counted by the load generator"
        )


def machine_description() -> str:
    model = "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if found:
            model = found.group(1).strip()
    except OSError:
        pass
    return f"{os.cpu_count()} CPU(s) ({len(os.sched_getaffinity(0))} usable), {model}"


def code_version() -> str:
    """signing-proxy's version and commit, and whether proxy/ differs from that commit."""
    from proxy import __version__

    try:
        commit = subprocess.run(
            ["git", "-C", str(h.REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(h.REPO), "status", "--porcelain", "--", "proxy"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"signing-proxy {__version__} (no git)"
    return f"signing-proxy {__version__} at {commit}" + (
        " + uncommitted changes in proxy/" if dirty else ""
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    out = h.print_flush
    out(f"signing-proxy bench: {machine_description()}; python {sys.version.split()[0]}")
    out(f"code: {code_version()}")
    idle = h.measure_machine_busy(2.0)
    waited = 0.0
    while idle.busy > opts.busy_threshold and waited < opts.wait_idle:
        out(f"machine {idle.busy * 100:.0f}% busy: waiting for it to settle ({waited:.0f} s)")
        time.sleep(8.0)
        waited += 10.0
        idle = h.measure_machine_busy(2.0)
    busy_text = (
        f"{idle.busy * 100:.0f}% busy (steal {idle.steal * 100:.0f}%) "
        f"over {idle.seconds:g} s before starting"
    )
    if idle.busy > opts.busy_threshold:
        message = (
            f"the machine is {busy_text}: other processes are using the CPU and would skew "
            f"the results (threshold {opts.busy_threshold * 100:.0f}%)."
        )
        if not (opts.quick or opts.force):
            out(
                f"REFUSING TO BENCHMARK: {message} Wait until it is idle, or pass --force to "
                "run anyway (the numbers are then not to be trusted)."
            )
            return EXIT_BUSY
        out(f"WARNING: {message} Running anyway ({'--quick' if opts.quick else '--force'}).")
    else:
        out(f"machine idle check: {busy_text}: OK")

    workdir = Path(tempfile.mkdtemp(prefix="signing-proxy-bench-"))
    run = Run(opts, workdir)
    combos_count = 10
    per_measurement = opts.duration + 1.5
    budget = 120 + combos_count * (
        opts.warmup + 1.5 + len(opts.concurrency) * opts.rounds * per_measurement
    )
    machine_before = h.machine_jiffies()
    ours_before = h.own_and_children_cpu()
    started = time.monotonic()
    try:
        with h.deadline(budget * 2):
            run.execute()
    except h.BenchError as err:
        out(f"BENCH FAILED: {err}")
        out(f"logs kept in {workdir}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        out("interrupted: every child process was stopped")
        return 130
    wall = time.monotonic() - started
    machine_after = h.machine_jiffies()
    ours = h.own_and_children_cpu() - ours_before
    machine_busy = (machine_after[3] - machine_before[3]) / h.CLK_TCK
    capacity = wall * (os.cpu_count() or 1)
    foreign = max(0.0, machine_busy - ours) / capacity if capacity else 0.0
    run.facts.update(wall_seconds=wall, foreign_cpu_fraction=foreign)

    rows = summarize(run.results)
    print_report(run, rows, out)
    out(
        f"other processes (and steal) used ~{foreign * 100:.0f}% of the machine during the "
        f"{wall:.0f} s run"
        + (" -- NOISY: do not trust these numbers" if foreign > opts.busy_threshold else "")
    )
    if opts.json_path:
        opts.json_path.write_text(
            json.dumps(
                {
                    "machine": machine_description(),
                    "code": code_version(),
                    "options": {k: str(v) for k, v in asdict(opts).items()},
                    "facts": run.facts,
                    "rows": [asdict(r) for r in rows],
                    "measurements": {
                        f"{label}|{workload}|{c}": [asdict(m) for m in runs]
                        for (label, workload, c), runs in run.results.items()
                    },
                    "failures": run.failures,
                },
                indent=2,
            )
        )
    if run.failures:
        out("FAILED:")
        for failure in run.failures:
            out(f"  {failure}")
        out(f"logs kept in {workdir}")
        return EXIT_FAILED
    if opts.keep:
        out(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
