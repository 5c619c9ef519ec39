"""The package's structure: one module spells the run layout, imports point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "segsft"
STAGES = ("attribute", "select", "finetune", "evaluate", "report", "compare", "generate")
# The dispatcher may import every stage; nothing else that is shared may.
DISPATCH = {"segsft.stages"}
LAYOUT_NAMES = ("segments-", "samples-", "rejects-", "part-", "_partial", "masks.parquet", "summary_per_sample",
                "summary.json", "train_tokens.parquet", "loss_history", "sweep.parquet", "sweep_row", "report.html",
                "model.partial", ".done")


def modules() -> dict[str, ast.Module]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(p.read_text(), str(p))
    return out


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def string_literals(tree: ast.Module) -> list[str]:
    skip = _docstrings(tree)
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def imports(tree: ast.Module) -> set[str]:
    """Every segsft module imported anywhere in the file, at the top or inside functions."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.startswith("segsft")}
        elif isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("segsft"):
            out.add(n.module)
    return out


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_layout_names_are_spelled_in_one_module(name):
    spelled = sorted(m for m, tree in modules().items() if any(name in s for s in string_literals(tree)))
    assert set(spelled) <= {"segsft.layout"}, f"{name!r} is spelled outside segsft/layout.py: {spelled}"


def test_stages_import_shared_modules_never_each_other():
    bad = []
    for m, tree in modules().items():
        mine = stage_of(m)
        for target in imports(tree):
            theirs = stage_of(target)
            if theirs is None or theirs == mine or m in DISPATCH or m == "segsft":
                continue
            bad.append(f"{m} imports {target}" + ("" if mine else " (a shared module importing a stage)"))
    assert bad == []


def test_the_checks_see_real_literals_and_imports():
    # The scanners themselves: the layout's own names and a stage's import of it are found.
    assert any("masks.parquet" in s for s in string_literals(modules()["segsft.layout"]))
    assert "segsft.layout" in imports(modules()["segsft.attribute.runner"])
    assert stage_of("segsft.select.stage") == "select" and stage_of("segsft.layout") is None


def test_every_stage_has_check_run_and_outputs(tmp_path):
    from conftest import compose_config
    from segsft.stage_api import EXTRA, ORDER, load

    cfg = compose_config(f"run_dir={tmp_path}")
    assert set(ORDER + EXTRA) == set(STAGES)
    for name in ORDER + EXTRA:
        stage = load(name)
        assert stage.name == name
        assert all(callable(getattr(stage, m)) for m in ("check", "run", "outputs"))
        outs = stage.outputs(cfg)
        assert outs and all(str(p).startswith(str(tmp_path)) for p in outs.values()), (name, outs)
    with pytest.raises(ValueError):
        load("nonexistent")
