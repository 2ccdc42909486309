"""Check that the installed versions are the lowest pyproject.toml allows (CI's second job).

`uv pip install --resolution lowest-direct` picks each direct dependency's lowest version,
unless another requirement forces a higher one; then the floor would be claimed but never
tested. Usage: python scripts/check_floors.py EXTRA... (the extras installed besides the
dependencies). Exit 1, listing them, when an installed version is not its floor.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def floors(extras: list[str]) -> list[tuple[str, Version]]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    found = []
    for line in lines:
        requirement = Requirement(line)
        if requirement.name == project["name"]:
            continue  # an extra that includes others
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        if bounds:
            found.append((requirement.name, max(bounds)))
    return found


def main(extras: list[str]) -> int:
    wrong = []
    for name, floor in floors(extras):
        installed = Version(metadata.version(name))
        mark = "ok" if installed == floor else "NOT THE FLOOR"
        print(f"  {name:<20} floor {floor!s:<10} installed {installed!s:<10} {mark}")
        if installed != floor:
            wrong.append(name)
    if wrong:
        print(
            f"the lowest versions allowed of {', '.join(wrong)} are not the ones installed (and "
            "tested): raise their floors in pyproject.toml to the versions installed",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
