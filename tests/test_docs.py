"""The README documents every config key, metric and CLI flag (so the docs cannot drift)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import build_parser, config_schema_json
from proxy.metrics import (
    CredentialMetrics,
    Metrics,
    ReloadMetrics,
    TunnelMetrics,
    worker_ready_gauge,
)

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _keys(schema: dict[str, Any], node: dict[str, Any], found: set[str]) -> None:
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    for variant in node.get("anyOf", []) + node.get("oneOf", []):
        _keys(schema, variant, found)
    for name, child in node.get("properties", {}).items():
        found.add(name)
        _keys(schema, child, found)
    if "items" in node:
        _keys(schema, node["items"], found)


def test_every_config_key_is_documented() -> None:
    import json

    schema = json.loads(config_schema_json())
    keys: set[str] = set()
    _keys(schema, schema, keys)
    assert len(keys) > 40
    forms = ("`{}", ".{}`", "{}:", ", `{}`")
    missing = sorted(k for k in keys if not any(form.format(k) in README for form in forms))
    assert missing == []


def test_every_metric_is_documented() -> None:
    from prometheus_client import CollectorRegistry

    from proxy.clock import ClockSkew

    metrics = Metrics()
    ReloadMetrics(metrics.registry)
    CredentialMetrics(metrics.registry)
    TunnelMetrics(metrics.registry)
    ClockSkew(metrics.registry)
    worker_ready_gauge(CollectorRegistry())
    names = {m.name for m in metrics.registry.collect()} | {"signing_proxy_worker_ready"}
    assert len(names) >= 15
    missing = sorted(n for n in names if n not in README and f"{n}_total" not in README)
    assert missing == []


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _flags(sub)
        elif action.help != argparse.SUPPRESS:
            flags |= {f for f in action.option_strings if f.startswith("--")}
    return flags - {"--help"}


@pytest.mark.parametrize("flag", sorted(_flags(build_parser())))
def test_every_cli_flag_is_documented(flag: str) -> None:
    assert flag in README
