"""The `select.*` settings (shared: the attribution stop test decides with them too), and their checks."""

from __future__ import annotations

import dataclasses
import numbers
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from segsft.config_schema import Settings

from segsft.config_schema import SelectConf
from segsft.config_schema import empty_dir_problem

METHODS = ("attribution", "full", "random", "score")
ORDERS = ("high", "low")
#: What selection does with a sample whose adaptive attribution did not converge.
UNCONVERGED = ("keep", "full", "drop")
#: What selection does with a segment the attribution flagged borderline.
BORDERLINE = ("rule", "keep", "drop")
#: The select keys, as config_schema.SelectConf declares them (less `name`, which is made from them).
KEYS = tuple(f.name for f in dataclasses.fields(SelectConf) if f.name != "name")
_D = SelectConf()  # the defaults (segsft.config_schema)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _knobs(node: Any) -> dict[str, Any]:
    """The select keys of the typed settings or of a mapping (a selection's saved settings),
    over the schema's defaults."""
    out = dataclasses.asdict(_D)
    out.update(dataclasses.asdict(node) if dataclasses.is_dataclass(node) else {k: node[k] for k in node})
    return out


class _SelectConfigMethods:
    @classmethod
    def from_cfg(cls, cfg: Any) -> "SelectConfig":
        """From the typed settings (Settings or their `select`) or from a mapping of the knobs
        (a selection's saved settings)."""
        if isinstance(cfg, Mapping):
            node = cfg["select"] if "select" in cfg else cfg
        else:
            node = cfg if isinstance(cfg, SelectConf) else cfg.select
        problems = check_settings(node)
        if problems:
            raise ValueError("invalid select config:\n  - " + "\n  - ".join(problems))
        k = _knobs(node)
        mx, mn = k["max_consistency"], k["min_consistency"]
        return cls(
            method=str(k["method"]),
            top_mass=float(k["top_mass"]),
            max_consistency=None if mx is None else float(mx),
            min_consistency=None if mn is None else float(mn),
            # Deduplicated, order kept: the same index twice changes nothing.
            always_keep=tuple(dict.fromkeys(int(i) for i in (k["always_keep"] or ()))),
            min_tokens=int(k["min_tokens"] or 0),
            seed=int(k["seed"] or 0),
            unconverged=str(k["unconverged"]),
            borderline=str(k["borderline"]),
            # Only for method=score (None otherwise, so a sweep over methods x scores makes one
            # directory per non-score method).
            score=str(k["score"]) if k["method"] == "score" else None,
            order=str(k["order"]) if k["method"] == "score" else _D.order,
        )

    def settings(self) -> dict:
        """What a selection records: every key, as plain JSON values."""
        return {k: list(self.always_keep) if k == "always_keep" else getattr(self, k) for k in KEYS}


def _frozen_field(f: dataclasses.Field) -> tuple[str, Any, Any]:
    default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    if isinstance(default, list):  # frozen and hashable: a tuple
        return f.name, tuple, dataclasses.field(default=tuple(default))
    return f.name, f.type, dataclasses.field(default=default)


#: Step 7's knobs, normalised and frozen: SelectConf's keys (less `name`) with its defaults,
#: derived from it rather than declared again; always_keep a tuple, bounds None = no bound.
SelectConfig = dataclasses.make_dataclass(
    "SelectConfig", [_frozen_field(f) for f in dataclasses.fields(SelectConf) if f.name in KEYS],
    bases=(_SelectConfigMethods,), frozen=True, namespace={"__module__": __name__})


def check_settings(s: Any) -> list[str]:
    """Every problem of the select knobs (typed settings or a hand-made mapping)."""
    errs = []
    missing = [] if dataclasses.is_dataclass(s) else [k for k in KEYS if k not in s]
    if missing:
        errs.append(f"select is missing {missing}: pass select.<key>=... (the keys and their defaults: "
                    "segsft/config_schema.py SelectConf)")
    s = _knobs(s)
    method = s["method"]
    if method not in METHODS:
        errs.append(f"select.method={method!r}: use one of {list(METHODS)}")
    if method == "score":
        from segsft.schemas import SCORE_COLUMNS

        if s["score"] not in SCORE_COLUMNS:
            errs.append(f"select.score={s['score']!r}: select.method=score ranks segments by a numeric column of the "
                        f"segments table; use one of {list(SCORE_COLUMNS)}")
        if s["order"] not in ORDERS:
            errs.append(f"select.order={s['order']!r}: use high (high values first) or low")
    tm = s["top_mass"]
    if not _is_number(tm) or not 0 <= tm <= 1:
        errs.append(f"select.top_mass={tm!r}: use a number in [0, 1] (the share of strength to cover, e.g. 0.7)")
    bounds = {}
    for key in ("max_consistency", "min_consistency"):
        v = s[key]
        if v is not None and (not _is_number(v) or not 0 <= v <= 1):
            errs.append(f"select.{key}={v!r}: use a number in [0, 1] (consistency lies there) or null for no bound")
        elif v is not None:
            bounds[key] = v
    if len(bounds) == 2 and bounds["min_consistency"] > bounds["max_consistency"]:
        errs.append(f"select.min_consistency={bounds['min_consistency']} > select.max_consistency="
                    f"{bounds['max_consistency']}: no segment could pass; lower min_consistency or raise max_consistency")
    ak = s["always_keep"]
    if ak is None:
        ak = []
    if isinstance(ak, (str, bytes)) or not hasattr(ak, "__iter__") or not all(_is_int(i) for i in ak):
        errs.append(f"select.always_keep={ak!r}: use a list of segment indices, e.g. [0,-2,-1] "
                    "(negative counts from the end), or [] for none")
    mt = s["min_tokens"]
    if mt is None:
        mt = 0
    if not _is_int(mt) or mt < 0:
        errs.append(f"select.min_tokens={mt!r}: use an integer >= 0 (0 masks every sample; the paper's other setting is 4000)")
    unc = s["unconverged"]
    if unc not in UNCONVERGED:
        errs.append(f"select.unconverged={unc!r}: use one of {list(UNCONVERGED)} (what to do with samples whose "
                    "adaptive attribution did not converge: keep their decisions, train them in full, or leave them out)")
    bl = s["borderline"]
    if bl not in BORDERLINE:
        errs.append(f"select.borderline={bl!r}: use one of {list(BORDERLINE)} (what to do with segments whose decision "
                    "is within the attribution's error of flipping: keep the rule's decision and flag it, train them, "
                    "or not)")
    seed = s["seed"]
    if not _is_int(seed) or seed < 0:
        errs.append(f"select.seed={seed!r}: use an integer >= 0")
    return errs


def check_config(cfg: "Settings") -> list[str]:
    """Every problem of the select settings, each saying what to change."""
    errs = check_settings(cfg.select)
    errs += [p for p in (empty_dir_problem(k, getattr(cfg, k)) for k in ("run_dir", "selection_dir")) if p]
    return errs
