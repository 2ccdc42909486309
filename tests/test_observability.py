"""The monitoring files against the real proxy: the Grafana dashboard and the alerting rules
query only metrics a running proxy exports, `promtool check metrics` accepts a real scrape, and
`promtool check rules` / `promtool test rules` pass on deploy/prometheus/.

promtool comes from Debian's `prometheus` package (.ci/run installs it). Where it is missing the
promtool tests skip, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import promql_parser
import pytest
import requests
import yaml

from tests.support import ProxyProcess, free_port, route, running_proxy, running_upstream

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


def _traffic(proxy: ProxyProcess) -> None:
    """Requests that fill the metric families: answered, refused, failed upstream."""
    deadline = time.monotonic() + 20
    while requests.get(f"{proxy.admin_url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, proxy.logs()
        time.sleep(0.1)
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


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a running single-process proxy after some traffic."""
    with running_upstream() as upstream:
        workdir = tmp_path_factory.mktemp("scrape")
        with running_proxy(_config(upstream.url), workdir) as proxy:
            _traffic(proxy)
            yield requests.get(f"{proxy.admin_url}/metrics", timeout=5).text


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


def test_every_metric_the_dashboard_queries_is_exported(scrape: str) -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    assert unknown_metrics(queries, exported_names(scrape)) == []


def test_every_metric_the_alerts_query_is_exported(scrape: str) -> None:
    queries = alert_queries()
    assert len(queries) >= 7
    assert unknown_metrics(queries, exported_names(scrape)) == []


def test_a_panel_on_a_missing_metric_is_caught(scrape: str) -> None:
    """The check above can fail: a misspelt metric, a histogram queried without _bucket, and a
    selector that names no metric are all reported."""
    queries = [
        ("panel 'typo'", "sum(rate(signing_proxy_request_total[$__rate_interval]))"),
        ("panel 'no bucket'", "histogram_quantile(0.9, signing_proxy_request_duration_seconds)"),
        ("panel 'anonymous'", '{__name__=~"signing_proxy_.*"}'),
        ("panel 'fine'", 'sum by (code) (signing_proxy_errors_total{route=~"$route"})'),
    ]
    problems = unknown_metrics(queries, exported_names(scrape))
    assert len(problems) == 3, problems
    assert "panel 'typo' queries signing_proxy_request_total" in problems[0]
    assert "signing_proxy_request_duration_seconds," in problems[1]
    assert "a selector without a metric name" in problems[2]


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
        config = _config(upstream.url)
        with running_proxy(config, tmp_path, extra_args=["--workers", "2"]) as proxy:
            _traffic(proxy)
            scrape = requests.get(f"{proxy.admin_url}/metrics", timeout=5).text
    assert "signing_proxy_worker_ready" in scrape
    assert "signing_proxy_requests_total" in scrape
    result = _run(promtool, "check", "metrics", stdin=scrape)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_promtool_check_rules() -> None:
    result = _run(_promtool(), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


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
