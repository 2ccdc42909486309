"""The bench's moving parts: processes, servers, load drivers and CPU accounting.

Shared by `run.py` (the benchmark) and `profile.py` (py-spy under load). Everything binds
127.0.0.1; every child runs in its own process group and is stopped (TERM, then KILL) when the
`Processes` context exits, whether by return, exception or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

BENCH_DIR: Final = Path(__file__).resolve().parent
REPO: Final = BENCH_DIR.parent
HOST: Final = "127.0.0.1"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
UPSTREAM_BODY: Final = b'{"ok":true,"items":[1,2,3],"note":"signing-proxy bench upstream"}'
BEARER_TOKEN: Final = "bench-token"
POST_BODY_BYTES: Final = 1024


class BenchError(Exception):
    """A target failed to start or to serve: the run cannot report."""


def post_body() -> bytes:
    """A deterministic JSON document of exactly 1 KiB."""
    events = [
        {"id": i, "type": "login", "user": f"user-{i:04d}", "ok": i % 3 != 0} for i in range(8)
    ]
    doc: dict[str, Any] = {"source": "bench", "events": events, "pad": ""}
    size = len(json.dumps(doc, separators=(",", ":")).encode())
    if size > POST_BODY_BYTES:
        raise AssertionError(f"the base document is already {size} bytes")
    doc["pad"] = "x" * (POST_BODY_BYTES - size)
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) == POST_BODY_BYTES
    return body


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def find_binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )


def signing_proxy_command() -> list[str]:
    script = Path(sys.executable).parent / "signing-proxy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]


# --- CPU accounting -------------------------------------------------------------------------


def machine_jiffies() -> tuple[int, int, int, int]:
    """(busy, steal, total, in processes) jiffies of all CPUs since boot, from /proc/stat.

    "in processes" (user + nice + system + steal) leaves out interrupt and softirq time, which
    no process's utime/stime counts (the loopback traffic of the bench itself lands there).
    """
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    in_processes = user + nice + system + steal
    return in_processes + irq + softirq, steal, total, in_processes


@dataclass(frozen=True)
class IdleCheck:
    busy: float  # fraction of all CPUs busy (steal included)
    steal: float
    seconds: float


def measure_machine_busy(seconds: float = 2.0) -> IdleCheck:
    busy0, steal0, total0, _ = machine_jiffies()
    time.sleep(seconds)
    busy1, steal1, total1, _ = machine_jiffies()
    total = max(1, total1 - total0)
    return IdleCheck((busy1 - busy0) / total, (steal1 - steal0) / total, seconds)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def process_tree(root: int) -> list[int]:
    """`root` and its live descendants (nginx: master + worker)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, ()))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes (all their threads), from /proc/<pid>/stat."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def own_and_children_cpu() -> float:
    """CPU seconds of this process and of every child (and their children) reaped so far."""
    return _rusage(resource.RUSAGE_SELF) + children_cpu()


def children_cpu() -> float:
    return _rusage(resource.RUSAGE_CHILDREN)


def _rusage(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


# --- processes ------------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    kind: str = ""  # what actually runs: "nginx", "python fallback", ...
    pids: list[int] = field(default_factory=list)  # the tree, once it is up

    def cpu(self) -> float:
        return cpu_seconds(self.pids or [self.process.pid])


class Processes:
    """Children in their own process groups, all stopped on exit (also on error / Ctrl-C)."""

    def __init__(self, workdir: Path, cpus: dict[str, set[int]] | None = None) -> None:
        self.workdir = workdir
        self.cpus = cpus or {}
        self.services: list[Service] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Processes:
        # SIGINT (also when inherited as ignored), SIGTERM, SIGHUP: unwind like Ctrl-C, so the
        # children are stopped.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def start(
        self,
        name: str,
        argv: list[str],
        port: int,
        *,
        role: str,
        kind: str,
        env: dict[str, str] | None = None,
    ) -> Service:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                pinned(argv, self.cpus.get(role)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**os.environ, **(env or {})},
                cwd=self.workdir,
            )
        service = Service(name, process, port, log_path, kind)
        self.services.append(service)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.services):
            stop_process(service.process)
        self.services.clear()


