"""Real clients through `signing-proxy run`'s CONNECT tunnels, each signing (devo) through an
HTTPS upstream on loopback that verifies the signature (tests/verifiers/devo.py) and whose
certificate the proxy verifies (trustme).

- issue 12.3, `CONNECT host:80`: curl `--proxytunnel`, undici's ProxyAgent (Node) for an
  `http://` URL;
- issue 18, intercepted `CONNECT host:443`: curl (`--proxy` + `--cacert`), Python `requests`
  (`HTTPS_PROXY` + `REQUESTS_CA_BUNDLE`), the aiohttp client, Node (undici's ProxyAgent with
  `NODE_EXTRA_CA_CERTS`) and Java 17 (`HttpClient`, `-Dhttps.proxyHost`, a `keytool`
  truststore).

The proxy runs on uvloop with aiohttp's C parser, and (curl) with the pure-Python parser
(`AIOHTTP_NO_EXTENSIONS=1`). Each child gets an environment with only its own trust settings
(the machine's SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE... are left out).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from proxy.interception.ca import create_ca
from tests.support import ProxyProcess, Seen, Upstream, running_proxy, running_upstream
from tests.verifiers.devo import verify_devo

HERE = Path(__file__).resolve().parent
API_KEY, API_SECRET = "devo-key-tunnel", "devo-secret-tunnel-5e5e"
BODY = '{"report": "weekly", "n": 7}'
# What every child keeps from this machine's environment; trust and proxy settings are added
# per client.
_KEEP = ("PATH", "HOME", "LANG", "TMPDIR", "JAVA_HOME")


def _env(**extra: str) -> dict[str, str]:
    return {**{k: os.environ[k] for k in _KEEP if k in os.environ}, **extra}


class Setup:
    def __init__(self, workdir: Path, upstream: Upstream, upstream_ca: Path) -> None:
        self.workdir = workdir
        self.upstream = upstream
        self.ca_dir = workdir / "ca"
        create_ca(self.ca_dir)
        self.ca_file = self.ca_dir / "ca.crt"
        signer = {"scheme": "devo", "api_key": API_KEY, "api_secret": API_SECRET}
        common = {
            "upstream": f"{upstream.url}/verify",
            "tls": {"ca_file": str(upstream_ca)},
            "signer": signer,
        }
        self.config: dict[str, Any] = {
            "interception": {
                "ca_cert": {"file": str(self.ca_file)},
                "ca_key": {"file": str(self.ca_dir / "ca.key")},
            },
            "tunnels": {"idle_timeout": 30},
            "routes": [
                {
                    "name": "vendor",
                    "match": {"host": "api.vendor.test"},
                    "intercept": True,
                    **common,
                },
                {"name": "plain", "match": {"host": "api.plain.test"}, **common},
            ],
        }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    workdir = tmp_path_factory.mktemp("tunnel-clients")
    upstream_ca = workdir / "upstream-ca.pem"
    authority.cert_pem.write_to_path(str(upstream_ca))
    with running_upstream(context) as upstream:

        async def verifying(request: web.BaseRequest) -> web.Response:
            body = b"".join([c async for c in request.content.iter_chunked(1 << 16)])  # whole
            upstream.seen.append(
                Seen(
                    method=request.method,
                    raw_path=request.raw_path,
                    headers=dict(request.headers),
                    header_items=list(request.headers.items()),
                    body_len=len(body),
                    body_sha256=hashlib.sha256(body).hexdigest(),
                    body=body,
                )
            )
            ok = verify_devo(
                request.headers, body, API_KEY, API_SECRET, now_ms=int(time.time() * 1000)
            )
            if request.path.endswith("/slow"):
                await asyncio.sleep(1.5)
            return web.json_response(
                {
                    "verified": ok,
                    "path": request.path,
                    "body": body[:4096].decode("utf-8", "replace"),
                },
                status=200 if ok else 401,
            )

        upstream.handlers["/verify"] = verifying
        yield Setup(workdir, upstream, upstream_ca)


@pytest.fixture(scope="module", params=["c-parser", "python-parser"])
def proxy(request: pytest.FixtureRequest, setup: Setup) -> Iterator[ProxyProcess]:
    env = {"AIOHTTP_NO_EXTENSIONS": "1"} if request.param == "python-parser" else {}
    workdir = setup.workdir / request.param
    workdir.mkdir()
    with running_proxy(setup.config, workdir, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def c_proxy(setup: Setup) -> Iterator[ProxyProcess]:
    workdir = setup.workdir / "main"
    workdir.mkdir()
    with running_proxy(setup.config, workdir) as running:
        yield running


def _verified(setup: Setup, count: int) -> list[str]:
    """The paths of the last `count` requests the upstream saw, each verified."""
    seen = setup.upstream.seen[-count:]
    assert len(seen) == count
    for item in seen:
        assert verify_devo(item.headers, item.body or b"", API_KEY, API_SECRET)
    return [item.raw_path for item in seen]


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# --- issue 12.3: CONNECT host:80 ------------------------------------------------------------


def test_curl_proxytunnel_to_port_80(setup: Setup, proxy: ProxyProcess) -> None:
    out = _run(
        [
            "curl", "-sS", "--fail-with-body", "--proxytunnel", "--proxy", proxy.url,
            "-H", "Content-Type: application/json", "--data", BODY,
            "http://api.plain.test/a", "http://api.plain.test/b",
        ],
        _env(),
    )  # fmt: skip
    answers = [json.loads(line) for line in out.replace("}{", "}\n{").splitlines()]
    assert [(a["verified"], a["body"]) for a in answers] == [(True, BODY)] * 2
    assert _verified(setup, 2) == ["/verify/a", "/verify/b"]
    tunnels = _events(proxy, "tunnel", route="plain")
    assert tunnels[-1]["requests"] == 2  # one tunnel, two requests (keep-alive)
    assert tunnels[-1]["scheme"] == "http"


def test_undici_proxy_agent_for_an_http_url(setup: Setup, c_proxy: ProxyProcess) -> None:
    node = _node_with_undici()
    out = _run(
        [
            node, str(HERE / "node" / "proxy_fetch.js"), c_proxy.url, "POST", BODY,
            "http://api.plain.test/n1", "http://api.plain.test/n2",
        ],
        _env(),
    )  # fmt: skip
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["status"] for a in answers] == [200, 200]
    assert _verified(setup, 2) == ["/verify/n1", "/verify/n2"]
    # undici really tunnelled: a CONNECT to port 80, never an absolute-form request.
    assert _events(c_proxy, "tunnel", route="plain", port=80)


# --- issue 18: intercepted CONNECT host:443 -------------------------------------------------


def test_curl_through_an_intercepted_tunnel(setup: Setup, proxy: ProxyProcess) -> None:
    out = _run(
        [
            "curl", "-sS", "--fail-with-body", "--proxy", proxy.url,
            "--cacert", str(setup.ca_file),
            "-H", "Content-Type: application/json", "--data", BODY,
            "https://api.vendor.test/c1", "https://api.vendor.test/c2",
        ],
        _env(),
    )  # fmt: skip
    answers = [json.loads(line) for line in out.replace("}{", "}\n{").splitlines()]
    assert [(a["verified"], a["body"]) for a in answers] == [(True, BODY)] * 2
    assert _verified(setup, 2) == ["/verify/c1", "/verify/c2"]
    line = _events(proxy, "tunnel", route="vendor")[-1]
    assert (line["scheme"], line["host"], line["port"], line["requests"]) == (
        "https",
        "api.vendor.test",
        443,
        2,
    )
    assert line["close_reason"] == "closed"
    # The CONNECT itself is not an access-log request; the requests inside are.
    assert not proxy.request_events(timeout=0, method="CONNECT", status=200)
    assert len(proxy.request_events(route="vendor", path="/c1")) == 1


def test_requests_with_https_proxy_and_its_ca_bundle(setup: Setup, c_proxy: ProxyProcess) -> None:
    script = (
        "import requests, sys\n"
        "r = requests.post('https://api.vendor.test/py', data=sys.argv[1],"
        " headers={'Content-Type': 'application/json'}, timeout=20)\n"
        "print(r.status_code, r.text)\n"
    )
    out = _run(
        [sys.executable, "-c", script, BODY],
        _env(HTTPS_PROXY=c_proxy.url, REQUESTS_CA_BUNDLE=str(setup.ca_file)),
    )
    assert out.startswith("200 ")
    assert json.loads(out[4:])["verified"] is True
    assert _verified(setup, 1) == ["/verify/py"]


async def test_the_aiohttp_client(setup: Setup, c_proxy: ProxyProcess) -> None:
    context = ssl.create_default_context(cafile=str(setup.ca_file))
    async with aiohttp.ClientSession() as session:
        for path in ("/aio1", "/aio2"):
            async with session.post(
                f"https://api.vendor.test{path}",
                data=BODY,
                headers={"Content-Type": "application/json"},
                proxy=c_proxy.url,
                ssl=context,
            ) as response:
                assert response.status == 200
                assert (await response.json())["verified"] is True
    assert _verified(setup, 2) == ["/verify/aio1", "/verify/aio2"]


def test_node_undici_with_node_extra_ca_certs(setup: Setup, c_proxy: ProxyProcess) -> None:
    node = _node_with_undici()
    out = _run(
        [
            node, str(HERE / "node" / "proxy_fetch.js"), c_proxy.url, "POST", BODY,
            "https://api.vendor.test/node",
        ],
        _env(NODE_EXTRA_CA_CERTS=str(setup.ca_file)),
    )  # fmt: skip
    answer = json.loads(out)
    assert (answer["status"], json.loads(answer["body"])["verified"]) == (200, True)
    assert _verified(setup, 1) == ["/verify/node"]


def test_java_httpclient_with_a_truststore(
    setup: Setup, c_proxy: ProxyProcess, tmp_path: Path
) -> None:
    java, keytool = shutil.which("java"), shutil.which("keytool")
    if java is None or keytool is None:
        pytest.skip("no JDK (java, keytool) installed; CI installs one (.ci/run)")
    store = tmp_path / "proxy-trust.p12"
    _run(
        [
            keytool, "-importcert", "-noprompt", "-alias", "signing-proxy",
            "-file", str(setup.ca_file), "-keystore", str(store), "-storetype", "PKCS12",
            "-storepass", "changeit",
        ],
        _env(),
    )  # fmt: skip
    port = c_proxy.url.rsplit(":", 1)[1]
    out = _run(
        [
            java,
            "-Dhttps.proxyHost=127.0.0.1", f"-Dhttps.proxyPort={port}",
            f"-Djavax.net.ssl.trustStore={store}", "-Djavax.net.ssl.trustStorePassword=changeit",
            str(HERE / "java" / "ProxyClient.java"), "https://api.vendor.test/java", BODY,
        ],
        _env(),
        timeout=120,
    )  # fmt: skip
    lines = out.splitlines()
    assert len(lines) == 2
    for line in lines:
        status, version, body = line.split(" ", 2)
        assert (status, version, json.loads(body)["verified"]) == ("200", "HTTP_1_1", True)
    assert _verified(setup, 2) == ["/verify/java/0", "/verify/java/1"]


# --- negative cases, with the log lines -----------------------------------------------------


def test_curl_without_the_ca_fails_and_nothing_is_forwarded(
    setup: Setup, c_proxy: ProxyProcess
) -> None:
    before = len(setup.upstream.seen)
    result = subprocess.run(
        ["curl", "-sS", "--proxy", c_proxy.url, "https://api.vendor.test/no-ca"],
        capture_output=True,
        text=True,
        env=_env(),  # the system store only, without the proxy's CA
        timeout=30,
    )
    assert result.returncode == 60, result.stderr  # curl: peer certificate cannot be verified
    line = _events(c_proxy, "tunnel", route="vendor", close_reason="handshake_failed")[-1]
    assert line["handshake_error"] in {"untrusted_certificate", "client_closed"}
    assert len(setup.upstream.seen) == before
    metrics = _scrape(c_proxy)
    assert 'signing_proxy_tunnel_handshake_failures_total{reason="' in metrics


def test_interception_expiry_gauges(c_proxy: ProxyProcess) -> None:
    """Set at start-up (the exact host's leaf is minted then): the CA's expiry and the leaf's,
    7 days out by default."""
    values = {}
    for line in _scrape(c_proxy).splitlines():
        if line.startswith("signing_proxy_interception_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    now = time.time()
    ca = values["signing_proxy_interception_ca_expiry_timestamp_seconds"]
    leaf = values['signing_proxy_interception_leaf_expiry_timestamp_seconds{route="vendor"}']
    assert now + 300 * 86400 < ca
    assert now + 6.9 * 86400 < leaf <= now + 7 * 86400


def test_refused_connects_log_their_target_and_close(setup: Setup, proxy: ProxyProcess) -> None:
    for target, status in (("unrouted.test:443", 403), ("api.plain.test:443", 403)):
        result = subprocess.run(
            ["curl", "-sS", "--proxy", proxy.url, "--cacert", str(setup.ca_file),
             f"https://{target}/x"],
            capture_output=True, text=True, env=_env(), timeout=30,
        )  # fmt: skip
        assert result.returncode != 0
        assert str(status) in result.stderr, result.stderr
        refused = proxy.request_events(method="CONNECT", path=target)
        assert refused, target
        assert (refused[-1]["status"], refused[-1]["error"]) == (status, "no_route")
    # The refusal closes the connection at once (the Python parser would read what follows
    # a CONNECT as its body, and aiohttp linger 10 s for it).
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"CONNECT unrouted.test:443 HTTP/1.1\r\nHost: unrouted.test:443\r\n\r\n")
        started = time.monotonic()
        raw.settimeout(5)
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 403")
        assert time.monotonic() - started < 2


def test_tls_bytes_before_the_200_are_refused(setup: Setup, proxy: ProxyProcess) -> None:
    """Under both parsers: the C parser keeps what follows a CONNECT as its tail, the Python
    parser as the CONNECT's body; either way it is a 400 and nothing is forwarded."""
    before = len(setup.upstream.seen)
    port = int(proxy.url.rsplit(":", 1)[1])
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(
            b"CONNECT api.vendor.test:443 HTTP/1.1\r\nHost: api.vendor.test\r\n\r\n" + hello
        )
        raw.settimeout(5)
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400"), received[:200]
    assert b"early_tunnel_data" in received
    assert len(setup.upstream.seen) == before


def test_a_tunnel_open_during_sigterm_is_drained(setup: Setup, tmp_path: Path) -> None:
    """An idle tunnel closes at once; a busy one answers its request, then closes; the
    process exits within the shutdown timeout."""
    with running_proxy(
        setup.config, tmp_path, extra_args=["--shutdown-timeout", "5"], drain_delay=0
    ) as proxy:
        port = int(proxy.url.rsplit(":", 1)[1])
        idle = _tls_tunnel(port, setup.ca_file)
        assert _exchange(idle, "GET", "/idle")[0] == 200
        busy = _tls_tunnel(port, setup.ca_file)
        slow: list[tuple[int, bytes]] = []
        thread = threading.Thread(target=lambda: slow.append(_exchange(busy, "GET", "/slow")))
        thread.start()
        time.sleep(0.5)  # the slow request is upstream now
        started = time.monotonic()
        assert proxy.process is not None
        proxy.process.send_signal(signal.SIGTERM)
        idle.settimeout(5)
        assert idle.recv(1) == b""  # closed by the proxy, at once
        closed_idle = time.monotonic() - started
        thread.join(10)
        assert slow
        assert slow[0][0] == 200
        code = proxy.process.wait(10)
        took = time.monotonic() - started
        assert code == 0
        assert closed_idle < 2.5
        assert took < 5 + 1
        lines = _events(proxy, "tunnel", route="vendor")
        assert sorted(line["close_reason"] for line in lines) == ["shutdown", "shutdown"]
        assert sorted(line["requests"] for line in lines) == [1, 1]


# --- helpers --------------------------------------------------------------------------------


def _events(proxy: ProxyProcess, event: str, **match: object) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in proxy.logs().splitlines() if line.startswith("{")]
        found = [
            e
            for e in lines
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _scrape(proxy: ProxyProcess) -> str:
    import requests

    return requests.get(proxy.admin_url + "/metrics", timeout=5).text


def _node_with_undici() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js (node, npm) is not installed; CI installs it (.ci/run)")
    if not (HERE / "node" / "node_modules" / "undici").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(HERE / "node")],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return node


