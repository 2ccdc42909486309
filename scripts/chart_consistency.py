"""The chart agrees with itself and with the program (scripts/check-deploy.sh).

1. Every value of values.yaml is documented in README.md: its dotted path appears in
   backticks, e.g. `image.tag`. The chart's own settings are checked leaf by leaf; free-form
   Kubernetes objects (resources, securityContext, probes, ...) are documented as a whole.
2. config.secretFields names every credential field of the installed signing-proxy's config
   (every signing scheme, access.proxy_token, ...), so the chart's literal-credential guard
   cannot fall behind a new scheme or setting.
3. spool.schemes names exactly the schemes that spool large bodies to /tmp (those whose signer
   hashes the body as it arrives, `Signer.new_body_digest`), so /tmp sizing covers every one.

Usage: chart_consistency.py CHART_DIR   (run with a Python that has signing-proxy installed)
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# Maps whose children are the chart's own settings; any other map is documented as one value.
STRUCTURED = {
    "image", "proxy", "config", "secret", "spool", "tmpVolume", "sidecar", "serviceAccount",
    "service", "autoscaling", "podDisruptionBudget", "serviceMonitor", "podMonitor",
    "networkPolicy", "networkPolicy.egress", "prometheusRule", "grafanaDashboard", "interception",
}  # fmt: skip


def paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path in STRUCTURED:
            out.extend(paths(value, path + "."))
        else:
            out.append(path)
    return out


def undocumented(chart: Path, values: dict[str, Any]) -> list[str]:
    readme = (chart / "README.md").read_text()
    keys = paths(values)
    missing = [key for key in keys if f"`{key}`" not in readme]
    for key in missing:
        print(f"  not documented in {chart}/README.md: {key}")
    print(f"  {len(keys) - len(missing)} of {len(keys)} values documented in README.md")
    return missing


def _models_in(annotation: Any) -> Iterator[type]:
    from pydantic import BaseModel

    from proxy.signers import SignerConfig, signer_classes

    if annotation is SignerConfig:  # a route's `signer:`: the model of any scheme
        yield from (cls.config_model for cls in signer_classes())
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def credential_fields() -> set[str]:
    """model.field for every secret-valued field reachable from the config's root model."""
    from proxy.config import Config
    from proxy.secrets import Secret

    found: set[str] = set()
    todo, seen = [Config], set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if field.annotation is Secret or "proxy.secrets.Secret" in repr(field.annotation):
                found.add(f"{model.__name__}.{name}")
            else:
                todo.extend(_models_in(field.annotation))
    return found


def unguarded(values: dict[str, Any]) -> list[str]:
    guarded = set(values["config"]["secretFields"])
    fields = credential_fields()
    missing = sorted(f for f in fields if f.partition(".")[2] not in guarded)
    for field in missing:
        print(f"  credential field not in config.secretFields: {field}")
    print(f"  {len(fields) - len(missing)} of {len(fields)} credential fields guarded")
    return missing


def spooling_schemes() -> set[str]:
    """The schemes whose signer can hash the body incrementally, i.e. may spool it to disk."""
    from proxy.signers import SIGNERS
    from proxy.signers.base import Signer

    return {
        name for name, cls in SIGNERS.items() if cls.new_body_digest is not Signer.new_body_digest
    }


def unsized(values: dict[str, Any]) -> list[str]:
    listed, actual = set(values["spool"]["schemes"]), spooling_schemes()
    problems = [f"spool.schemes lacks {name}" for name in sorted(actual - listed)]
    problems += [f"spool.schemes lists {name}, not a spooling scheme" for name in listed - actual]
    for problem in problems:
        print(f"  {problem}")
    print(f"  spool.schemes: {len(actual)} spooling schemes, {len(problems)} problems")
    return problems


def main() -> int:
    chart = Path(sys.argv[1])
    values = yaml.safe_load((chart / "values.yaml").read_text())
    missing = undocumented(chart, values) + unguarded(values) + unsized(values)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
