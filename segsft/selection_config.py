"""The `select.*` settings (shared: the attribution stop test decides with them too), and their checks."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping

METHODS = ("attribution", "full", "random")
#: What selection does with a sample whose adaptive attribution did not converge.
UNCONVERGED = ("keep", "full", "drop")
KEYS = ("method", "top_mass", "max_consistency", "min_consistency", "always_keep", "min_tokens", "seed")


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class SelectConfig:
    """DESIGN step 7's knobs. Bounds of None mean "no bound"."""

    method: str = "attribution"
    top_mass: float = 0.7
    max_consistency: float | None = 0.8
    min_consistency: float | None = None
    always_keep: tuple[int, ...] = (0, -2, -1)
    min_tokens: int = 0
    seed: int = 0
    unconverged: str = "keep"

    @classmethod
    def from_cfg(cls, cfg: Any) -> "SelectConfig":
        """From the composed config (its `select` node) or from a mapping of the knobs."""
        node = cfg["select"] if "select" in cfg else cfg
        problems = check_settings(node)
        if problems:
            raise ValueError("invalid select config:\n  - " + "\n  - ".join(problems))
        mx, mn = node.get("max_consistency"), node.get("min_consistency")
        return cls(
            method=str(node.get("method", "attribution")),
            top_mass=float(node["top_mass"]),
            max_consistency=None if mx is None else float(mx),
            min_consistency=None if mn is None else float(mn),
            # Deduplicated, order kept: the same index twice changes nothing.
            always_keep=tuple(dict.fromkeys(int(i) for i in (node.get("always_keep") or ()))),
            min_tokens=int(node.get("min_tokens", 0) or 0),
            seed=int(node.get("seed", 0) or 0),
            unconverged=str(node.get("unconverged", "keep")),
        )

    def settings(self) -> dict:
        return {"method": self.method, "top_mass": self.top_mass, "max_consistency": self.max_consistency,
                "min_consistency": self.min_consistency, "always_keep": list(self.always_keep),
                "min_tokens": self.min_tokens, "seed": self.seed, "unconverged": self.unconverged}


def check_settings(s: Mapping[str, Any]) -> list[str]:
    errs = []
    missing = [k for k in KEYS if k not in s]
    if missing:
        errs.append(f"select is missing {missing}: add them to conf/select/default.yaml or pass select.<key>=... "
                    "(+select.<key>=... for a key the file lacks)")
    method = s.get("method", "attribution")
    if method not in METHODS:
        errs.append(f"select.method={method!r}: use one of {list(METHODS)}")
    tm = s.get("top_mass", 0.7)
    if not _is_number(tm) or not 0 <= tm <= 1:
        errs.append(f"select.top_mass={tm!r}: use a number in [0, 1] (the share of strength to cover, e.g. 0.7)")
    bounds = {}
    for key in ("max_consistency", "min_consistency"):
        v = s.get(key)
        if v is not None and (not _is_number(v) or not 0 <= v <= 1):
            errs.append(f"select.{key}={v!r}: use a number in [0, 1] (consistency lies there) or null for no bound")
        elif v is not None:
            bounds[key] = v
    if len(bounds) == 2 and bounds["min_consistency"] > bounds["max_consistency"]:
        errs.append(f"select.min_consistency={bounds['min_consistency']} > select.max_consistency="
                    f"{bounds['max_consistency']}: no segment could pass; lower min_consistency or raise max_consistency")
    ak = s.get("always_keep", [])
    if ak is None:
        ak = []
    if isinstance(ak, (str, bytes)) or not hasattr(ak, "__iter__") or not all(_is_int(i) for i in ak):
        errs.append(f"select.always_keep={ak!r}: use a list of segment indices, e.g. [0,-2,-1] "
                    "(negative counts from the end), or [] for none")
    mt = s.get("min_tokens", 0)
    if mt is None:
        mt = 0
    if not _is_int(mt) or mt < 0:
        errs.append(f"select.min_tokens={mt!r}: use an integer >= 0 (0 masks every sample; the paper's other setting is 4000)")
    unc = s.get("unconverged", "keep")
    if unc not in UNCONVERGED:
        errs.append(f"select.unconverged={unc!r}: use one of {list(UNCONVERGED)} (what to do with samples whose "
                    "adaptive attribution did not converge: keep their decisions, train them in full, or leave them out)")
    seed = s.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        errs.append(f"select.seed={seed!r}: use an integer >= 0")
    return errs


def check_config(cfg: Any) -> list[str]:
    """Every problem of the select settings in the composed config, each saying what to change."""
    errs = []
    if cfg.get("select") is None:
        return ["the config has no `select` node: keep `- select: default` in conf/config.yaml's defaults"]
    errs += check_settings(cfg.select)
    for key in ("run_dir", "selection_dir"):
        if not cfg.get(key):
            errs.append(f"{key} is empty: set {key}=<directory>")
    return errs
