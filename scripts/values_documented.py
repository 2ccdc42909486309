"""Every value of a chart's values.yaml is documented in its README.md (scripts/check-deploy.sh).

A key counts as documented when its dotted path appears in backticks in the README, e.g.
`image.tag`. The chart's own settings are checked leaf by leaf; free-form Kubernetes objects
(resources, securityContext, probes, ...) are documented as a whole.

Usage: values_documented.py CHART_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

# Maps whose children are the chart's own settings; any other map is documented as one value.
STRUCTURED = {
    "image", "proxy", "config", "secret", "tmpVolume", "sidecar", "serviceAccount", "service",
    "autoscaling", "podDisruptionBudget", "serviceMonitor", "podMonitor", "networkPolicy",
    "networkPolicy.egress",
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


def main() -> int:
    chart = Path(sys.argv[1])
    values = yaml.safe_load((chart / "values.yaml").read_text())
    readme = (chart / "README.md").read_text()
    keys = paths(values)
    missing = [key for key in keys if f"`{key}`" not in readme]
    for key in missing:
        print(f"  not documented in {chart}/README.md: {key}")
    print(f"  {len(keys) - len(missing)} of {len(keys)} values documented")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
