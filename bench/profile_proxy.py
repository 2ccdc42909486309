"""Where signing-proxy's time goes: py-spy samples it under the bench's bearer and devo loads.

Starts the upstream and signing-proxy as `run.py` does (same config, metrics and JSON access log
on, pinned the same way), drives one workload at a time with wrk (or bench/loadgen.py) while
`py-spy record --format raw` samples the proxy, then folds the stacks into a breakdown:

- by component: each sample goes to the innermost frame that belongs to a known component
  (aiohttp server, aiohttp client, our handler, routing, signing, access log, metrics, ...),
  skipping helpers shared by several (aiohttp streams, multidict, asyncio, ...);
- inclusive shares of our key functions (the whole access-log call, metrics, signing, ...);
- the top functions by self time.

    .venv/bin/python bench/profile_proxy.py [--duration 15] [--connections 50] [--svg]

Needs py-spy (`bash bench/install.sh` puts it into .venv) and ptrace rights over the child
(root, or kernel.yama.ptrace_scope=0). Raw stacks (and SVGs with --svg) go to --out.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import harness as h

# (component, substrings of the frame's file); the first rule that matches a frame wins.
COMPONENTS: Final = (
    ("access log (proxy/logs.py, orjson, write)", ("/structlog/", "proxy/logs.py")),
    ("metrics (proxy/metrics.py, prometheus_client)", ("/prometheus_client/", "proxy/metrics.py")),
    ("signing (proxy/signers)", ("proxy/signers/",)),
    ("routing (proxy/routing.py)", ("proxy/routing.py",)),
    ("limits / access control", ("proxy/limits.py", "proxy/access.py")),
    ("forwarding, ours (proxy/forward.py, proxy/relay.py)", ("proxy/forward.py", "proxy/relay.py")),
    (
        "handler, ours (proxy/app.py, request.py, http.py)",
        (
            "proxy/app.py",
            "proxy/request.py",
            "proxy/http.py",
            "proxy/retry.py",
            "proxy/exchange.py",
            "proxy/errors.py",
        ),
    ),
    (
        "aiohttp client",
        (
            "/aiohttp/client",
            "/aiohttp/connector.py",
            "/aiohttp/resolver.py",
            "/aiohttp/cookiejar.py",
            "/aiohttp/tracing.py",
        ),
    ),
    (
        "aiohttp server",
        (
            "/aiohttp/web_protocol.py",
            "/aiohttp/web_request.py",
            "/aiohttp/web_response.py",
            "/aiohttp/web_server.py",
            "/aiohttp/http_writer.py",
            "/aiohttp/http_parser.py",
            "/aiohttp/_http_parser",
            "/aiohttp/web_",
        ),
    ),
    ("stdlib logging (aiohttp's error log)", ("/logging/",)),
    ("naive proxy handler (bench/naive_proxy.py)", ("naive_proxy.py",)),
)
# Helpers used by several components: a sample in one of them goes to its caller's component.
SHARED: Final = (
    "/aiohttp/streams.py",
    "/aiohttp/helpers.py",
    "/aiohttp/base_protocol.py",
    "/aiohttp/http_",
    "/aiohttp/payload",
    "/aiohttp/compression_utils.py",
    "/multidict/",
    "/yarl/",
    "/asyncio/",
    "contextlib.py",
    "dataclasses.py",
    "typing.py",
    "enum.py",
    "abc.py",
    "uuid.py",
    "hmac.py",
    "functools.py",
    "threading.py",
    "re/",
)
# Inclusive shares worth knowing: (label, regex on "Qualified.name (/file").
KEY_FUNCTIONS: Final = (
    ("ProxyHandler.__call__ (the whole handler)", r"^ProxyHandler\.__call__ \(/proxy/app"),
    ("  _access_log (one access log line)", r"^(ProxyHandler\.)?_access_log \(/proxy/app"),
    ("  Metrics.observe", r"^Metrics\.observe \("),
    ("access log flush (one write per loop turn)", r"^AccessLog\.flush \("),
    ("Metrics.sync (at scrape)", r"^Metrics\.sync \("),
    ("  parse_target", r"^parse_target \("),
    ("  RouteTable.match", r"^RouteTable\.match \("),
    ("  read_request (body read for devo)", r"^read_request \("),
    ("  prepare_upstream", r"^prepare_upstream \("),
    ("  sign (signer + SigningContext.now)", r"^sign \(/proxy/app"),
    ("    SigningContext.now (uuid4, time)", r"^SigningContext\.now \("),
    ("  Forwarder.forward (upstream exchange)", r"^Forwarder\.forward \("),
    ("    ClientSession._request (send, await headers)", r"^ClientSession\._request \("),
    ("  relay (response to client)", r"^relay \(/proxy/relay"),
    ("  strip_hop_by_hop (both directions)", r"^strip_hop_by_hop \("),
    ("aiohttp server: data_received (parse)", r"^RequestHandler\.data_received \("),
    ("aiohttp server: finish_response", r"^RequestHandler\.finish_response \("),
    ("aiohttp client: data_received", r"^ResponseHandler\.data_received \("),
    ("structlog (any)", r"\(/structlog/"),
    ("prometheus_client (any)", r"\(/prometheus_client/"),
    ("stdlib logging (any)", r"\(/logging/"),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Frame:
    func: str
    file: str
    line: str

    @property
    def text(self) -> str:
        return f"{self.func} ({self.file}"


def parse_stacks(lines: Iterable[str]) -> list[tuple[list[Frame], int]]:
    """py-spy's raw (collapsed) format: `frame;frame;... count`, root first."""
    stacks = []
    for line in lines:
        stack_text, _, count_text = line.rstrip("\n").rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = []
        for part in stack_text.split(";"):
            match = _FRAME.match(part)
            if match:
                path = match["file"] if match["file"].startswith("/") else "/" + match["file"]
                frames.append(Frame(match["func"], path, match["line"] or ""))
            else:
                frames.append(Frame(part, "", ""))
        stacks.append((frames, int(count_text)))
    return stacks


