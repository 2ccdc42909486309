"""`--workers N`: N processes on one socket, one admin port for all, clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support import ProxyProcess, running_upstream


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _ready_workers(proxy: ProxyProcess) -> set[str]:
    text = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
    return set(re.findall(r'signing_proxy_worker_ready\{pid="(\d+)"\} 1\.0', text))


def _wait(predicate: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_workers_below_one_is_refused_before_the_config_is_read(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", str(tmp_path / "absent.yaml"),
         "--workers", "0", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr == "signing-proxy: --workers must be at least 1\n"


def test_two_workers_share_the_port_and_one_admin(tmp_path: Path) -> None:
    with running_upstream() as upstream:
        config = {
            "routes": [
                {
                    "name": "w",
                    "match": {"path_prefix": "/"},
                    "upstream": upstream.url,
                    "signer": {"scheme": "bearer", "token": "t"},
                }
            ]
        }
        proxy = ProxyProcess(config, tmp_path, extra_args=["--workers", "2"]).start()
        assert proxy.process is not None
        try:
            assert _wait(lambda: requests.get(f"{proxy.admin_url}/readyz", timeout=2).ok)
            workers = _children(proxy.process.pid)
            assert len(workers) == 2
            assert _ready_workers(proxy) == {str(pid) for pid in workers}
            for _ in range(40):  # new connections: the kernel spreads them over the workers
                response = requests.get(
                    f"{proxy.url}/x", headers={"Connection": "close"}, timeout=10
                )
                assert response.status_code == 200
            metrics = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
            assert 'signing_proxy_requests_total{code="200",method="GET",route="w"} 40.0' in metrics

            # A worker that dies is replaced, and the service goes on.
            os.kill(workers[0], signal.SIGKILL)
            assert _wait(
                lambda: (
                    len(_children(proxy.process.pid)) == 2
                    and workers[0] not in _children(proxy.process.pid)
                )
            )
            assert _wait(lambda: requests.get(f"{proxy.admin_url}/readyz", timeout=2).ok)
            assert requests.get(f"{proxy.url}/y", timeout=10).status_code == 200
            survivors = _children(proxy.process.pid)
        finally:
            code = proxy.stop()
        assert code == 0
        for pid in survivors:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
            )
        names = [event["event"] for event in proxy.events()]
        assert "worker_died" in names
        assert "worker_restarted" in names
        assert names.count("stopped") >= 3  # two workers and the supervisor
