"""The monitoring files against the real proxy: the Grafana dashboard and the alerting rules
query only metrics a running proxy exports, `promtool check metrics` accepts a real scrape, and
`promtool check rules` / `promtool test rules` pass on deploy/prometheus/.

promtool comes from Debian's `prometheus` package (.ci/run installs it). Where it is missing the
promtool tests skip, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import promql_parser
import pytest
import requests
import trustme
import yaml
from aiohttp import web

from tests.support import (
    ProxyProcess,
    Upstream,
    free_port,
    route,
    running_proxy,
    running_upstream,
    send,
)
from tests.tunnel_support import TunnelClient, trusting

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "signing-proxy.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
# Series Prometheus makes itself, not the proxy.
SYNTHETIC = {"up"}
# Grafana's variables, replaced by something PromQL parses.
GRAFANA_VARS = {"$__rate_interval": "5m", "$job": "j", "$route": "r"}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
    pytest.skip("promtool is not installed (apt-get install prometheus); CI runs these")


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


# ---- a real scrape ---------------------------------------------------------------------------


def _wait_ready(proxy: ProxyProcess) -> None:
    deadline = time.monotonic() + 20
    while requests.get(f"{proxy.admin_url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, proxy.logs()
        time.sleep(0.1)


def _traffic(proxy: ProxyProcess) -> None:
    """Requests that fill the metric families: answered, refused, failed upstream."""
    _wait_ready(proxy)
    assert requests.post(f"{proxy.url}/ok/x", data=b"a" * 100, timeout=5).status_code == 200
    assert requests.get(f"{proxy.url}/nowhere", timeout=5).status_code == 403
    assert requests.get(f"{proxy.url}/down/x", timeout=5).status_code == 502


def _config(upstream_url: str) -> dict[str, object]:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: upstream_unreachable
    bearer = {"scheme": "bearer", "token": "not-a-real-token"}
    return {
        "routes": [
            route("ok", upstream_url, bearer, match={"path_prefix": "/ok"}),
            route("down", closed, bearer, match={"path_prefix": "/down"}),
        ]
    }


async def _token(request: web.BaseRequest) -> web.Response:
    """A loopback OAuth2 token endpoint (client credentials grant)."""
    await request.read()
    return web.json_response(
        {"access_token": "not-a-real-access-token", "token_type": "Bearer", "expires_in": 3600}
    )


def _every_feature(upstream: Upstream, workdir: Path) -> dict[str, object]:
    """The basic config plus each feature that has metrics of its own: HTTPS interception (a
    CA made by `signing-proxy ca create`), upstream mutual TLS (a trustme client certificate),
    an OAuth2 token route, and a short request-head timeout."""
    subprocess.run(
        [sys.executable, "-m", "proxy", "ca", "create", "--out", str(workdir / "ca")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    client = trustme.CA().issue_cert("client.example", common_name="client")
    client.cert_chain_pems[0].write_to_path(str(workdir / "client.crt"))
    client.private_key_pem.write_to_path(str(workdir / "client.key"))
    closed_tls = f"https://127.0.0.1:{free_port()}"  # never reached: the gauge is set at load
    oauth2 = {
        "scheme": "oauth2-client-credentials",
        "token_url": f"{upstream.url}/token",
        "client_id": "observability",
        "client_secret": "not-a-real-client-secret",
    }
    mtls = {"client_cert": str(workdir / "client.crt"), "client_key": str(workdir / "client.key")}
    config = _config(upstream.url)
    ok, down = config["routes"]  # type: ignore[misc]
    down["retries"] = {"attempts": 2, "backoff_initial": 0.01}  # a connect error: one retry
    config["routes"] = [
        ok,
        down,
        route("oauth", upstream.url, oauth2, match={"path_prefix": "/oauth"}),
        route("mtls", closed_tls, {"scheme": "bearer", "token": "t"}, tls=mtls,
              match={"path_prefix": "/mtls"}),
        route("vendor", upstream.url, {"scheme": "bearer", "token": "t"}, intercept=True,
              match={"host": "api.vendor.test"}),
    ]  # fmt: skip
    config["interception"] = {
        "ca_cert": {"file": str(workdir / "ca" / "ca.crt")},
        "ca_key": {"file": str(workdir / "ca" / "ca.key")},
    }
    config["request_limits"] = {"header_timeout": 0.5}
    return config


async def _tunnels(port: int, ca_file: Path) -> None:
    """An intercepted tunnel that carries a request, and one whose client does not trust the
    CA (its handshake fails: nothing is forwarded)."""
    good = await TunnelClient.open(port)
    assert (await good.connect("api.vendor.test:443")).status == 200
    await good.start_tls(trusting(ca_file), "api.vendor.test")
    assert (await good.request("GET", "/x", host="api.vendor.test")).status == 200
    good.close()
    bad = await TunnelClient.open(port)
    assert (await bad.connect("api.vendor.test:443")).status == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        await bad.start_tls(trusting(None), "api.vendor.test")
    bad.close()


def _series(scrape: str, name: str) -> list[str]:
    return [line for line in scrape.splitlines() if re.match(rf"{name}[{{ ]", line)]


def _every_feature_traffic(proxy: ProxyProcess, workdir: Path) -> str:
    """_traffic plus a request with an OAuth2 token, two intercepted tunnels, a request the
    parser refuses and a connection that never finishes its request head; the scrape once
    each has been counted."""
    _traffic(proxy)
    assert requests.get(f"{proxy.url}/oauth/x", timeout=5).status_code == 200
    asyncio.run(_tunnels(proxy.port, workdir / "ca" / "ca.crt"))
    assert send(proxy.port, b"NOT HTTP AT ALL\r\n\r\n").status == 400
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as slow:
        slow.sendall(b"GET /ok/x HTTP/1.1\r\n")  # and nothing more
        assert slow.recv(65536) == b""  # closed at the header timeout
    counted = (
        "signing_proxy_tunnel_handshake_failures_total",
        "signing_proxy_tunnels_closed_total",
        "signing_proxy_header_timeouts_total",
    )
    deadline = time.monotonic() + 10
    while True:
        scrape = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
        closed = "signing_proxy_tunnels_open 0.0" in scrape.splitlines()
        if closed and all(any(not s.endswith(" 0.0") for s in _series(scrape, n)) for n in counted):
            return scrape
        assert time.monotonic() < deadline, scrape
        time.sleep(0.1)


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a running single-process proxy with every feature that has metrics of its
    own, after traffic that fills them."""
    with running_upstream() as upstream:
        upstream.handlers["/token"] = _token
        workdir = tmp_path_factory.mktemp("scrape")
        with running_proxy(_every_feature(upstream, workdir), workdir) as proxy:
            yield _every_feature_traffic(proxy, workdir)