_ENTRY_POINTS: Final = frozenset({"<module>", "main", "_run", "run_event_loop", "run_app"})


def component_of(frames: list[Frame]) -> str:
    for frame in reversed(frames):  # innermost first
        if frame.func in _ENTRY_POINTS or any(shared in frame.file for shared in SHARED):
            continue  # a process's entry frames belong to no component (naive's would)
        for name, needles in COMPONENTS:
            if any(needle in frame.file for needle in needles):
                return name
    innermost = frames[-1].file if frames else ""
    if any(part in innermost for part in ("/asyncio/", "uvloop", "selectors.py")):
        return "event loop (uvloop, asyncio)"
    for frame in reversed(frames):
        if "/aiohttp/" in frame.file:
            return "aiohttp (shared helpers)"
    return "other"


@dataclass
class Breakdown:
    total: int  # samples of the event loop's thread
    other_threads: int  # samples of other threads (idle pool workers, reported apart)
    components: list[tuple[str, int]]
    key_functions: list[tuple[str, int]]
    top_self: list[tuple[str, int]]


def analyse(stacks: list[tuple[list[Frame], int]], top: int = 15) -> Breakdown:
    main = [(frames, count) for frames, count in stacks if frames and frames[0].func == "<module>"]
    total = sum(count for _, count in main)
    other_threads = sum(count for _, count in stacks) - total
    components: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    key_hits: Counter[str] = Counter()
    patterns = [(label, re.compile(pattern)) for label, pattern in KEY_FUNCTIONS]
    for frames, count in main:
        components[component_of(frames)] += count
        if frames:
            leaf = frames[-1]
            self_time[f"{leaf.func} ({_short(leaf.file)}:{leaf.line})"] += count
        texts = {frame.text for frame in frames}
        for label, pattern in patterns:
            if any(pattern.search(text) for text in texts):
                key_hits[label] += count
    return Breakdown(
        total,
        other_threads,
        components.most_common(),
        [(label, key_hits[label]) for label, _ in KEY_FUNCTIONS],
        self_time.most_common(top),
    )


def _short(path: str) -> str:
    return path.removeprefix("/")


@dataclass
class Profiled:
    name: str
    breakdown: Breakdown
    rps: float
    cpu_us: float  # the process's CPU per request during the profile (py-spy overhead included)


