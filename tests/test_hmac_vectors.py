"""The `hmac` scheme proved by expression: every vector of tests/vectors/hmac-apis.json, and every
vendor vector that needs no vendor-specific rule, signed by the routes of `config/hmac/`, both
in process (the signer) and through `signing-proxy sign --json` (a subprocess). The vendor
vectors pass through the built-in schemes too (tests/signers/, test_sign_cli_vectors.py); the
ones only a built-in scheme can sign are listed, with why, in `NEEDS_BUILTIN`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.hmac_cases import (
    NEEDS_BUILTIN,
    SIGNED_DIFFERENTLY,
    Case,
    api_case,
    api_vectors,
    sign_in_process,
    sign_via_cli,
    vendor_cases,
)

API_CASES = [pytest.param(api_case(v), id=v["id"]) for v in api_vectors()]
VENDOR_CASES = [pytest.param(c, id=c.id) for c in vendor_cases()]


def test_every_api_vector_is_covered() -> None:
    assert len(API_CASES) == len(api_vectors()) >= 5


@pytest.mark.parametrize("case", API_CASES)
def test_api_vector_through_the_signer(case: Case, monkeypatch: Any) -> None:
    case.check(sign_in_process(case, monkeypatch))


@pytest.mark.parametrize("case", API_CASES)
def test_api_vector_through_sign_json(case: Case, tmp_path: Path) -> None:
    case.check(sign_via_cli(case, tmp_path))


@pytest.mark.parametrize("case", VENDOR_CASES)
def test_vendor_vector_through_the_hmac_signer(case: Case, monkeypatch: Any) -> None:
    if case.id in NEEDS_BUILTIN and case.id not in SIGNED_DIFFERENTLY:
        pytest.skip(f"needs the built-in scheme: {NEEDS_BUILTIN[case.id]}")
    signed = sign_in_process(case, monkeypatch)
    if case.id in SIGNED_DIFFERENTLY:
        with pytest.raises(AssertionError):
            case.check(signed)  # the vendor-specific rule is real: the hmac route differs
        return
    case.check(signed)


@pytest.mark.slow
@pytest.mark.parametrize("case", VENDOR_CASES)
def test_vendor_vector_through_sign_json(case: Case, tmp_path: Path) -> None:
    if case.id in NEEDS_BUILTIN:
        pytest.skip(f"needs the built-in scheme: {NEEDS_BUILTIN[case.id]}")
    case.check(sign_via_cli(case, tmp_path))