def pinned(argv: list[str], cpus: set[int] | None) -> list[str]:
    """`argv` run by `taskset` on these CPUs (it execs: the pid stays the same)."""
    taskset = shutil.which("taskset")
    if not cpus or not taskset:
        return argv
    return [taskset, "-c", ",".join(map(str, sorted(cpus))), *argv]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)
    # A group may outlive its leader (an orphaned nginx worker): make sure it is gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(service: Service, path: str = "/", timeout: float = 20.0) -> None:
    """Until the service answers any HTTP status on `path`; BenchError if it died or never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise BenchError(
                f"{service.name} exited with {service.process.returncode} while starting:\n"
                + tail(service.log_path)
            )
        with contextlib.suppress(OSError, http.client.HTTPException):
            http_request(service.port, path=path, timeout=1.0)
            service.pids = process_tree(service.process.pid)
            return
        time.sleep(0.05)
    raise BenchError(
        f"{service.name} did not answer on 127.0.0.1:{service.port} within {timeout:.0f} s:\n"
        + tail(service.log_path)
    )


# --- servers --------------------------------------------------------------------------------

_NGINX_COMMON: Final = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/{name}-tmp/body;
    proxy_temp_path {dir}/{name}-tmp/proxy;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{body}
}}
"""

_NGINX_UPSTREAM: Final = """\
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            default_type application/json;
            return 200 '{response}';
        }}
    }}"""

_NGINX_PROXY: Final = """\
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
        }}
    }}"""


def _nginx_conf(workdir: Path, name: str, body: str) -> Path:
    (workdir / f"{name}-tmp").mkdir(exist_ok=True)
    path = workdir / f"{name}.conf"
    path.write_text(_NGINX_COMMON.format(dir=workdir, name=name, body=body))
    return path


def nginx_argv(nginx: str, workdir: Path, name: str, conf: Path) -> list[str]:
    return [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / f"{name}.error.log")]


def start_upstream(procs: Processes, nginx: str | None) -> Service:
    port = free_port()
    if nginx:
        body = _NGINX_UPSTREAM.format(port=port, response=UPSTREAM_BODY.decode())
        conf = _nginx_conf(procs.workdir, "upstream", body)
        argv = nginx_argv(nginx, procs.workdir, "upstream", conf)
        service = procs.start("upstream", argv, port, role="upstream", kind="nginx")
    else:
        argv = [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(port)]
        service = procs.start(
            "upstream", argv, port, role="upstream", kind="python fallback (bench/upstream.py)"
        )
    wait_ready(service)
    return service


def start_nginx_proxy(procs: Processes, nginx: str, upstream: Service) -> Service:
    port = free_port()
    body = _NGINX_PROXY.format(port=port, upstream_port=upstream.port, token=BEARER_TOKEN)
    conf = _nginx_conf(procs.workdir, "nginx-proxy", body)
    argv = nginx_argv(nginx, procs.workdir, "nginx-proxy", conf)
    service = procs.start("nginx-proxy", argv, port, role="target", kind="nginx, 1 worker")
    wait_ready(service)
    return service


def start_naive(procs: Processes, upstream: Service, *, uvloop: bool) -> Service:
    port = free_port()
    name = "naive-uvloop" if uvloop else "naive"
    argv = [
        sys.executable,
        str(BENCH_DIR / "naive_proxy.py"),
        "--port",
        str(port),
        "--upstream",
        f"http://{HOST}:{upstream.port}",
    ]
    if uvloop:
        argv.append("--uvloop")
    kind = "aiohttp on uvloop" if uvloop else "aiohttp on asyncio"
    service = procs.start(name, argv, port, role="target", kind=kind)
    wait_ready(service)
    return service


SIGNING_PROXY_CONFIG: Final = """\
# Written by bench/harness.py for one bench run.
listen: 127.0.0.1:{port}
admin: 127.0.0.1:{admin_port}
routes:
  - name: bench-bearer
    match: {{path_prefix: /bearer}}
    upstream: http://127.0.0.1:{upstream_port}
    signer: {{scheme: bearer, token: {token}}}
  - name: bench-devo
    match: {{path_prefix: /devo}}
    upstream: http://127.0.0.1:{upstream_port}
    signer: {{scheme: devo, api_key: bench-devo-key, api_secret: bench-devo-secret}}
"""


@dataclass
class SigningProxy:
    service: Service
    admin_port: int
    access_log: Path


def start_signing_proxy(procs: Processes, upstream: Service) -> SigningProxy:
    """signing-proxy as in production: JSON logs (stderr, here into a file), metrics on."""
    port, admin_port = free_port(), free_port()
    config = procs.workdir / "signing-proxy.yaml"
    config.write_text(
        SIGNING_PROXY_CONFIG.format(
            port=port, admin_port=admin_port, upstream_port=upstream.port, token=BEARER_TOKEN
        )
    )
    argv = [
        *signing_proxy_command(),
        "run",
        "--config",
        str(config),
        "--listen",
        f"{HOST}:{port}",
        "--admin",
        f"{HOST}:{admin_port}",
        "--drain-delay",
        "0",
        "--shutdown-timeout",
        "2",
    ]
    service = procs.start(
        "signing-proxy", argv, port, role="target", kind="signing-proxy run (uvloop)"
    )
    wait_ready(service, path="/bearer/")
    return SigningProxy(service, admin_port, service.log_path)