def exported_names(exposition: str) -> set[str]:
    """The series names a scrape offers, from its `# TYPE` lines (a family is declared even
    before it has a sample): a histogram's _bucket, _count and _sum; a counter's own name."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        if kind == "histogram":  # no series of the family's own name
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            names.add(name)
    return names


def sampled_names(exposition: str) -> set[str]:
    """The exported names that have at least one series in the scrape (a sample line), not
    only a `# TYPE` line: the metrics the traffic above actually filled."""
    samples = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", exposition, re.MULTILINE))
    return samples & exported_names(exposition)


def queried_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (Grafana variables filled in). A selector
    must name its metric: one by `{__name__=~...}` alone cannot be checked."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name or f"(a selector without a metric name: {node})")

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    queries = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets") or []
    ]
    queries += [
        (f"variable {var['name']!r}", re.sub(r"^label_values\((.*), \w+\)$", r"\1", var["query"]))
        for var in board["templating"]["list"]
        if var["type"] == "query"
    ]
    return queries


def alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [
        (f"alert {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in groups
        for rule in group["rules"]
    ]


def unknown_metrics(queries: list[tuple[str, str]], exported: set[str]) -> list[str]:
    return [
        f"{where} queries {name}, which the proxy does not export"
        for where, expr in queries
        for name in sorted(queried_names(expr) - exported - SYNTHETIC)
    ]


def test_the_scrape_declares_every_family(scrape: str) -> None:
    names = exported_names(scrape)
    # A sample of each kind, so an empty or broken scrape cannot pass the checks below.
    assert "signing_proxy_requests_total" in names
    assert "signing_proxy_request_duration_seconds_bucket" in names
    assert "signing_proxy_credential_expiry_timestamp_seconds" in names
    assert "signing_proxy_config_last_reload_successful" in names
    assert 'signing_proxy_errors_total{code="upstream_unreachable",route="down"} 1.0' in scrape


def test_the_scrape_has_series_of_every_feature(scrape: str) -> None:
    """Not only declared: the families of interception, tunnels, mutual TLS, OAuth2 tokens and
    the refusals before routing have series, so promtool checks them with their labels."""

    def value(series: str) -> float:
        lines = [line for line in scrape.splitlines() if line.startswith(series + " ")]
        assert len(lines) == 1, (series, _series(scrape, series.partition("{")[0]))
        return float(lines[0].rsplit(" ", 1)[1])

    now = time.time()
    assert value('signing_proxy_tunnels_opened_total{route="vendor",scheme="https"}') == 2
    assert value("signing_proxy_tunnels_open") == 0
    failures = "\n".join(_series(scrape, "signing_proxy_tunnel_handshake_failures_total"))
    reason = r"(untrusted_certificate|client_closed)"  # the client's alert, or its close first
    assert re.search(rf'\{{reason="{reason}",route="vendor"\}} 1\.0', failures), failures
    assert len(_series(scrape, "signing_proxy_tunnels_closed_total")) >= 1
    assert value("signing_proxy_interception_ca_expiry_timestamp_seconds") > now + 300 * 86400
    leaf = value('signing_proxy_interception_leaf_expiry_timestamp_seconds{route="vendor"}')
    assert now < leaf <= now + 7 * 86400
    cert = value('signing_proxy_client_certificate_expiry_timestamp_seconds{route="mtls"}')
    assert cert > now + 30 * 86400  # trustme's certificates are long-lived
    assert value('signing_proxy_credential_refresh_total{result="success",route="oauth"}') >= 1
    token = value('signing_proxy_credential_expiry_timestamp_seconds{route="oauth"}')
    assert now < token <= now + 3600
    assert value("signing_proxy_parser_refusals_total") == 1
    assert value("signing_proxy_header_timeouts_total") == 1


def test_every_metric_the_dashboard_queries_is_exported(scrape: str) -> None:
    """Exported, and with series in the scrape of a proxy that has every feature: a panel on a
    metric the proxy declares but never sets would stay empty, and fails too."""
    queries = dashboard_queries()
    assert len(queries) > 30
    assert unknown_metrics(queries, sampled_names(scrape)) == []


def test_every_metric_the_alerts_query_is_exported(scrape: str) -> None:
    queries = alert_queries()
    assert len(queries) >= 10
    assert unknown_metrics(queries, sampled_names(scrape)) == []


def test_a_panel_on_a_missing_metric_is_caught(scrape: str) -> None:
    """The check above can fail: a misspelt metric, a histogram queried without _bucket, and a
    selector that names no metric are all reported."""
    queries = [
        ("panel 'typo'", "sum(rate(signing_proxy_request_total[$__rate_interval]))"),
        ("panel 'no bucket'", "histogram_quantile(0.9, signing_proxy_request_duration_seconds)"),
        ("panel 'anonymous'", '{__name__=~"signing_proxy_.*"}'),
        ("panel 'fine'", 'sum by (code) (signing_proxy_errors_total{route=~"$route"})'),
    ]
    problems = unknown_metrics(queries, sampled_names(scrape))
    assert len(problems) == 3, problems
    assert "panel 'typo' queries signing_proxy_request_total" in problems[0]
    assert "signing_proxy_request_duration_seconds," in problems[1]
    assert "a selector without a metric name" in problems[2]


def test_a_panel_on_a_declared_metric_without_series_is_caught() -> None:
    """A family that is declared but has no series (a labelled counter nothing incremented)
    counts as missing; one with a series does not."""
    exposition = (
        "# HELP a_total A.\n# TYPE a_total counter\n"
        '# HELP b_total B.\n# TYPE b_total counter\nb_total{route="r"} 1.0\n'
    )
    queries = [("panel 'a'", "sum(rate(a_total[5m]))"), ("panel 'b'", "sum(b_total)")]
    assert unknown_metrics(queries, exported_names(exposition)) == []
    problems = unknown_metrics(queries, sampled_names(exposition))
    assert problems == ["panel 'a' queries a_total, which the proxy does not export"]


def test_the_monitoring_files_are_what_the_build_script_writes() -> None:
    """deploy/grafana/signing-proxy.json, the chart's copies of it and of the alerts."""
    result = _run(sys.executable, str(ROOT / "scripts" / "build_monitoring.py"), "--check")
    assert result.returncode == 0, result.stdout + result.stderr


