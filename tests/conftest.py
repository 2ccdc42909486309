"""Shared fixtures. The golden vectors live in `tests/vectors/` (their origin: ORIGIN.md there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors"


def load_vectors(scheme: str) -> list[dict[str, Any]]:
    """The published golden vectors of one scheme. A missing file fails the run, never skips."""
    path = VECTORS / f"{scheme}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the vectors are part of the repository (tests/vectors)"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    vectors: list[dict[str, Any]] = data["vectors"]
    return vectors


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