# --- load drivers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """One workload against one target: what the driver sends."""

    method: str
    path: str
    body_file: Path | None = None


@dataclass
class Measurement:
    requests: int
    seconds: float
    rps: float
    p50_us: float
    p99_us: float
    errors: int  # transport errors (connect, read, write, timeout)
    non_2xx: int
    driver_cpu: float = 0.0
    target_cpu: float = 0.0
    upstream_cpu: float = 0.0
    others: float = 0.0  # share of the machine used by processes not in the bench meanwhile

    @property
    def failed(self) -> bool:
        return self.requests == 0 or self.errors > 0 or self.non_2xx > 0


class Driver:
    name = "driver"

    def __init__(self, workdir: Path, pin: set[int] | None) -> None:
        self.workdir = workdir
        self.pin = pin

    def argv(self, port: int, load: Load, connections: int, seconds: float) -> list[str]:
        raise NotImplementedError

    def parse(self, stdout: str) -> Measurement:
        raise NotImplementedError

    def run(self, port: int, load: Load, connections: int, seconds: float) -> Measurement:
        argv = self.argv(port, load, connections, seconds)
        before = children_cpu()  # the driver's CPU: it is the only child reaped meanwhile
        try:
            done = subprocess.run(
                pinned(argv, self.pin),
                capture_output=True,
                text=True,
                timeout=seconds + 30.0,
                start_new_session=True,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{self.name} did not finish: {' '.join(argv)}") from exc
        if done.returncode != 0:
            raise BenchError(f"{self.name} failed ({done.returncode}): {done.stderr.strip()}")
        result = self.parse(done.stdout)
        result.driver_cpu = children_cpu() - before
        return result


class WrkDriver(Driver):
    name = "wrk"

    def __init__(self, workdir: Path, pin: set[int] | None, wrk: str) -> None:
        super().__init__(workdir, pin)
        self.wrk = wrk

    def argv(self, port: int, load: Load, connections: int, seconds: float) -> list[str]:
        return [
            self.wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(BENCH_DIR / "wrk.lua"),
            f"http://{HOST}:{port}{load.path}",
            "--",
            load.method,
            str(load.body_file or ""),
        ]

    def parse(self, stdout: str) -> Measurement:
        line = next((x for x in stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
        if line is None:
            raise BenchError(f"wrk printed no result:\n{stdout}")
        data = json.loads(line.removeprefix("BENCH_RESULT "))
        seconds = data["duration_us"] / 1e6
        return Measurement(
            requests=data["requests"],
            seconds=seconds,
            rps=data["requests"] / seconds if seconds else 0.0,
            p50_us=data["p50_us"],
            p99_us=data["p99_us"],
            errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
            non_2xx=data["status"],
        )


class PythonDriver(Driver):
    name = "python fallback (bench/loadgen.py)"

    def argv(self, port: int, load: Load, connections: int, seconds: float) -> list[str]:
        argv = [
            sys.executable,
            str(BENCH_DIR / "loadgen.py"),
            "--url",
            f"http://{HOST}:{port}{load.path}",
            "-c",
            str(connections),
            "-d",
            str(seconds),
            "-X",
            load.method,
        ]
        if load.body_file:
            argv += ["--body-file", str(load.body_file)]
        return argv

    def parse(self, stdout: str) -> Measurement:
        data = json.loads(stdout.strip().splitlines()[-1])
        return Measurement(
            requests=data["requests"],
            seconds=data["seconds"],
            rps=data["rps"],
            p50_us=data["p50_us"],
            p99_us=data["p99_us"],
            errors=data["errors"],
            non_2xx=data["non_2xx"],
        )


def make_driver(workdir: Path, pin: set[int] | None, *, allow_wrk: bool = True) -> Driver:
    wrk = find_binary("wrk") if allow_wrk else None
    return WrkDriver(workdir, pin, wrk) if wrk else PythonDriver(workdir, pin)


def cpu_plan(pin: bool) -> dict[str, set[int]]:
    """Pinning: the target alone on the last CPU; upstream and load generator on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or not shutil.which("taskset"):
        return {}
    return {"target": {cpus[-1]}, "upstream": set(cpus[:-1]), "driver": set(cpus[:-1])}


def print_flush(text: str = "", file: IO[str] | None = None) -> None:
    print(text, file=file or sys.stdout, flush=True)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound the whole run: SIGALRM raises TimeoutError, so the children are still stopped."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"the bench ran over its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
