"""The README and docs/: links stay in the repository, the method's steps that the code cites
exist, and every measured figure names a committed JSON file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CITING = [p for d in ("segsft", "tests", "bench") for p in (REPO / d).rglob("*")
          if p.suffix in (".py", ".sh", ".yaml", ".json") and "results" not in p.parts and "cache" not in p.parts
          and p != Path(__file__).resolve()]


def method_steps() -> set[int]:
    text = (REPO / "docs" / "method.md").read_text()
    part = text.split("## The method in eight steps", 1)[1].split("\n## ", 1)[0]
    return {int(n) for n in re.findall(r"^(\d+)\. \*\*", part, flags=re.M)}


def test_the_method_keeps_its_eight_numbered_steps():
    assert method_steps() == set(range(1, 9))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_link_leaves_the_repository(doc):
    text = doc.read_text()
    assert "../shared" not in text, f"{doc.name} points outside the repository"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "#")):
            continue
        resolved = (doc.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{doc.name}: {target} leaves the repository"


def test_every_step_the_code_cites_is_in_the_method():
    steps = method_steps()
    cited: dict[int, str] = {}
    for path in CITING:
        text = path.read_text(errors="replace")
        assert "DESIGN step" not in text and "DESIGN.md" not in text, f"{path}: cite docs/method.md"
        for a, b in re.findall(r"docs/method\.md steps? (\d+)(?:-(\d+))?", text):
            for n in range(int(a), int(b or a) + 1):
                cited[n] = str(path.relative_to(REPO))
    assert cited and set(cited) <= steps, {n: p for n, p in cited.items() if n not in steps}


def test_every_figure_names_a_committed_json():
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Measured figures", 1)[1].split("\n## ", 1)[0]
    named = {n for row in table.splitlines() if row.startswith("|") for n in re.findall(r"`([\w.-]+\.json)`", row)}
    convergence = (REPO / "docs" / "convergence.md").read_text()
    named |= set(re.findall(r"\b((?:convergence|quadrature)_study[\w-]*\.json)", convergence))
    assert len(named) >= 10
    missing = sorted(n for n in named if not (REPO / "bench" / "results" / n).is_file())
    assert not missing, missing


def test_the_bound_study_has_its_own_section():
    text = (REPO / "docs" / "convergence.md").read_text()
    section = text.split("\n## The bound, measured\n", 1)[1].split("\n## ", 1)[0]
    assert "convergence_study_cpu_fp32_bound.json" in section and "convergence_study_cpu_fp32_whole.json" in section
