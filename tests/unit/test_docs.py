"""The documentation holds together: links resolve, the README stays a front door, and the
operations page names every metric the service exports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nodes_import import metrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 220  # "the README is a front door": ~200 lines, a little slack

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")


def _relative_links(path: Path) -> list[str]:
    """The targets of the Markdown links of ``path`` that point at files of this tree (code
    blocks and inline code left out; web addresses and same-page anchors too)."""
    text = _CODE.sub("", _FENCE.sub("", path.read_text(encoding="utf-8")))
    targets = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_that_exists(path: Path) -> None:
    missing = []
    for target in _relative_links(path):
        resolved = (path.parent / target).resolve()
        if not resolved.exists():
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_the_readme_is_a_front_door_of_at_most_220_lines() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; move the details to docs/ (see docs/ by reader)")


def test_the_readme_points_at_every_page_of_the_docs() -> None:
    linked = {(ROOT / t).resolve() for t in _relative_links(ROOT / "README.md")}
    pages = {p.resolve() for p in DOCS[1:]}
    assert not pages - linked, f"not linked from README.md: {sorted(pages - linked)}"


@pytest.mark.parametrize("name", [s.name for s in metrics.SPECS])
def test_every_metric_is_documented_on_the_operations_page(name: str) -> None:
    assert f"`{name}`" in (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
