"""The scheme rules the tests and signers cite live in the repository (docs/schemes.md): each
reference to one of its sections names a heading that exists, every vendor scheme has its
section, and nothing cites the outside document the rules were first written in."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEMES_DOC = REPO / "docs" / "schemes.md"
_REFERENCE = re.compile(r"docs/schemes\.md#([a-z0-9-]+)")


def _anchors() -> set[str]:
    """GitHub's heading anchors: lower-case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#{1,6} (.+)$", SCHEMES_DOC.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _sources() -> list[Path]:
    return sorted([*REPO.glob("proxy/**/*.py"), *REPO.glob("tests/**/*.py"), REPO / "README.md"])


def test_every_cited_section_exists() -> None:
    anchors = _anchors()
    cited = {
        (path.relative_to(REPO).as_posix(), anchor)
        for path in _sources()
        for anchor in _REFERENCE.findall(path.read_text(encoding="utf-8"))
    }
    assert len(cited) >= 10  # the signers, their tests and the verifiers cite it
    assert sorted(c for c in cited if c[1] not in anchors) == []


def test_each_vendor_scheme_has_its_section() -> None:
    assert {
        "devresults", "devo", "jscrambler", "devengo", "aws-signature-version-4", "vector-files"
    } <= _anchors()  # fmt: skip


def test_nothing_cites_the_outside_document() -> None:
    citing = [
        path.relative_to(REPO).as_posix()
        for path in _sources()
        if path != Path(__file__) and "SIGNING.md" in path.read_text(encoding="utf-8")
    ]
    assert citing == []
    assert "(docs/schemes.md)" in (REPO / "README.md").read_text(encoding="utf-8")
