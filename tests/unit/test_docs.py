"""The documentation holds together: links resolve, the README stays a front door, the
operations page names every metric the service exports, and every alert's runbook link
lands on a heading of the operations page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from nodes_import import metrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 220  # "the README is a front door": ~200 lines, a little slack

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


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


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (Markdown links and code marks dropped)
    in lower case, every character but letters, digits, ``_``, ``-`` and spaces removed,
    spaces turned into ``-`` (github-slugger's rule)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def heading_anchors(path: Path) -> set[str]:
    """The anchors of every heading of ``path`` (outside code blocks), a repeated one with
    GitHub's ``-1``, ``-2``... suffixes."""
    anchors: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        anchor = base = github_anchor(heading)
        n = 0
        while anchor in anchors:
            n += 1
            anchor = f"{base}-{n}"
        anchors.add(anchor)
    return anchors


def test_a_heading_gets_the_anchor_github_gives_it() -> None:
    assert github_anchor("Alert: NodesImportDown") == "alert-nodesimportdown"
    assert github_anchor("Several daemons on one VM: `nodes-import@.service`") == (
        "several-daemons-on-one-vm-nodes-importservice")
    assert github_anchor("Upgrading: renamed metrics") == "upgrading-renamed-metrics"


def _runbook_urls() -> dict[str, str]:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    return {rule["alert"]: rule["annotations"]["runbook_url"]
            for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def test_every_alert_has_a_runbook_url() -> None:
    assert _runbook_urls(), "no alert found in deploy/prometheus-alerts.yml"


@pytest.mark.parametrize("alert", sorted(_runbook_urls()))
def test_every_runbook_link_lands_on_a_heading_of_the_operations_page(alert: str) -> None:
    url = _runbook_urls()[alert]
    page, _, anchor = url.partition("#")
    assert page.endswith("/docs/operations.md") and anchor, url
    assert anchor in heading_anchors(ROOT / "docs" / "operations.md"), (
        f"{alert}: docs/operations.md has no heading with the anchor #{anchor}")