def report(p: Profiled) -> str:
    breakdown, cpu_us = p.breakdown, p.cpu_us
    total = max(1, breakdown.total)

    def cells(count: int) -> str:
        return f"{count / total:.1%} | {count / total * cpu_us:.0f}"

    lines = [
        f"### {p.name}: {breakdown.total} samples of the event loop thread "
        f"({breakdown.other_threads} of idle worker threads left out), {p.rps:.0f} req/s "
        f"under py-spy, {cpu_us:.0f} CPU us per request",
        "",
        "| component (innermost known frame) | share | us/req |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {cells(count)} |" for label, count in breakdown.components]
    lines += ["", "| inclusive: function (and what it calls) | share | us/req |", "|---|---:|---:|"]
    lines += [
        f"| {label.replace('  ', '&nbsp;&nbsp;')} | {cells(count)} |"
        for label, count in breakdown.key_functions
        if count
    ]
    lines += ["", "| top self time: function (file:line) | share | us/req |", "|---|---:|---:|"]
    lines += [f"| `{label}` | {cells(count)} |" for label, count in breakdown.top_self]
    return "\n".join(lines)


def comparison(profiles: list[Profiled]) -> str:
    """Components side by side, in CPU microseconds per request."""
    names = [label for label, _ in COMPONENTS]
    names += ["event loop (uvloop, asyncio)", "aiohttp (shared helpers)", "other"]
    lines = [
        "### CPU us per request by component (share of samples x CPU us per request)",
        "",
        "| component | " + " | ".join(p.name for p in profiles) + " |",
        "|---|" + "---:|" * len(profiles),
    ]
    for name in names:
        values = []
        for p in profiles:
            count = dict(p.breakdown.components).get(name, 0)
            values.append(count / max(1, p.breakdown.total) * p.cpu_us)
        if max(values) >= 0.5:
            lines.append(f"| {name} | " + " | ".join(f"{v:.0f}" for v in values) + " |")
    lines.append("| **total** | " + " | ".join(f"**{p.cpu_us:.0f}**" for p in profiles) + " |")
    return "\n".join(lines)


def py_spy_binary() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is not installed: run `bash bench/install.sh`")
    return found