# ---- promtool --------------------------------------------------------------------------------


def test_promtool_check_metrics_accepts_a_real_scrape(scrape: str) -> None:
    assert scrape.count("# TYPE ") >= 15  # promtool accepts an empty input too
    result = _run(_promtool(), "check", "metrics", stdin=scrape)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""  # no lint finding (names, units, help, types)


def test_promtool_check_metrics_accepts_a_workers_scrape(tmp_path: Path) -> None:
    """With --workers N the supervisor merges the workers' files: another exposition path."""
    promtool = _promtool()
    with running_upstream() as upstream:
        upstream.handlers["/token"] = _token
        config = _every_feature(upstream, tmp_path)
        with running_proxy(config, tmp_path, extra_args=["--workers", "2"]) as proxy:
            scrape = _every_feature_traffic(proxy, tmp_path)
    assert "signing_proxy_worker_ready" in scrape
    assert "signing_proxy_requests_total" in scrape
    assert 'signing_proxy_client_certificate_expiry_timestamp_seconds{route="mtls"}' in scrape
    result = _run(promtool, "check", "metrics", stdin=scrape)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_promtool_check_rules() -> None:
    result = _run(_promtool(), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_promtool_test_rules() -> None:
    """deploy/prometheus/alerts.test.yaml: each alert fires on its case and stays quiet on the
    near misses."""
    result = _run(_promtool(), "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_fails_on_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests can fail: with the upstream-error threshold at 20 %, the 10 % case of
    the tests no longer fires and promtool says so."""
    promtool = _promtool()
    rules = ALERTS.read_text()
    assert ") > 0.05\n" in rules
    (tmp_path / "alerts.yaml").write_text(rules.replace(") > 0.05\n", ") > 0.2\n"))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yaml")
    result = _run(promtool, "test", "rules", str(tmp_path / "alerts.test.yaml"))
    assert result.returncode != 0
    assert "SigningProxyUpstreamErrors" in result.stdout + result.stderr
