"""The package's structure: three places (method, store, run) beside the stages, one module
spells the run layout, imports point one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "segsft"
STAGES = ("attribute", "select", "finetune", "evaluate", "report", "compare", "generate", "export")
#: The three places beside the stages, and the contract every one of them may read
#: (the config's keys and the tables' schemas: declarations, no I/O).
PLACES = ("method", "store", "run")
CONTRACT = {"segsft.config_schema", "segsft.schemas", "segsft.errors"}



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


def layout_names() -> list[str]:
    """Every file or directory name the layout module spells: its literals that look like one
    (a dot, a dash or a leading underscore), less bare extensions and globs."""
    generic = {".parquet", "*.parquet", "-*.parquet", "-", "*"}
    return sorted(s for s in set(string_literals(modules()["segsft.store.layout"]))
                  if re.fullmatch(r"[\w.*-]+", s) and ("." in s or "-" in s or s.startswith("_")) and s not in generic)


LAYOUT_NAMES = layout_names()


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_layout_names_are_spelled_in_one_module(name):
    spelled = sorted(m for m, tree in modules().items() if any(name in s for s in string_literals(tree)))
    assert set(spelled) <= {"segsft.store.layout"}, f"{name!r} is spelled outside segsft/store/layout.py: {spelled}"


def place_of(module: str) -> str:
    """method, store, run, a stage's name, contract, or segsft (the package's __init__)."""
    if module in CONTRACT:
        return "contract"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "segsft"


#: What each place may import besides itself (a stage: method, store, run and the contract).
MAY_IMPORT = {"method": {"contract"}, "store": {"contract"}, "contract": {"contract", "store"},
              "run": {"contract", "method", "store"}, "segsft": {"contract", "store"},
              **{s: {"contract", "method", "store", "run"} for s in STAGES}}


def test_every_module_is_in_a_place_or_a_stage():
    assert {place_of(m) for m in modules()} <= set(MAY_IMPORT)


def test_imports_point_one_way():
    # method imports nothing from store or run; the store nothing from run; stages never each other.
    bad = [f"{m} imports {t}" for m, tree in modules().items() for t in sorted(imports(tree))
           if place_of(t) != place_of(m) and place_of(t) not in MAY_IMPORT[place_of(m)]]
    assert bad == []


def test_the_checks_see_real_literals_and_imports():
    # The scanners themselves: the layout's own names and a stage's import of it are found.
    assert any("masks.parquet" in s for s in string_literals(modules()["segsft.store.layout"]))
    names = set(LAYOUT_NAMES)
    assert {"masks.parquet", "part-", "-of-", ".done", "_partial", "generations-", "run_config.json", ".lock-",
            "report.html", "agreement.parquet", "corpus.jsonl", "sweep.parquet"} <= names
    assert "segsft.store.layout" in imports(modules()["segsft.attribute.runner"])
    assert place_of("segsft.select.stage") == "select" and place_of("segsft.store.layout") == "store"
    assert place_of("segsft.schemas") == "contract" and place_of("segsft.method.rule") == "method"


def test_every_stage_has_check_run_and_outputs(tmp_path):
    from conftest import compose_config
    from segsft.run.stage_api import EXTRA, ORDER, load

    import importlib

    from segsft.config_schema import Settings

    cfg = Settings.of(compose_config(f"run_dir={tmp_path}"))
    assert set(ORDER + EXTRA) == set(STAGES)
    for name in ORDER + EXTRA:
        stage = load(name)
        # STAGE is the package's one entry: no second public `run` beside it.
        assert not hasattr(importlib.import_module(f"segsft.{name}"), "run"), name
        assert stage.name == name
        assert all(callable(getattr(stage, m)) for m in ("check", "run", "outputs"))
        assert getattr(stage, "rank0_only", False) is (name in ("select", "report", "compare", "export"))
        outs = stage.outputs(cfg)
        assert outs and all(str(p).startswith(str(tmp_path)) for p in outs.values()), (name, outs)
    with pytest.raises(ValueError):
        load("nonexistent")


@pytest.mark.parametrize("rank, ran", [("1", []), ("0", ["select"])])
def test_the_dispatcher_runs_rank0_only_stages_on_rank_0_only(tmp_path, monkeypatch, rank, ran):
    from conftest import compose_config
    from segsft.run import stages
    from segsft.run.stage_api import load

    from segsft.config_schema import SelectConf, Settings

    calls, given = [], []
    select = load("select")
    monkeypatch.setattr(type(select), "check", lambda self, s: given.append(s) or [])
    monkeypatch.setattr(type(select), "run", lambda self, s, r, w: given.append(s) or calls.append(self.name))
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    stages.run_stage(compose_config("stage=select", f"run_dir={tmp_path}", "select.top_mass=0.5"))
    assert calls == ran
    # The stage gets the typed settings, built once (the same object), never the raw config.
    assert given and all(s is given[0] for s in given) and type(given[0]) is Settings
    assert type(given[0].select) is SelectConf and given[0].select.top_mass == 0.5
    assert given[0].selection_dir == f"{tmp_path}/selection/attribution-top0.5-maxc0.8"


#: The run layer (Hydra's entry, dispatch, its callbacks) and the schema are the only places that
#: see the raw config; a stored YAML is read with OmegaConf.load elsewhere, never a DictConfig.
RAW_CONFIG_PLACES = ("segsft.config_schema", "segsft.run.", "segsft.select.sweep")


def test_no_module_below_a_stage_handles_the_raw_config():
    raw = sorted(name for name, tree in modules().items() if not name.startswith(RAW_CONFIG_PLACES)
                 and {"DictConfig", "with_defaults", "to_container"} & {
                     getattr(n, "id", None) or getattr(n, "attr", None) or getattr(n, "name", None) for n in ast.walk(tree)})
    assert not raw, f"{raw} handle the raw config: take the typed Settings (segsft.config_schema) instead"


def test_the_select_keys_are_declared_once():
    # SelectConf declares them; the typed view, the recorded settings and the selection's name follow.
    import dataclasses
    import inspect

    from segsft.config_schema import SELECTION_NAME, SelectConf
    from segsft.method.selection_config import KEYS, SelectConfig
    from segsft.store.layout import selection_name

    declared = [f.name for f in dataclasses.fields(SelectConf) if f.name != "name"]
    assert list(KEYS) == declared and sorted(f.name for f in dataclasses.fields(SelectConfig)) == sorted(declared)
    defaults = {k: v for k, v in dataclasses.asdict(SelectConf()).items() if k != "name"}
    assert SelectConfig().settings() == defaults  # every key recorded, with the schema's defaults
    assert set(inspect.signature(selection_name).parameters) <= set(declared)
    assert all(f"${{.{k}}}" in SELECTION_NAME for k in inspect.signature(selection_name).parameters)


def test_one_reader_for_the_rows_of_a_file():
    # corpus.FileRows is the only caller of raw_rows: the corpus, the problems and the graded
    # generations are read (and their unreadable lines rejected) the same way.
    callers = sorted(name for name, tree in modules().items()
                     for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "raw_rows")
    assert callers == ["segsft.store.corpus"]
    corpus = modules()["segsft.store.corpus"]
    inside = [c for c in ast.walk(next(n for n in corpus.body if isinstance(n, ast.ClassDef) and n.name == "FileRows"))
              if isinstance(c, ast.Call) and getattr(c.func, "id", None) == "raw_rows"]
    assert len(inside) == 1


def test_the_adaptive_keys_are_declared_once():
    # AttributeConf declares them; the rule's settings and the scores' fingerprint follow.
    import dataclasses

    from segsft.config_schema import ADAPTIVE_KEYS, AttributeConf
    from segsft.method.adaptive import AdaptiveSettings

    assert [f.name for f in dataclasses.fields(AdaptiveSettings)] == [
        f.name for f in dataclasses.fields(AttributeConf) if f.name in ADAPTIVE_KEYS]
    assert set(ADAPTIVE_KEYS) <= {f.name for f in dataclasses.fields(AttributeConf)}
    assert dataclasses.asdict(AdaptiveSettings()) == {k: getattr(AttributeConf(), k) for k in ADAPTIVE_KEYS}
