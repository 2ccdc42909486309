"""Build the monitoring files of signing-proxy: the Grafana dashboard, from the panel list
below, and the chart's copies of it and of the alerting rules.

- deploy/grafana/signing-proxy.json and helm/signing-proxy/dashboards/signing-proxy.json (the
  chart's ConfigMap reads its copy: Helm cannot read files outside the chart), built with
  grafana-foundation-sdk's typed builders, so the JSON follows Grafana's dashboard schema;
- helm/signing-proxy/files/alerts.yaml, a copy of deploy/prometheus/alerts.yaml (the rules and
  their promtool unit tests live there), which the chart's PrometheusRule renders.

tests/test_observability.py checks that the files are what this script writes, and that every
metric a panel or an alert queries is one the proxy exports.

Adding a panel is one line in PANELS: `P(title, expr, unit, legend)` (several queries: a tuple
of (expr, legend) pairs as `queries=`). Usage:

    python scripts/build_monitoring.py            # write the files
    python scripts/build_monitoring.py --check    # exit 1 if one is out of date
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = (
    ROOT / "deploy" / "grafana" / "signing-proxy.json",
    ROOT / "helm" / "signing-proxy" / "dashboards" / "signing-proxy.json",
)
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
CHART_ALERTS = ROOT / "helm" / "signing-proxy" / "files" / "alerts.yaml"
UID = "signing-proxy"

# Selectors: every query is narrowed to the chosen jobs; per-route panels also to the routes.
JOB = 'job=~"$job"'
SEL = 'job=~"$job", route=~"$route"'
RATE = "[$__rate_interval]"


@dataclass(frozen=True)
class P:
    """One panel: a title, its PromQL (with a legend), a Grafana unit, and the panel kind."""

    title: str
    expr: str = ""
    unit: str = "short"
    legend: str = ""
    queries: tuple[tuple[str, str], ...] = ()
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    width: int = 12
    thresholds: tuple[float, ...] = ()  # red above each absolute value (timeseries: drawn)

    def targets(self) -> tuple[tuple[str, str], ...]:
        return self.queries or ((self.expr, self.legend),)


@dataclass(frozen=True)
class Row:
    title: str


def _quantiles(metric: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        (
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{SEL}}}{RATE})))",
            f"p{round(q * 100)}",
        )
        for q in (0.5, 0.9, 0.99)
    )


PANELS: list[P | Row] = [
    Row("Overview"),
    P("Requests/s", f"sum(rate(signing_proxy_requests_total{{{SEL}}}{RATE}))", "reqps", kind="stat", width=6),
    P("Errors/s", f"sum(rate(signing_proxy_errors_total{{{SEL}}}{RATE}))", "reqps", kind="stat", width=6),
    P("In flight", f"sum(signing_proxy_in_flight_requests{{{JOB}}})", "short", kind="stat", width=6),
    P("Versions running", f"count by (version) (signing_proxy_build_info{{{JOB}}})", "short", "{{version}}", kind="stat", width=6),
    Row("Traffic"),
    P("Requests by route", f"sum by (route) (rate(signing_proxy_requests_total{{{SEL}}}{RATE}))", "reqps", "{{route}}"),
    P("Responses by status", f"sum by (code) (rate(signing_proxy_requests_total{{{SEL}}}{RATE}))", "reqps", "{{code}}"),
    P("Errors by code and route", f"sum by (route, code) (rate(signing_proxy_errors_total{{{SEL}}}{RATE}))", "reqps", "{{route}} {{code}}", description="Requests the proxy failed itself; the codes are the README's error table."),
    P("In-flight requests by pod", f"sum by (instance) (signing_proxy_in_flight_requests{{{JOB}}})", "short", "{{instance}}"),
    Row("Latency"),
    P("Request duration (arrival to end of response)", queries=_quantiles("signing_proxy_request_duration_seconds"), unit="s"),
    P("Upstream duration (to response headers)", queries=_quantiles("signing_proxy_upstream_duration_seconds"), unit="s"),
    P("p99 request duration by route", f"histogram_quantile(0.99, sum by (le, route) (rate(signing_proxy_request_duration_seconds_bucket{{{SEL}}}{RATE})))", "s", "{{route}}"),
    P("p99 request body size by route", f"histogram_quantile(0.99, sum by (le, route) (rate(signing_proxy_request_body_bytes_bucket{{{SEL}}}{RATE})))", "bytes", "{{route}}"),
    Row("Signing and credentials"),
    P("Signing failures", f'sum by (route, code) (rate(signing_proxy_errors_total{{{SEL}, code=~"signing_failed|credentials_unavailable"}}{RATE}))', "reqps", "{{route}} {{code}}", description="Requests refused before anything was sent: the signer refused them, or the route's credentials were not available."),
    P("Time until credentials expire", f"min by (route) (signing_proxy_credential_expiry_timestamp_seconds{{{SEL}}}) - time()", "s", "{{route}}", description="Refreshing credentials only (AWS keys and roles, OAuth2 access tokens); they are refreshed before they expire."),
    P("Credential refreshes and OAuth2 token requests", f"sum by (route, result) (increase(signing_proxy_credential_refresh_total{{{SEL}}}{RATE}))", "short", "{{route}} {{result}}", description="AWS credential refreshes and OAuth2 token requests, by result; an error is logged with its reason (access_token_fetch_failed for OAuth2)."),
    P("Clock skew vs upstream Date", f"max by (instance, route) (signing_proxy_clock_skew_seconds{{{SEL}}})", "s", "{{instance}} {{route}}", thresholds=(30,), description="Local clock minus the upstream's Date header; past 30 s signed timestamps may be refused."),
    P("Time until upstream client certificates expire (mutual TLS)", f"min by (route) (signing_proxy_client_certificate_expiry_timestamp_seconds{{{SEL}}}) - time()", "s", "{{route}}", thresholds=(7 * 86400,), width=24, description="Routes with tls.client_cert only. The line is the alert's 7 days; cert-manager renews at two thirds of the lifetime, and the proxy picks a rotated pair up by itself."),
    Row("Config and limits"),
    P("Config reloads", f"sum by (result) (increase(signing_proxy_config_reloads_total{{{JOB}}}{RATE}))", "short", "{{result}}"),
    P("Last reload failed (pods)", f"count(signing_proxy_config_last_reload_successful{{{JOB}}} == 0) or vector(0)", "short", kind="stat", width=6, thresholds=(1,)),
    P("Config age", f"time() - min(signing_proxy_config_last_reload_success_timestamp_seconds{{{JOB}}})", "s", kind="stat", width=6),
    P("Limits hit", f'sum by (route, code) (rate(signing_proxy_errors_total{{{SEL}, code=~"rate_limited|concurrency_limited|upstream_connections_exhausted|too_many_tunnels"}}{RATE}))', "reqps", "{{route}} {{code}}", description="rate_limit (429), max_concurrent (503), max_upstream_connections all in use for timeout.connect (503 upstream_connections_exhausted), tunnels.max_open (503 too_many_tunnels)."),
    P("Retries", f"sum by (route) (rate(signing_proxy_retries_total{{{SEL}}}{RATE}))", "reqps", "{{route}}"),
    P("Refused before routing", "", "reqps", queries=((f"sum(rate(signing_proxy_parser_refusals_total{{{JOB}}}{RATE}))", "HTTP parser refused (400)"), (f"sum(rate(signing_proxy_header_timeouts_total{{{JOB}}}{RATE}))", "request head timed out")), description="Requests the HTTP parser refused (malformed, over request_limits, not HTTP at all), and connections closed for not sending a complete request head within request_limits.header_timeout (slowloris)."),
    P("Clients gone and shutdown cuts", "", "reqps", queries=((f'sum by (route) (rate(signing_proxy_requests_total{{{SEL}, code="499"}}{RATE}))', "{{route}} 499 (client closed before the answer)"), (f'sum by (route, code) (rate(signing_proxy_errors_total{{{SEL}, code=~"client_closed|shutdown"}}{RATE}))', "{{route}} {{code}}")), description="499: the client went away before any answer; client_closed: it went away during the exchange; shutdown: cut at the shutdown deadline."),
    Row("HTTPS interception and tunnels"),
    P("Tunnels opened", f"sum by (route, scheme) (rate(signing_proxy_tunnels_opened_total{{{SEL}}}{RATE}))", "ops", "{{route}} {{scheme}}", description="CONNECTs answered 200: scheme https is intercepted, http is CONNECT host:80."),
    P("Open tunnels", f"sum by (instance) (signing_proxy_tunnels_open{{{JOB}}})", "short", "{{instance}}", description="Bounded by tunnels.max_open per proxy."),
    P("Tunnel handshake failures", f"sum by (route, reason) (rate(signing_proxy_tunnel_handshake_failures_total{{{SEL}}}{RATE}))", "ops", "{{route}} {{reason}}", description="untrusted_certificate (or client_closed): an app that does not trust the interception CA; sni_mismatch: an app that names another host; nothing was forwarded. Each is logged with handshake_error."),
    P("Tunnels closed", f"sum by (route, reason) (rate(signing_proxy_tunnels_closed_total{{{SEL}}}{RATE}))", "ops", "{{route}} {{reason}}"),
    P("Time until interception certificates expire", "", "s", queries=((f"min(signing_proxy_interception_ca_expiry_timestamp_seconds{{{JOB}}} > 0) - time()", "CA"), (f"min by (route) (signing_proxy_interception_leaf_expiry_timestamp_seconds{{{SEL}}} > 0) - time()", "{{route}} host certificate")), thresholds=(14 * 86400,), width=24, description="Every intercepted tunnel fails once the CA expires (the line is the alert's 14 days); host certificates are renewed at half life."),
]  # fmt: skip


def _datasource() -> dm.DataSourceRef:
    return dm.DataSourceRef(type_val="prometheus", uid="${datasource}")


def _thresholds(values: tuple[float, ...]) -> gd.ThresholdsConfig:
    steps = [dm.Threshold(value=None, color="green")]
    steps += [dm.Threshold(value=v, color="red") for v in values]
    return gd.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)


def _panel(spec: P, panel_id: int) -> timeseries.Panel | stat.Panel:
    panel: timeseries.Panel | stat.Panel
    if spec.kind == "stat":
        panel = (
            stat.Panel()
            .height(4)
            .graph_mode(cm.BigValueGraphMode.AREA)
            .color_mode(cm.BigValueColorMode.VALUE)
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        )
    else:
        legend = (
            common.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        tooltip = (
            common.VizTooltipOptions()
            .mode(cm.TooltipDisplayMode.MULTI)
            .sort(cm.SortOrder.DESCENDING)
        )
        panel = timeseries.Panel().height(8).fill_opacity(10).legend(legend).tooltip(tooltip)
        if spec.thresholds:
            line = common.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.LINE)
            panel = panel.thresholds_style(line)
    panel = (
        panel.id(panel_id)
        .title(spec.title)
        .unit(spec.unit)
        .span(spec.width)
        .datasource(_datasource())
    )
    if spec.thresholds:
        panel = panel.thresholds(_thresholds(spec.thresholds))
    if spec.description:
        panel = panel.description(spec.description)
    for index, (expr, legend) in enumerate(spec.targets()):
        query = prometheus.Dataquery().expr(expr).ref_id(chr(ord("A") + index))
        panel = panel.with_target(query.legend_format(legend) if legend else query)
    return panel


def build() -> str:
    board = (
        gd.Dashboard("signing-proxy")
        .uid(UID)
        .description(
            "signing-proxy: traffic, errors, latency, signing, credentials, reloads, clock skew, "
            "limits, HTTPS interception and tunnels. Built by scripts/build_monitoring.py; do not "
            "edit the JSON by hand."
        )
        .tags(["signing-proxy"])
        .editable()
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(
            gd.DatasourceVariable("datasource")
            .id("datasource")
            .label("Data source")
            .type("prometheus")
        )
        .with_variable(
            gd.QueryVariable("job")
            .id("job")
            .label("Job")
            .datasource(_datasource())
            .query("label_values(signing_proxy_build_info, job)")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_variable(
            gd.QueryVariable("route")
            .id("route")
            .label("Route")
            .datasource(_datasource())
            .query('label_values(signing_proxy_requests_total{job=~"$job"}, route)')
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    for panel_id, spec in enumerate(PANELS, start=1):
        if isinstance(spec, Row):
            board = board.with_row(gd.Row(spec.title).id(panel_id))
        else:
            board = board.with_panel(_panel(spec, panel_id))
    return JSONEncoder(sort_keys=True, indent=2).encode(board.build()) + "\n"


def outputs() -> dict[Path, str]:
    """Each file this script writes, with its content."""
    dashboard = build()
    return {**dict.fromkeys(DASHBOARDS, dashboard), CHART_ALERTS: ALERTS.read_text()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args()
    stale = []
    for path, text in outputs().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{path.relative_to(ROOT)} is out of date: run python scripts/build_monitoring.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
