"""Shared fixtures. The spec and vectors live in `../shared/` beside the checkout (as in CI)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIGNING_PROXY_SHARED", REPO.parent / "shared"))
VECTORS = SHARED / "vectors"


def load_vectors(scheme: str) -> list[dict[str, Any]]:
    """The published golden vectors of one scheme. A missing file fails the run, never skips."""
    path = VECTORS / f"{scheme}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the vectors live in ../shared beside the checkout "
            "(or set SIGNING_PROXY_SHARED)"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    vectors: list[dict[str, Any]] = data["vectors"]
    return vectors


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