def profile_workload(
    name: str,
    load: h.Load,
    service: h.Service,
    driver: h.Driver,
    args: argparse.Namespace,
    out: Path,
) -> Profiled:
    pyspy = py_spy_binary()
    fmt, suffix = ("flamegraph", "svg") if args.svg else ("raw", "txt")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    raw_path = out / f"profile-{slug}.txt"
    targets = [(raw_path, "raw")]
    if args.svg:
        targets.append((out / f"profile-{slug}.{suffix}", fmt))
    profiled = None
    for path, output_format in targets:
        record = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(service.process.pid),
                "--rate",
                str(args.rate),
                "--duration",
                str(int(args.duration)),
                "--format",
                output_format,
                "--output",
                str(path),
                *(["--nonblocking"] if args.nonblocking else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            time.sleep(0.5)  # py-spy attaches
            cpu_before = service.cpu()
            result = driver.run(service.port, load, args.connections, args.duration)
            cpu = service.cpu() - cpu_before
            _, err = record.communicate(timeout=args.duration + 60)
        finally:
            h.stop_process(record)
        if record.returncode != 0 or not path.exists():
            raise h.BenchError(f"py-spy failed ({record.returncode}): {err.decode()[-2000:]}")
        if result.failed:
            raise h.BenchError(f"the {name} load failed under py-spy: {result}")
        if output_format == "raw":
            breakdown = analyse(parse_stacks(path.read_text().splitlines()))
            profiled = Profiled(name, breakdown, result.rps, cpu / max(1, result.requests) * 1e6)
    assert profiled is not None
    return profiled


def strace_counts(
    service: h.Service, load: h.Load, driver: h.Driver, seconds: float, out: Path
) -> tuple[dict[str, int], int]:
    """Syscalls by name over a c=1 load (one request at a time: exact counts per request)."""
    strace = shutil.which("strace")
    if not strace:
        raise h.BenchError("strace is not installed (apt-get install strace)")
    path = out / f"strace-{service.name}-{load.method}.txt"
    tracer = subprocess.Popen(
        [strace, "-c", "-f", "-o", str(path), "-p", str(service.process.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(0.5)  # strace attaches
        result = driver.run(service.port, load, 1, seconds)
    finally:
        h.stop_process(tracer)  # SIGTERM: strace detaches and writes its summary
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] != "total" and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts, result.requests


def syscall_report(rows: list[tuple[str, dict[str, int], int]]) -> str:
    names = sorted({name for _, counts, _ in rows for name in counts})
    per_request = {
        label: {name: counts.get(name, 0) / max(1, requests) for name in names}
        for label, counts, requests in rows
    }
    names.sort(key=lambda n: -max(per_request[label][n] for label, _, _ in rows))
    labels = [label for label, _, _ in rows]
    lines = [
        "### syscalls per request (strace -c -f, concurrency 1)",
        "",
        "| syscall | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name in names:
        values = [per_request[label][name] for label in labels]
        if max(values) >= 0.05:
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    totals = [sum(per_request[label].values()) for label in labels]
    lines.append("| **total** | " + " | ".join(f"**{v:.2f}**" for v in totals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="py-spy profile of signing-proxy under load")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per workload")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--workload", choices=["bearer", "devo", "both"], default="both")
    parser.add_argument("--svg", action="store_true", help="also record flame graphs (SVG)")
    parser.add_argument(
        "--nonblocking",
        action="store_true",
        help="py-spy --nonblocking: do not pause the proxy to sample (less overhead, "
        "occasionally torn stacks)",
    )
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="also count syscalls per request with strace (signing-proxy and the naive proxy)",
    )
    parser.add_argument(
        "--no-naive",
        action="store_true",
        help="do not profile the naive proxy (GET) for comparison",
    )
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", type=Path, help="directory for the raw stacks (default: temp)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="signing-proxy-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="signing-proxy-profile-run-"))
    idle = h.measure_machine_busy(2.0)
    h.print_flush(
        f"machine {idle.busy * 100:.0f}% busy before starting"
        + (" (noisy: shares stay meaningful, absolute req/s do not)" if idle.busy > 0.15 else "")
    )
    cpus = h.cpu_plan(not args.no_pin)
    driver = h.make_driver(workdir, cpus.get("driver"))
    body = workdir / "body.json"
    body.write_bytes(h.post_body())
    loads = {
        "bearer": h.Load("GET", "/bearer/api/items?page=1"),
        "devo": h.Load("POST", "/devo/api/items", body),
    }
    names = ["bearer", "devo"] if args.workload == "both" else [args.workload]
    profiles: list[Profiled] = []
    reports = []
    upstream_kind = ""
    try:
        budget = 120 + (len(names) + 1) * (args.duration * (3 if args.svg else 2) + 90)
        budget += 120 if args.syscalls else 0
        with h.deadline(budget), h.Processes(workdir, cpus) as procs:
            upstream = h.start_upstream(procs, h.find_binary("nginx"))
            upstream_kind = upstream.kind
            proxy = h.start_signing_proxy(procs, upstream)
            naive = h.start_naive(procs, upstream, uvloop=False)
            plain = h.Load("GET", "/api/items?page=1")
            plain_post = h.Load("POST", "/api/items", body)
            jobs = [(f"signing-proxy {name}", loads[name], proxy.service) for name in names]
            if not args.no_naive:
                jobs.insert(0, ("naive GET", plain, naive))
            for label, load, service in jobs:
                driver.run(service.port, load, args.connections, 2.0)  # warm
                h.print_flush(f"profiling {label} ({args.duration:g} s, c={args.connections}) ...")
                profiles.append(profile_workload(label, load, service, driver, args, out))
            reports.append(comparison(profiles))
            reports += [report(p) for p in profiles]
            if args.syscalls:
                h.print_flush("counting syscalls per request (strace, c=1) ...")
                rows = []
                for label, service, load in (
                    ("naive GET", naive, plain),
                    ("signing-proxy bearer GET", proxy.service, loads["bearer"]),
                    ("naive POST 1 KiB", naive, plain_post),
                    ("signing-proxy devo POST", proxy.service, loads["devo"]),
                ):
                    counts, requests = strace_counts(service, load, driver, 5.0, out)
                    rows.append((label, counts, requests))
                reports.append(syscall_report(rows))
    except h.BenchError as err:
        h.print_flush(f"PROFILE FAILED: {err}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    h.print_flush(f"upstream: {upstream_kind}; load generator: {driver.name}; raw stacks in {out}")
    for text in reports:
        h.print_flush("")
        h.print_flush(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