def _tls_tunnel(port: int, ca_file: Path) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall(b"CONNECT api.vendor.test:443 HTTP/1.1\r\nHost: api.vendor.test:443\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += raw.recv(1024)
    assert head.startswith(b"HTTP/1.1 200"), head
    context = ssl.create_default_context(cafile=str(ca_file))
    return context.wrap_socket(raw, server_hostname="api.vendor.test")


def _exchange(sock: ssl.SSLSocket, method: str, path: str) -> tuple[int, bytes]:
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: api.vendor.test\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before an answer")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), body


def test_a_rotated_ca_is_picked_up_by_reload(setup: Setup, tmp_path: Path) -> None:
    """The CA files are watched like any secret file: new tunnels get leaves from the new CA,
    and the old CA is trusted no more."""
    ca_dir = tmp_path / "ca"
    create_ca(ca_dir)
    config = json.loads(json.dumps(setup.config))
    config["interception"] = {
        "ca_cert": {"file": str(ca_dir / "ca.crt")},
        "ca_key": {"file": str(ca_dir / "ca.key")},
    }
    old_ca = tmp_path / "old-ca.crt"
    old_ca.write_bytes((ca_dir / "ca.crt").read_bytes())

    def curl(ca_file: Path) -> int:
        return subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "--proxy", proxy.url, "--cacert", str(ca_file),
             "https://api.vendor.test/rotated"],
            capture_output=True, env=_env(), timeout=30,
        ).returncode  # fmt: skip

    with running_proxy(config, tmp_path) as proxy:
        assert curl(old_ca) == 0
        create_ca(ca_dir, force=True)
        deadline = time.monotonic() + 10
        while not _events(proxy, "config_reloaded") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _events(proxy, "config_reloaded")
        assert curl(ca_dir / "ca.crt") == 0
        assert curl(old_ca) == 60  # the old CA's leaves are gone


async def test_a_large_body_streams_through_an_intercepted_tunnel(
    setup: Setup, c_proxy: ProxyProcess
) -> None:
    """Backpressure through TLS on both sides: 8 MiB up, verified by the upstream's digest."""
    body = bytes(range(256)) * (8 * 4096)
    context = ssl.create_default_context(cafile=str(setup.ca_file))
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            "https://api.vendor.test/large",
            data=body,
            proxy=c_proxy.url,
            ssl=context,
        ) as response,
    ):
        assert response.status == 200
        assert (await response.json())["verified"] is True
    seen = setup.upstream.seen[-1]
    assert (seen.body_len, seen.body_sha256) == (len(body), hashlib.sha256(body).hexdigest())
